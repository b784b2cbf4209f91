"""config.load: env files, precedence, validation and the Settings object (no engine, no network)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cdtasks import config
from cdtasks.config import ConfigError, load, pinned_image

REPO = Path(__file__).resolve().parents[2]


def write_env(directory: Path, name: str, text: str = "") -> Path:
    path = directory / f"{name}.env"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, overrides=None, environ=None, name: str = "test"):
    write_env(tmp_path, name, text)
    return load(name, overrides, environ={} if environ is None else environ, env_dir=tmp_path)


# -- defaults -------------------------------------------------------------------------------------
def test_empty_file_gives_the_documented_defaults(tmp_path):
    s = load_text(tmp_path, "")
    assert s.env == "test"
    assert s.source == str(tmp_path / "test.env")
    assert s.cluster.provider == "lab"
    assert s.cluster.lab_name == "cdtasks"
    assert s.cluster.state_dir == Path("~/.cdtasks").expanduser()
    assert s.cluster.nodes == ("swarm-test-1", "swarm-test-2", "swarm-test-3")
    assert s.cluster.workers == ()
    assert s.cluster.node_labels == ()
    assert s.cluster.cd_node == "swarm-test-1"
    assert s.registry.registry_image == "cdtasks/registry-slim:2.8.2"
    assert s.registry.registry_port == 5000 and isinstance(s.registry.registry_port, int)
    assert s.registry.registry_reserve_mb == 100
    # REGISTRY_DIR empty: the registry lives under STATE_DIR
    assert s.registry.registry_dir == s.cluster.state_dir / "registry"
    assert s.cluster.routing == "auto"
    assert s.cluster.lab_port_base == 0


def test_every_default_passes_its_own_parser():
    for spec in config.KEYS.values():
        spec.parse(spec.default)  # raises on a bad default


def test_registry_dir_set_explicitly_is_kept(tmp_path):
    s = load_text(tmp_path, f"STATE_DIR={tmp_path / 'state'}\nREGISTRY_DIR={tmp_path / 'shared'}\n")
    assert s.cluster.state_dir == tmp_path / "state"
    assert s.registry.registry_dir == tmp_path / "shared"


def test_registry_dir_follows_state_dir_when_empty(tmp_path):
    s = load_text(tmp_path, f"STATE_DIR={tmp_path / 'state'}\nREGISTRY_DIR=\n")
    assert s.registry.registry_dir == tmp_path / "state" / "registry"


def test_comments_and_values_are_read_from_the_file(tmp_path):
    s = load_text(tmp_path, "# a comment\nNODES=a-1,b-2\nCD_NODE=b-2\nREGISTRY_PORT=5001\n")
    assert s.cluster.nodes == ("a-1", "b-2")
    assert s.cluster.cd_node == "b-2"
    assert s.registry.registry_port == 5001
    assert s.raw["NODES"] == "a-1,b-2"


# -- precedence -----------------------------------------------------------------------------------
def test_precedence_flag_over_environment_over_file_over_default(tmp_path):
    write_env(tmp_path, "test", "REGISTRY_PORT=5001\n")
    environ = {"CDTASKS_REGISTRY_PORT": "5002"}
    flags = {"REGISTRY_PORT": 5003}

    assert load("test", flags, environ=environ, env_dir=tmp_path).registry.registry_port == 5003
    assert load("test", None, environ=environ, env_dir=tmp_path).registry.registry_port == 5002
    assert load("test", None, environ={}, env_dir=tmp_path).registry.registry_port == 5001
    write_env(tmp_path, "test", "")
    assert load("test", None, environ={}, env_dir=tmp_path).registry.registry_port == 5000


def test_flag_given_as_none_does_not_override(tmp_path):
    write_env(tmp_path, "test", "ROUTING=dnsrr\n")
    s = load("test", {"ROUTING": None}, environ={"CDTASKS_ROUTING": "mesh"}, env_dir=tmp_path)
    assert s.cluster.routing == "mesh"
    s = load("test", {"ROUTING": None}, environ={}, env_dir=tmp_path)
    assert s.cluster.routing == "dnsrr"


def test_environment_variable_without_prefix_is_ignored(tmp_path):
    s = load_text(tmp_path, "", environ={"REGISTRY_PORT": "6000", "ROUTING": "dnsrr"})
    assert s.registry.registry_port == 5000
    assert s.cluster.routing == "auto"


def test_values_of_different_keys_come_from_different_layers(tmp_path):
    write_env(tmp_path, "test", "NODES=n1,n2,n3\nCD_NODE=n1\nROUTING=mesh\n")
    s = load("test", {"CD_NODE": "n3"}, environ={"CDTASKS_WORKERS": "n2"}, env_dir=tmp_path)
    assert s.cluster.nodes == ("n1", "n2", "n3")  # file
    assert s.cluster.workers == ("n2",)  # process environment
    assert s.cluster.cd_node == "n3"  # flag
    assert s.cluster.routing == "mesh"  # file
    assert s.registry.registry_port == 5000  # default


# -- environments ---------------------------------------------------------------------------------
def test_unknown_environment_lists_valid_names(tmp_path):
    write_env(tmp_path, "test")
    write_env(tmp_path, "prod")
    with pytest.raises(ConfigError) as exc:
        load("staging", environ={}, env_dir=tmp_path)
    msg = str(exc.value)
    assert "'staging'" in msg
    assert "prod, test" in msg


def test_missing_env_dir_says_there_are_none(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=missing)
    assert "none in" in str(exc.value)
    assert str(missing) in str(exc.value)


def test_env_dir_without_env_files(tmp_path):
    (tmp_path / "test.txt").write_text("NODES=a\n")
    with pytest.raises(ConfigError, match="none in"):
        load("test", environ={}, env_dir=tmp_path)


def test_environments_lists_stems_sorted(tmp_path):
    for name in ("prod", "test", "alpha"):
        write_env(tmp_path, name)
    (tmp_path / "notes.md").write_text("")
    assert config.environments(tmp_path) == ["alpha", "prod", "test"]


# -- validation -----------------------------------------------------------------------------------
def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write_env(tmp_path, "test", "NODES=a\nCD_NODE=a\nREGISTRY_PROT=5000\n")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=tmp_path)
    assert str(path) in str(exc.value)
    assert "REGISTRY_PROT" in str(exc.value)


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("REGISTRY_PORT=50x0\n", "REGISTRY_PORT", "50x0"),
        ("REGISTRY_PORT=70000\n", "REGISTRY_PORT", "70000"),
        ("REGISTRY_PORT=0\n", "REGISTRY_PORT", "0"),
        ("REGISTRY_RESERVE_MB=-1\n", "REGISTRY_RESERVE_MB", "-1"),
        ("LAB_PORT_BASE=65001\n", "LAB_PORT_BASE", "65001"),
        ("NODES=swarm-test-1,Swarm_2\n", "NODES", "swarm-test-1,Swarm_2"),
        ("NODES=a,a\n", "NODES", "a,a"),
        ("NODE_LABELS=swarm-test-2 env=prod\n", "NODE_LABELS", "swarm-test-2 env=prod"),
        ("NODE_LABELS=swarm-test-2:env\n", "NODE_LABELS", "swarm-test-2:env"),
        ("ROUTING=ipvs\n", "ROUTING", "ipvs"),
        ("PROVIDER=aws\n", "PROVIDER", "aws"),
        ("LAB_NAME=Lab\n", "LAB_NAME", "Lab"),
        ("CD_NODE=bad_name\n", "CD_NODE", "bad_name"),
        ("REGISTRY_IMAGE=cdtasks/registry\n", "REGISTRY_IMAGE", "cdtasks/registry"),
        ("REGISTRY_IMAGE=cdtasks/registry:latest\n", "REGISTRY_IMAGE", "cdtasks/registry:latest"),
    ],
)
def test_malformed_value_names_file_key_and_value(tmp_path, text, key, value):
    path = write_env(tmp_path, "test", text)
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=tmp_path)
    msg = str(exc.value)
    assert str(path) in msg
    assert f"{key}={value!r}" in msg


def test_malformed_value_from_environment_names_the_variable(tmp_path):
    write_env(tmp_path, "test", "")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={"CDTASKS_REGISTRY_PORT": "99999"}, env_dir=tmp_path)
    msg = str(exc.value)
    assert "CDTASKS_REGISTRY_PORT" in msg
    assert "REGISTRY_PORT='99999'" in msg
    assert "outside 1..65535" in msg


def test_malformed_flag_is_reported(tmp_path):
    write_env(tmp_path, "test", "")
    with pytest.raises(ConfigError, match=r"REGISTRY_RESERVE_MB='lots'"):
        load("test", {"REGISTRY_RESERVE_MB": "lots"}, environ={}, env_dir=tmp_path)


@pytest.mark.parametrize(
    "key, value",
    [
        ("WORKERS", "swarm-test-9"),
        ("CD_NODE", "swarm-9"),
        ("NODE_LABELS", "swarm-test-7:env=prod"),
    ],
)
def test_node_names_outside_nodes_are_refused(tmp_path, key, value):
    path = write_env(tmp_path, "test", f"NODES=swarm-test-1,swarm-test-2\n{key}={value}\n")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=tmp_path)
    msg = str(exc.value)
    assert str(path) in msg
    assert key in msg
    wrong = value.split(":")[0]
    assert repr(wrong) in msg
    assert "not in NODES" in msg


def test_every_node_a_worker_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs a manager"):
        load_text(tmp_path, "NODES=a,b\nWORKERS=a,b\nCD_NODE=a\n")


def test_empty_nodes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="NODES is empty"):
        load_text(tmp_path, "NODES=\n")


def test_lists_tolerate_spaces_and_empty_items(tmp_path):
    s = load_text(
        tmp_path,
        "NODES= a , b ,,c\nCD_NODE=a\nWORKERS=c,\nNODE_LABELS=a:env=prod , b:zone=x.y-1,\n",
    )
    assert s.cluster.nodes == ("a", "b", "c")
    assert s.cluster.workers == ("c",)
    assert s.cluster.node_labels == (("a", "env", "prod"), ("b", "zone", "x.y-1"))


# -- pinned_image ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ref",
    [
        "go-demo:1.0",
        "vfarcic/go-demo:2.0",
        "localhost:5000/go-demo:1.0",
        "registry.example.com:443/team/go-demo:1.0-rc1",
        "cdtasks/registry-slim:2.8.2",
        "go-demo@sha256:" + "a" * 64,
        "localhost:5000/go-demo@sha256:" + "b" * 64,
        "go-demo:1.0@sha256:" + "c" * 64,
    ],
)
def test_pinned_image_accepts_tags_and_digests(ref):
    assert pinned_image(ref) == ref


@pytest.mark.parametrize(
    "ref, why",
    [
        ("go-demo", "no tag"),
        ("vfarcic/go-demo", "no tag"),
        ("localhost:5000/go-demo", "no tag"),  # the port is not a tag
        ("go-demo:latest", "latest"),
        ("localhost:5000/go-demo:latest", "latest"),
    ],
)
def test_pinned_image_refuses_untagged_and_latest(ref, why):
    with pytest.raises(ValueError, match=why):
        pinned_image(ref)


# -- Settings -------------------------------------------------------------------------------------
def test_settings_is_frozen(tmp_path):
    s = load_text(tmp_path, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.registry.registry_port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cluster.nodes = ("x",)  # type: ignore[misc]


def test_managers_and_leader_follow_workers(tmp_path):
    s = load_text(tmp_path, "NODES=n1,n2,n3,n4\nWORKERS=n1,n3\nCD_NODE=n1\n")
    assert s.cluster.managers == ("n2", "n4")
    assert s.cluster.leader == "n2"  # the first node is a worker: the first manager leads
    s = load_text(tmp_path, "NODES=n1,n2,n3\nCD_NODE=n1\n")
    assert s.cluster.managers == ("n1", "n2", "n3")
    assert s.cluster.leader == "n1"


def test_labels_of(tmp_path):
    s = load_text(
        tmp_path, "NODES=n1,n2\nCD_NODE=n1\nNODE_LABELS=n1:env=prod,n1:zone=a,n2:env=prod-like\n"
    )
    assert s.cluster.labels_of("n1") == {"env": "prod", "zone": "a"}
    assert s.cluster.labels_of("n2") == {"env": "prod-like"}
    assert s.cluster.labels_of("n3") == {}


def test_check_node(tmp_path):
    s = load_text(tmp_path, "NODES=n1,n2\nCD_NODE=n1\n")
    assert s.check_node("n2") == "n2"
    with pytest.raises(ConfigError) as exc:
        s.check_node("n9")
    assert "'n9'" in str(exc.value)
    assert "test" in str(exc.value)
    assert "n1, n2" in str(exc.value)


# -- the project's own environments ---------------------------------------------------------------
def test_project_environments_exist():
    assert {"test", "prod"} <= set(config.environments(REPO / "env"))


def test_project_test_env_is_the_books_cd_cluster(monkeypatch):
    monkeypatch.chdir(REPO)
    s = load("test", environ={}, env_dir=Path("env"))
    assert s.cluster.nodes == ("swarm-test-1", "swarm-test-2", "swarm-test-3")
    assert s.cluster.managers == s.cluster.nodes and s.cluster.leader == "swarm-test-1"
    assert s.cluster.cd_node == "swarm-test-1"
    assert s.cluster.labels_of("swarm-test-1") == {}
    assert s.cluster.labels_of("swarm-test-2") == {"env": "prod-like"}
    assert s.cluster.labels_of("swarm-test-3") == {"env": "prod-like"}
    assert s.registry.registry_port == 5000
    assert s.registry.registry_reserve_mb == 100
    assert pinned_image(s.registry.registry_image) == s.registry.registry_image


def test_project_prod_env_is_the_books_production_cluster(monkeypatch):
    monkeypatch.chdir(REPO)
    s = load("prod", environ={}, env_dir=Path("env"))
    assert s.cluster.nodes == ("swarm-1", "swarm-2", "swarm-3")
    assert s.cluster.managers == s.cluster.nodes and s.cluster.leader == "swarm-1"
    for node in s.cluster.nodes:
        assert s.cluster.labels_of(node) == {"env": "prod"}
    assert s.registry.registry_port == 5000
    assert s.registry.registry_reserve_mb == 100
    assert pinned_image(s.registry.registry_image) == s.registry.registry_image


def test_project_envs_share_the_registry_directory(monkeypatch):
    """Both clusters' registries store into one directory, so an image pushed through one is
    pullable through the other (registry.py's contract)."""
    monkeypatch.chdir(REPO)
    test, prod = (load(e, environ={}, env_dir=Path("env")) for e in ("test", "prod"))
    assert test.registry.registry_dir == prod.registry.registry_dir
    assert test.registry.registry_image == prod.registry.registry_image


# -- where a bad value came from ---------------------------------------------------------------
def test_bad_file_value_is_blamed_on_the_file_when_the_flag_is_unset(tmp_path):
    """An unset flag (None) is no source: the error names the env file the value came from."""
    path = write_env(tmp_path, "test", "REGISTRY_PORT=oops\n")
    with pytest.raises(ConfigError) as exc:
        load("test", {"REGISTRY_PORT": None}, environ={}, env_dir=tmp_path)
    assert str(exc.value).startswith(str(path))
    assert "REGISTRY_PORT='oops'" in str(exc.value)


# -- known defect (documented, not fixed here) ----------------------------------------------------
def test_inconsistent_value_from_environment_is_not_blamed_on_the_file(tmp_path):
    path = write_env(tmp_path, "test", "")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={"CDTASKS_CD_NODE": "swarm-9"}, env_dir=tmp_path)
    assert "'swarm-9'" in str(exc.value)
    assert str(path) not in str(exc.value)


