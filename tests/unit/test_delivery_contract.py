"""Delivering a repository on the book's compose contract, without a cluster: the flags checked
before any step, the checkout of a ref (real git), a compose file without the contract refused
as bad input (real compose CLI, which reads files only), when staging needs the CD node's lock,
credentials kept out of the step state, and where deployment runs the production tests of a
delivered record."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from types import MappingProxyType

import pytest

from cdtasks import delivery, registry
from cdtasks.checkout import Checkout
from cdtasks.compose import Build, ComposeModel, ContractError
from cdtasks.config import ConfigError, load
from cdtasks.delivery import Delivery
from cdtasks.deployment import Deployment, checkout_for_tests
from cdtasks.runner import StepFailed

GIT_ID = ["-c", "user.name=cdtasks tests", "-c", "user.email=tests@cdtasks.invalid"]
HELLO = Path(__file__).resolve().parents[2] / "tests" / "apps" / "hello-book"


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", *GIT_ID, *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


class Quiet:
    def step(self, name):
        pass

    def done(self, result):
        pass


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "test.env").write_text(
        f"STATE_DIR={tmp_path / 'state'}\n"
        "COMPOSE_FILE=docker-compose-ci.yml\n"
        "APP_IMAGE=hello-book\n"
    )
    return load("test", environ={}, env_dir=tmp_path)


@pytest.fixture
def hello(tmp_path):
    """tests/apps/hello-book as a git repository of its own; branch `feature` one commit on."""
    r = tmp_path / "hello"
    subprocess.run(["cp", "-r", str(HELLO), str(r)], check=True)
    git(r, "init", "--quiet", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "--quiet", "-m", "hello-book")
    git(r, "checkout", "--quiet", "-b", "feature")
    (r / "NOTES").write_text("on the branch only\n")
    git(r, "add", "NOTES")
    git(r, "commit", "--quiet", "-m", "a branch")
    git(r, "checkout", "--quiet", "main")
    return r


@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"version": "latest"}, "--version"),
        ({"version": ""}, "--version"),
        ({"ref": "--upload-pack=x"}, "--ref"),
        ({"repo": "/no/such/dir"}, "--repo"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(settings, hello, kw, flag):
    args = {"repo": str(hello), "ref": "HEAD", "version": "1.0", **kw}
    d = Delivery(settings, args["repo"], args["ref"], args["version"])
    with pytest.raises(ConfigError, match=f"^{flag} "):
        delivery.check_input(d)


def test_a_compose_file_missing_at_the_ref_is_refused(tmp_path, hello):
    (tmp_path / "test.env").write_text(
        f"STATE_DIR={tmp_path / 'state'}\nCOMPOSE_FILE=ci/other.yml\n"
    )
    d = Delivery(load("test", environ={}, env_dir=tmp_path), str(hello), "HEAD", "1.0")
    with pytest.raises(ConfigError, match="^--compose-file 'ci/other.yml': not in "):
        delivery.check_input(d)


def test_a_branch_only_on_the_remote_is_checked_out_by_its_commit(settings, hello):
    co = Checkout(settings, str(hello), "feature", "1.0")
    co.clone()
    assert (co.workdir / "NOTES").is_file()
    assert co.commit == git(hello, "rev-parse", "feature")
    assert co.commands[-1].endswith(f"checkout --quiet --detach {co.commit}")


def test_a_ref_that_names_nothing_fails_the_checkout(settings, hello):
    with pytest.raises(StepFailed, match="^--ref no-such: no such branch, tag or commit"):
        Checkout(settings, str(hello), "no-such", "1.0").clone()


def test_a_compose_file_without_staging_is_bad_input_and_nothing_runs(settings, hello):
    compose = hello / "docker-compose-ci.yml"
    text = compose.read_text()
    compose.write_text(text[: text.index("  staging:\n")] + text[text.index("  production:\n") :])
    git(hello, "commit", "--quiet", "-am", "no staging")
    d = Delivery(settings, str(hello), "HEAD", "1.0", defer_down=True)
    ran = []
    steps = {n: functools.partial(lambda n, d: ran.append(n) or "ok", n) for n in delivery.STEPS}
    steps["checkout"] = delivery.checkout
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(delivery, "STEP_FUNCS", steps)
        with pytest.raises(ContractError, match="^docker-compose-ci.yml: no service staging"):
            delivery.run(d, delivery.STEPS, Quiet())
    assert ran == [] and not d.workdir.exists()


def model(image: str, ports=None) -> ComposeModel:
    return ComposeModel(
        "f.yml",
        ("app", "unit", "staging-dep", "staging", "production"),
        MappingProxyType({"app": image, "staging-dep": image}),
        MappingProxyType({"app": Build("/src", "Dockerfile")}),
        MappingProxyType(ports or {}),
    )


@pytest.mark.parametrize(
    "image, ports, locked",
    [
        ("localhost:5000/hello-book:1.1", {}, False),  # `${IMAGE}:${VERSION}`: the run's own name
        ("localhost:5000/hello-book:1.1", {"staging-dep": (8080,)}, True),  # a host port
        ("hello-book:latest", {}, True),  # a plain name is every run's on the CD node
    ],
)
def test_staging_takes_the_cd_nodes_lock_when_runs_could_collide(settings, image, ports, locked):
    d = Delivery(settings, "", version="1.1", model=model(image, ports), project="p-1")
    assert delivery.staging_lock_needed(d) is locked


def test_the_step_state_keeps_no_credentials(settings, tmp_path):
    settings.delivery.workspace_dir.mkdir(parents=True)
    d = Delivery(
        settings,
        "https://ci:t0ken-secret@git.example/app.git",
        version="1.0",
        workdir=tmp_path,
        project="p-1",
        built="sha256:abc",
    )
    delivery.save_state(d)
    state = json.loads(delivery.state_file(settings).read_text())
    assert state["repo"] == "https://***@git.example/app.git" and state["built"] == "sha256:abc"
    assert delivery.load_state(settings).built == "sha256:abc"


def test_deployment_tests_with_the_delivered_compose_file_and_the_env_files_credentials(tmp_path):
    url = "https://ci:t0ken-secret@git.example/app.git"
    (tmp_path / "test.env").write_text(f"STATE_DIR={tmp_path}\nREPO={url}\n")
    (tmp_path / "prod.env").write_text(f"STATE_DIR={tmp_path}\n")
    test, prod = (load(e, environ={}, env_dir=tmp_path) for e in ("test", "prod"))
    d = Deployment(prod, test, "1.1")
    record = {
        "repo": "https://***@git.example/app.git",
        "commit": "abc",
        "compose_file": "docker-compose-ci.yml",
    }
    co = checkout_for_tests(d, record)
    assert (co.repo, co.ref, co.settings.delivery.compose_file) == (
        url,
        "abc",
        "docker-compose-ci.yml",
    )
    other = checkout_for_tests(d, {"repo": "/srv/other", "commit": "def"})
    assert (other.repo, other.settings.delivery.compose_file) == (
        "/srv/other",
        test.delivery.compose_file,
    )


@pytest.mark.parametrize(
    "ref, repository",
    [
        ("localhost:5000/hello-book:1.1@sha256:ab", "localhost:5000/hello-book"),
        ("localhost:5000/hello-book:1.1", "localhost:5000/hello-book"),
        ("localhost:5000/hello-book", "localhost:5000/hello-book"),
        ("hello-book:latest", "hello-book"),
    ],
)
def test_the_repository_of_an_image_reference(ref, repository):
    assert registry.repository(ref) == repository
