"""compose_policy: what a delivered compose file may reach, checked on real files and on compose's
own model of them (`docker compose config`, offline: no engine). The refusals in a real delivery
(exit 2, nothing built) are in tests/integration/test_6_untrusted.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from cdtasks import config
from cdtasks.compose import compose_environment, read_model
from cdtasks.compose_policy import HOST_KEYS, Policy, Refused, check_files, check_model

PROJECT_DIR = Path(__file__).resolve().parents[2]
CONTRACT = """\
services:
  app:
    build: .
    image: app
  unit:
    image: base:1
    volumes: [".:/src", "/tmp/go:/go"]
  staging-dep: {image: app}
  staging: {image: base:1}
  production: {image: base:1, network_mode: host}
"""


@pytest.fixture
def lab(tmp_path):
    """A state directory under /tmp (as the tests' labs have) holding the registry's directory
    and the workspace, with one checkout in it."""
    state = tmp_path / "state"
    checkout = state / "lab" / "workspace" / "app-1"
    checkout.mkdir(parents=True)
    (state / "registry").mkdir()
    (checkout / "Dockerfile").write_text("FROM base:1\n")
    return SimpleNamespace(state=state, checkout=checkout)


def settings(lab, prefixes=("/tmp",), allow=()):
    return SimpleNamespace(
        cluster=SimpleNamespace(state_dir=lab.state),
        registry=SimpleNamespace(registry_dir=lab.state / "registry"),
        delivery=SimpleNamespace(
            workspace_dir=lab.state / "lab" / "workspace",
            compose_mount_prefixes=prefixes,
            compose_allow=allow,
        ),
    )


def check(lab, text: str | None = None, name="compose.yml", **kw) -> None:
    """Both checks, in the order the checkout runs them."""
    if text is not None:
        (lab.checkout / name).write_text(text)
    policy = Policy.of(settings(lab, **kw), lab.checkout)
    check_files(policy, name)
    model = read_model(lab.checkout / name, compose_environment({}, {}))
    check_model(policy, name, model.config)


def with_app(extra: str) -> str:
    """The contract plus `extra` under service `app` (indented as given)."""
    return CONTRACT.replace("    image: app\n", "    image: app\n" + extra, 1)


def test_the_contract_with_the_books_cache_mount_passes(lab):
    check(lab, CONTRACT)


@pytest.mark.parametrize(
    "extra,key,path",
    [
        ("    build: {context: ../../..}\n", "build.context", "{state} resolves outside"),
        (
            "    build: {context: ., dockerfile: ../../../Dockerfile}\n",
            "build.dockerfile",
            "../../../Dockerfile resolves outside",
        ),
        (
            "    build: {context: ., additional_contexts: {x: /etc}}\n",
            "build.additional_contexts.x",
            "/etc resolves outside",
        ),
        (
            "    build: https://example.invalid/repo.git\n",
            "build.context",
            "https://example.invalid/repo.git: not a path inside",
        ),
    ],
    ids=["context", "dockerfile", "additional_contexts", "remote-context"],
)
def test_a_build_that_reads_outside_the_checkout_is_refused(lab, extra, key, path):
    text = with_app(extra).replace("    build: .\n", "", 1)
    path = path.format(state=lab.state)
    with pytest.raises(Refused, match=rf"^compose.yml: service app: {key}: {path}"):
        check(lab, text)


def test_env_file_include_and_extends_outside_are_refused_before_compose_reads_them(lab):
    secret = lab.state / "registry-password"
    secret.write_text("hunter2\n")
    for extra, key in (
        (f"    env_file: {secret}\n", "env_file"),
        ("    env_file: [{path: ../../../registry-password}]\n", "env_file"),
        ("    label_file: ~/.bashrc\n", "label_file"),
        (f"    extends: {{file: {secret}, service: x}}\n", "extends.file"),
        ("    env_file: ${HOME}/.env\n", "env_file"),
    ):
        with pytest.raises(Refused, match=rf"^compose.yml: service app: {key}: "):
            check(lab, with_app(extra))
    with pytest.raises(Refused, match=r"^compose.yml: include: \.\./\.\./\.\./x.yml resolves "):
        check(lab, "include: [../../../x.yml]\n" + CONTRACT)
    with pytest.raises(Refused, match=r"^compose.yml: include: env_file: "):
        check(lab, f"include: [{{path: inc.yml, env_file: {secret}}}]\n" + CONTRACT)


def test_files_reached_through_include_and_extends_are_checked_too(lab):
    (lab.checkout / "sub").mkdir()
    (lab.checkout / "sub" / "inc.yml").write_text(
        "services:\n  extra:\n    image: x:1\n    env_file: ../../../../registry-password\n"
    )
    with pytest.raises(Refused, match=r"^sub/inc.yml: service extra: env_file: "):
        check(lab, "include: [sub/inc.yml]\n" + CONTRACT)
    (lab.checkout / "base.yml").write_text(
        "services:\n  base:\n    image: x:1\n    extends: {file: /etc/passwd, service: y}\n"
    )
    with pytest.raises(Refused, match=r"^base.yml: service base: extends.file: /etc/passwd"):
        check(lab, with_app("    extends: {file: base.yml, service: base}\n"))


def test_symbolic_links_out_of_the_checkout_are_followed_and_refused(lab):
    (lab.checkout / "state").symlink_to(lab.state)
    with pytest.raises(
        Refused, match=r"service app: build.context: \S*/app-1/state resolves outside"
    ):
        check(lab, with_app("    build: {context: state}\n").replace("    build: .\n", "", 1))
    with pytest.raises(Refused, match=r"service unit: volumes: .*/state resolves outside"):
        check(lab, CONTRACT.replace('".:/src"', '"./state:/s"'))
    (lab.checkout / "link.yml").symlink_to(lab.state / "elsewhere.yml")
    with pytest.raises(Refused, match=r"^link.yml: --compose-file: link.yml resolves outside"):
        check(lab, None, name="link.yml")
    (lab.checkout / ".env").symlink_to(lab.state / "registry-password")
    with pytest.raises(Refused, match=r"^compose.yml: the project's .env: .env resolves outside"):
        check(lab, CONTRACT)


@pytest.mark.parametrize(
    "source,what",
    [
        ("/var/run/docker.sock", "the Docker socket"),
        ("/run", "the Docker socket"),
        ("{registry}", "the registry's directory"),
        ("{workspace}", "the workspace"),
        ("{state}", "the state directory"),
        ("{tmp}", "the state directory"),
        ("/etc", "outside the checkout and COMPOSE_MOUNT_PREFIXES"),
        ("/tmp/../etc", "outside the checkout and COMPOSE_MOUNT_PREFIXES"),
    ],
)
def test_bind_mounts_of_the_hosts_engine_registry_and_state_are_refused(lab, source, what):
    source = source.format(
        registry=lab.state / "registry",
        state=lab.state,
        workspace=lab.state / "lab" / "workspace",
        tmp=lab.state.parent,
    )
    text = CONTRACT.replace('"/tmp/go:/go"', f'"{source}:/x"')
    with pytest.raises(
        Refused,
        match=rf"^compose.yml: service unit: volumes: {source} "
        rf"(is|is inside|holds|is outside) .*{what}.*refused unless COMPOSE_ALLOW names "
        rf"{os.path.normpath(source)}$",
    ):
        check(lab, text)
    check(lab, text, allow=(os.path.normpath(source),))  # the exact path, allowed


def test_secrets_configs_and_bind_volumes_name_host_paths_too(lab):
    socket = "/var/run/docker.sock"
    for kind in ("secrets", "configs"):
        text = CONTRACT.replace(
            "  staging: {image: base:1}", f"  staging: {{image: base:1, {kind}: [x]}}"
        )
        with pytest.raises(
            Refused,
            match=rf"^compose.yml: {kind} x: file: {socket} is the "
            rf"Docker socket",
        ):
            check(lab, text + f"{kind}:\n  x: {{file: {socket}}}\n")
    volume = "volumes:\n  data: {driver_opts: {type: none, o: bind, device: /var/run}}\n"
    with pytest.raises(
        Refused,
        match=r"service unit: volumes \(data: driver_opts.device\): "
        r"/var/run holds the Docker socket",
    ):
        check(lab, CONTRACT.replace('"/tmp/go:/go"', '"data:/d"') + volume)


@pytest.mark.parametrize(
    "extra,key",
    [
        ("privileged: true", "privileged"),
        ("pid: host", "pid"),
        ("ipc: host", "ipc"),
        ("cap_add: [SYS_ADMIN]", "cap_add"),
        ("devices: ['/dev/fuse:/dev/fuse']", "devices"),
        ("network_mode: host", "network_mode"),
        ("network_mode: 'container:registry'", "network_mode"),
        ("security_opt: ['seccomp:unconfined']", "security_opt"),
        ("volumes_from: ['container:registry']", "volumes_from"),
    ],
)
def test_keys_that_give_a_service_the_host_are_refused_unless_allowed(lab, extra, key):
    text = CONTRACT.replace("  staging: {image: base:1}", f"  staging: {{image: base:1, {extra}}}")
    with pytest.raises(
        Refused,
        match=rf"^compose.yml: service staging: {key}: .*refused unless "
        rf"COMPOSE_ALLOW names {key}$",
    ):
        check(lab, text)
    check(lab, text, allow=(key,))


def test_production_alone_keeps_the_hosts_network(lab):
    check(lab, CONTRACT)  # production: network_mode host
    assert "network_mode" in HOST_KEYS


def test_hostile_yaml_is_bounded(lab):
    with pytest.raises(Refused, match=r"^compose.yml: larger than 1024 KiB"):
        check(lab, "# " + "x" * (1 << 20) + "\n" + CONTRACT)
    with pytest.raises(Refused, match=r"^compose.yml:\d+: not valid YAML"):
        check(lab, "services:\n  app: [\n")
    with pytest.raises(Refused, match=r"not valid YAML"):  # no Python objects from YAML
        check(lab, "services: !!python/object/apply:os.system ['true']\n")


def test_the_settings_keys_take_absolute_paths_and_known_keys(tmp_path):
    (tmp_path / "t.env").write_text(
        "COMPOSE_MOUNT_PREFIXES=/tmp,/var/cache/go/\n"
        "COMPOSE_ALLOW=/var/run/docker.sock,privileged\n"
    )
    s = config.load("t", environ={}, env_dir=tmp_path, project_dir=tmp_path)
    assert s.delivery.compose_mount_prefixes == ("/tmp", "/var/cache/go")
    assert s.delivery.compose_allow == ("/var/run/docker.sock", "privileged")
    for bad in ("COMPOSE_MOUNT_PREFIXES=tmp", "COMPOSE_ALLOW=everything"):
        (tmp_path / "t.env").write_text(bad + "\n")
        with pytest.raises(config.ConfigError, match=bad.split("=")[0]):
            config.load("t", environ={}, env_dir=tmp_path, project_dir=tmp_path)


def test_the_projects_own_compose_files_pass(lab, tmp_path):
    for source, name in (
        (PROJECT_DIR / "demo", "docker-compose-test-local.yml"),
        (PROJECT_DIR / "tests/apps/hello-book", "docker-compose-ci.yml"),
    ):
        checkout = lab.checkout.parent / source.name
        shutil.copytree(source, checkout)
        policy = Policy.of(settings(lab), checkout)
        check_files(policy, name)
        check_model(policy, name, read_model(checkout / name, compose_environment({}, {})).config)