# -- lines of an env file --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, line",
    [
        ("LAB_NAME=lab\nthis is not a setting\n", 2),
        ("# comment\n\nNODES\n", 3),  # a bare key: dotenv would read it as unset
        ('LAB_NAME=lab\n\nROUTING="auto\nSTATE_DIR=x\n', 3),  # unterminated quote swallows the rest
        ("LAB_NAME=lab\n  = value\n", 2),
    ],
)
def test_a_line_that_is_not_key_value_names_file_and_line(tmp_path, bad, line):
    path = write_env(tmp_path, "test", bad)
    with pytest.raises(ConfigError) as err:
        load("test", environ={}, env_dir=tmp_path)
    assert str(err.value).startswith(f"{path}:{line}: not KEY=VALUE")


def test_a_refused_line_is_not_shown(tmp_path):
    write_env(tmp_path, "test", "REPO https://deploy:s3cr3t@git.example.com/x.git\n")
    with pytest.raises(ConfigError) as err:
        load("test", environ={}, env_dir=tmp_path)
    assert "s3cr3t" not in str(err.value)


def test_dotenv_syntax_still_reads(tmp_path):
    s = load_text(
        tmp_path,
        "# comment\n\nexport LAB_NAME=lab-x\nWATCH_BRANCH='release one'\n"
        'MACHINE_OPTIONS="--opt a\n--opt b"\nCD_NODE=swarm-test-2 # why\n'
        "  ROUTING = dnsrr\n",
    )
    assert s.cluster.lab_name == "lab-x" and s.watch.watch_branch == "release one"
    assert s.machine.machine_options == ("--opt", "a", "--opt", "b")
    assert s.cluster.cd_node == "swarm-test-2" and s.cluster.routing == "dnsrr"


def test_pass_env_names(tmp_path):
    assert load_text(tmp_path, "").delivery.pass_env == ()
    assert load_text(tmp_path, "PASS_ENV=HTTP_PROXY, no_proxy,_X1\n").delivery.pass_env == (
        "HTTP_PROXY",
        "no_proxy",
        "_X1",
    )


@pytest.mark.parametrize(
    "value, why",
    [
        ("HTTP-PROXY", "not a variable name"),
        ("1X", "not a variable name"),
        ("DOCKER_HOST", "DOCKER_"),
    ],
)
def test_pass_env_refuses_bad_names_and_docker_variables(tmp_path, value, why):
    with pytest.raises(ConfigError, match=f"PASS_ENV={value!r}: .*{why}"):
        load_text(tmp_path, f"PASS_ENV={value}\n")


# -- one declaration per key -------------------------------------------------------------------
def test_each_key_is_one_field_of_one_section():
    names = [f.name for section in config.SECTIONS.values() for f in dataclasses.fields(section)]
    assert len(names) == len(set(names))
    assert list(config.KEYS) == [n.upper() for n in names]
    assert all(spec.doc for spec in config.KEYS.values())
    settings_fields = {f.name for f in dataclasses.fields(config.Settings)}
    assert set(config.SECTIONS) <= settings_fields


def test_sections_carry_the_parsed_values(tmp_path):
    s = load_text(tmp_path, "SERVICES_TIMEOUT=40\nSSH_PARALLEL=3\nWATCH_BRANCH=main\n")
    assert isinstance(s.services, config.ServicesSettings) and s.services.services_timeout == 40
    assert s.ssh.ssh_parallel == 3 and s.watch.watch_branch == "main"
    assert "hush" not in repr(load_text(tmp_path, "WEBHOOK_SECRET=hush\n"))  # secret: no repr


def _keys_in(path: Path) -> list[str]:
    return [
        line.split("=", 1)[0]
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]


def test_project_env_files_set_each_key_once():
    """A key is in base.env (every environment shares it) or in each environment's file, never
    in both, so nothing is repeated and nothing shared can drift."""
    base = _keys_in(REPO / "env" / "base.env")
    # Every key but the other providers' (env/examples/ shows those).
    lab_keys = {
        f.name.upper()
        for attr, section in config.SECTIONS.items()
        if attr not in ("machine", "ssh")
        for f in dataclasses.fields(section)
    }
    per_env = {e: _keys_in(REPO / "env" / f"{e}.env") for e in config.environments(REPO / "env")}
    assert len(base) == len(set(base))
    for env, keys in per_env.items():
        assert len(keys) == len(set(keys)), env
        assert not set(keys) & set(base), (env, set(keys) & set(base))
        assert set(base) | set(keys) == lab_keys, env  # each documented in one place
    assert not set(config.SHARED) - set(base)


@pytest.mark.parametrize(
    "env_dir",
    [REPO / "env", *sorted((REPO / "env" / "examples").iterdir())],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_every_example_env_file_validates(env_dir):
    envs = config.environments(env_dir)
    assert envs
    for env in envs:
        assert load(env, environ={}, env_dir=env_dir, project_dir=REPO).env == env


# -- base.env -------------------------------------------------------------------------------------
def test_precedence_flag_environment_file_base_default(tmp_path):
    write_env(tmp_path, "base", "REGISTRY_PORT=5001\nSERVICES_TIMEOUT=81\nLAB_NAME=from-base\n")
    write_env(tmp_path, "test", "REGISTRY_PORT=5002\nSERVICES_TIMEOUT=82\n")
    environ = {"CDTASKS_REGISTRY_PORT": "5003"}
    s = load("test", {"REGISTRY_PORT": 5004}, environ=environ, env_dir=tmp_path)
    assert s.registry.registry_port == 5004
    assert load("test", None, environ=environ, env_dir=tmp_path).registry.registry_port == 5003
    s = load("test", None, environ={}, env_dir=tmp_path)
    assert (
        s.registry.registry_port == 5002 and s.services.services_timeout == 82
    )  # env file over base
    assert s.cluster.lab_name == "from-base"  # base over default
    assert s.services.proxy_port == 80  # default
    assert s.raw["LAB_NAME"] == "from-base" and "PROXY_PORT" not in s.raw


def test_base_is_no_environment(tmp_path):
    write_env(tmp_path, "base")
    write_env(tmp_path, "test")
    assert config.environments(tmp_path) == ["test"]
    with pytest.raises(ConfigError, match="unknown environment 'base'"):
        load("base", environ={}, env_dir=tmp_path)


def test_unknown_key_in_base_names_base_and_the_closest_key(tmp_path):
    path = write_env(tmp_path, "base", "SERVICES_TIMOUT=3\n")
    write_env(tmp_path, "test")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=tmp_path)
    assert str(exc.value) == f"{path}: unknown key SERVICES_TIMOUT (did you mean SERVICES_TIMEOUT?)"


def test_bad_value_in_base_names_base(tmp_path):
    path = write_env(tmp_path, "base", "PROXY_PORT=http\n")
    write_env(tmp_path, "test")
    with pytest.raises(ConfigError, match=f"^{path}: PROXY_PORT='http': is not a whole number"):
        load("test", environ={}, env_dir=tmp_path)


@pytest.mark.parametrize(
    "key, test_value, prod_value",
    [
        ("STATE_DIR", "/srv/a", "/srv/b"),
        ("LAB_NAME", "one", "two"),
        ("REGISTRY_DIR", "/srv/r1", "/srv/r2"),
        ("REGISTRY_PORT", "5000", "5001"),
        ("REGISTRY_IMAGE", "cdtasks/registry-slim:2.8.2", "cdtasks/registry-slim:2.8.3"),
    ],
)
def test_environments_that_disagree_on_a_shared_key_are_refused(
    tmp_path, key, test_value, prod_value
):
    test = write_env(tmp_path, "test", f"{key}={test_value}\n")
    prod = write_env(tmp_path, "prod", f"NODES=p-1\nCD_NODE=p-1\n{key}={prod_value}\n")
    for env in ("test", "prod"):
        with pytest.raises(ConfigError) as exc:
            load(env, environ={}, env_dir=tmp_path)
        msg = str(exc.value)
        assert "\n" not in msg and msg.startswith(f"{key} differs between ")
        assert f"{test} ({test_value!r})" in msg and f"{prod} ({prod_value!r})" in msg
        assert str(tmp_path / "base.env") in msg


def test_a_shared_key_set_in_one_file_only_disagrees_with_the_default(tmp_path):
    write_env(tmp_path, "test", "STATE_DIR=/srv/state\n")
    prod = write_env(tmp_path, "prod", "NODES=p-1\nCD_NODE=p-1\n")
    with pytest.raises(ConfigError, match=f"{prod} \\('~/.cdtasks', its default\\)"):
        load("prod", environ={}, env_dir=tmp_path)


def test_shared_keys_agree_through_base_or_equal_values(tmp_path):
    write_env(tmp_path, "base", "STATE_DIR=/srv/state\n")
    write_env(tmp_path, "test", "REGISTRY_PORT=5001\nLAB_NAME=lab\n")
    write_env(
        tmp_path,
        "prod",
        "NODES=p-1\nCD_NODE=p-1\nREGISTRY_PORT=05001\nLAB_NAME=lab\nSERVICES_TIMEOUT=50\n",
    )  # the same port written otherwise; not shared
    assert load("prod", environ={}, env_dir=tmp_path).registry.registry_port == 5001
    # The process environment sets a key for every environment alike: no disagreement.
    s = load("test", environ={"CDTASKS_LAB_NAME": "other"}, env_dir=tmp_path)
    assert s.cluster.lab_name == "other" and s.cluster.state_dir == Path("/srv/state")


# -- the process environment ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, hint",
    [
        ("CDTASKS_PROXY_PROT", "CDTASKS_PROXY_PORT"),
        ("CDTASKS_REGISTRY_PROT", "CDTASKS_REGISTRY_PORT"),
        ("CDTASKS_ENVDIR", "CDTASKS_ENV_DIR"),
    ],
)
def test_unknown_cdtasks_variable_is_refused_with_the_closest_name(tmp_path, name, hint):
    write_env(tmp_path, "test")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={name: "3"}, env_dir=tmp_path)
    assert str(exc.value) == f"process environment: unknown variable {name} (did you mean {hint}?)"


def test_unknown_cdtasks_variable_far_from_every_name_gets_no_hint(tmp_path):
    write_env(tmp_path, "test")
    with pytest.raises(ConfigError, match=r"unknown variable CDTASKS_ZZZZZZZZZZZZ$"):
        load("test", environ={"CDTASKS_ZZZZZZZZZZZZ": ""}, env_dir=tmp_path)


def test_cdtasks_variables_that_are_not_keys_are_accepted(tmp_path):
    write_env(tmp_path, "test")
    environ = {
        "CDTASKS_ENV_DIR": str(tmp_path),
        "CDTASKS_PROJECT_DIR": str(tmp_path),
        "CDTASKS_DOCKER_HOST": "unix:///var/run/docker.sock",
        "INVOKE_CDTASKS_ENV_DIR": "x",
        "OTHER_CDTASKS_X": "y",
    }
    assert load("test", environ=environ).env == "test"


# -- values as written, and what a bad one says ------------------------------------------------
def test_dollar_signs_are_kept_as_written(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/root")
    write_env(tmp_path, "base", "NOTIFY_COMMAND=echo $HOME\n")
    s = load_text(tmp_path, "WEBHOOK_SECRET=ab${HOME}cd\nWATCH_BRANCH=feature-$y\n")
    assert s.watch.webhook_secret == "ab${HOME}cd"
    assert s.watch.watch_branch == "feature-$y"
    assert s.watch.notify_command == ("echo", "$HOME")


@pytest.mark.parametrize(
    "key, value, form",
    [
        ("SERVICES_TIMEOUT", "abc", "is not a whole number from 5 to 3600"),
        ("REGISTRY_PORT", "5000.0", "is not a whole number from 1 to 65535"),
        ("SSH_PARALLEL", "", "is not a whole number from 1 to 64"),
        ("ROUTING", "fast", "choose one of auto, mesh, dnsrr"),
        ("LAB_NAME", "-lab", "is not a name (a-z, 0-9 and -"),
        ("STATE_DIR", "~no-such-user-here/state", "is not a path: its ~user names no user here"),
        ("MACHINE_OPTIONS", "--label 'a", "is not shell words"),
        ("NOTIFY_COMMAND", "notify \\", "is not shell words"),
        ("NODE_LABELS", "swarm-test-2=env", "is not node:key=value"),
        ("SSH_HOSTS", "swarm-test-1=root@h:99999", "is not node=[user@]host[:port]"),
        ("NODE_ADDRESSES", "swarm-test-1=here", "is not node=address"),
        ("NOTIFY_URL", "ftp://x", "is not an http:// or https:// URL"),
        ("BASE_IMAGE", "python:latest", "is tagged latest"),
        ("BASE_IMAGE", "python", "has no tag"),
        ("STACK_FILE", " ", "is empty: name a file"),
        ("PASS_ENV", "A-B", "is not a variable name"),
    ],
)
def test_a_value_that_does_not_parse_names_key_and_form_not_python(tmp_path, key, value, form):
    write_env(tmp_path, "test")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={f"CDTASKS_{key}": value}, env_dir=tmp_path)
    msg = str(exc.value)
    assert msg.startswith(f"process environment CDTASKS_{key}: {key}={value!r}: "), msg
    assert form in msg
    for python in ("invalid literal", "No closing quotation", "Could not determine", "Errno"):
        assert python not in msg
