"""A stack's images that the registry lacks, on a cluster that has none of the stack yet
(`inv services`): those the project's delivery compose file builds are built and pushed by the
delivery's own build and publish steps (faked here: they need a CD node), from a real checkout
read by the real compose CLI with the compose policy's checks; any other image is refused
naming it and its services, before anything is built; a failed build names its compose
service. And which of a stack's images `stack._check_images` hands over (none: no checkout)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from cdtasks import delivery, gateway, stack, stackfile
from cdtasks.compose_policy import Refused
from cdtasks.config import load
from cdtasks.runner import StepFailed
from cdtasks.services import ServiceError
from cdtasks.stackplan import StackError

TEAM = Path(__file__).resolve().parents[2] / "tests" / "apps" / "team-stack"
GIT_ID = ["-c", "user.name=cdtasks tests", "-c", "user.email=tests@cdtasks.invalid"]
API, WORKER = "localhost:5000/team-api:1.0", "localhost:5000/team-worker:1.2"


def commit(repo: Path, message: str) -> None:
    for args in (["add", "-A"], ["commit", "--quiet", "-m", message]):
        subprocess.run(["git", *GIT_ID, *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def team(tmp_path):
    """The team's repository (git) and settings delivering it, as tests/apps/team-stack/env."""
    repo = tmp_path / "team"
    shutil.copytree(TEAM, repo, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(["git", "init", "--quiet", "-b", "main"], cwd=repo, check=True)
    commit(repo, "team")
    (tmp_path / "test.env").write_text(
        f"STATE_DIR={tmp_path / 'state'}\nREPO={repo}\n"
        "COMPOSE_FILE=docker-compose-ci.yml\nAPP_IMAGE=team-api\n"
    )
    return SimpleNamespace(repo=repo, settings=load("test", environ={}, env_dir=tmp_path))


@pytest.fixture
def steps(monkeypatch):
    """The build and publish steps as calls: (compose services, VERSION, the checkout there)."""
    calls: list[tuple[str, tuple[str, ...], str, bool]] = []

    def fake(name):
        def step(d):
            calls.append((name, d.only, d.version, d.workdir.is_dir()))
            return "ok"

        return step

    monkeypatch.setattr(delivery, "build", fake("build"))
    monkeypatch.setattr(delivery, "publish", fake("publish"))
    return calls


def run(team, missing, lines=None):
    return delivery.publish_missing(
        team.settings,
        SimpleNamespace(),
        missing,
        "stack.yml",
        (lines if lines is not None else []).append,
    )


def workspace(team) -> list[Path]:
    return list(team.settings.delivery.workspace_dir.iterdir())


def test_each_missing_image_the_project_builds_is_built_and_pushed_once_per_tag(team, steps):
    lines: list[str] = []
    done = run(team, {API: ["api", "migrate"], WORKER: ["worker"]}, lines)
    assert steps == [
        ("build", ("app",), "1.0", True),
        ("publish", ("app",), "1.0", True),
        ("build", ("worker",), "1.2", True),
        ("publish", ("worker",), "1.2", True),
    ]
    assert done == [f"built and pushed {API}", f"built and pushed {WORKER}"]
    assert any(line.startswith(f"the registry lacks {API}: checking out") for line in lines)
    assert workspace(team) == []  # both checkouts gone


@pytest.mark.parametrize(
    "ref", ["localhost:5000/nobody:1.0", "registry.example.org/team-api:1.0", f"{API}@sha256:ab"]
)
def test_an_image_the_project_does_not_build_is_refused_before_any_build(team, steps, ref):
    with pytest.raises(StackError) as err:
        run(team, {API: ["api"], ref: ["db", "cache"]})
    assert str(err.value) == (
        f"stack.yml: service db, cache: image {ref} is neither one of cdtasks' offline "
        f"images, nor in the registry, nor built by docker-compose-ci.yml"
    )
    assert steps == [] and workspace(team) == []


def test_a_failed_build_names_the_compose_service(team, monkeypatch):
    def fails(d):
        raise StepFailed("`docker compose build worker` failed", "#5 ...\nfailed to solve: 3\n")

    monkeypatch.setattr(delivery, "build", fails)
    with pytest.raises(ServiceError) as err:
        run(team, {WORKER: ["worker"]})
    assert str(err.value) == (
        f"compose service worker of docker-compose-ci.yml ({WORKER}): failed to solve: 3"
    )
    assert workspace(team) == []


def test_the_compose_files_policy_applies_before_any_build(team, steps):
    compose = team.repo / "docker-compose-ci.yml"
    compose.write_text(compose.read_text().replace("context: .\n", "context: /etc\n", 1))
    commit(team.repo, "a build context outside the checkout")
    with pytest.raises(Refused, match="^docker-compose-ci.yml: service app: build.context"):
        run(team, {API: ["api"]})
    assert steps == [] and workspace(team) == []


class Registry:
    """A manager whose registry has `present` only."""

    def __init__(self, present):
        self.present, self.asked = set(present), []

    def registry_digest(self, ref):
        self.asked.append(ref)
        if ref not in self.present:
            raise gateway.APIFailure(f"manifest unknown: {ref}", 404)
        return "sha256:ab"


@pytest.mark.parametrize("present", [[], [API], [API, WORKER]])
def test_the_stack_hands_over_only_what_the_registry_lacks(team, monkeypatch, present):
    st = stackfile.read(
        TEAM / "stack.yml",
        "team",
        {
            "REGISTRY": "localhost:5000",
            "PLACEMENT": "node.role == manager",
            "WORKER_VERSION": "1.2",
        },
    )
    handed = []
    monkeypatch.setattr(
        delivery,
        "publish_missing",
        lambda s, cluster, missing, where, log: handed.append((dict(missing), where)) or ["x"],
    )
    cluster = SimpleNamespace(
        settings=team.settings, provider=SimpleNamespace(image_source=lambda: None)
    )
    manager = Registry(present)
    done = stack._check_images(cluster, manager, st, print)
    assert sorted(manager.asked) == [API, WORKER]  # the offline images are not looked up
    lacking = {API: ["api", "migrate"], WORKER: ["worker"]}
    wanted = {ref: users for ref, users in lacking.items() if ref not in present}
    assert handed == ([(wanted, str(TEAM / "stack.yml"))] if wanted else [])
    assert done == (["x"] if wanted else [])


def test_a_registry_with_a_path_is_matched_as_publish_names_its_images(tmp_path, steps):
    """REGISTRY_URL host:port/path: the stack's REGISTRY/NAME:TAG is what publish pushes."""
    repo = tmp_path / "team"
    shutil.copytree(TEAM, repo, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run(["git", "init", "--quiet", "-b", "main"], cwd=repo, check=True)
    commit(repo, "team")
    (tmp_path / "test.env").write_text(
        f"STATE_DIR={tmp_path / 'state'}\nREPO={repo}\nCOMPOSE_FILE=docker-compose-ci.yml\n"
        "APP_IMAGE=team-api\nREGISTRY_URL=team-registry:5443/team\n"
    )
    s = load("test", environ={}, env_dir=tmp_path)
    ref = "team-registry:5443/team/team-api:1.0"
    done = delivery.publish_missing(s, SimpleNamespace(), {ref: ["api"]}, "stack.yml", print)
    assert done == [f"built and pushed {ref}"]
    assert [c[:3] for c in steps] == [("build", ("app",), "1.0"), ("publish", ("app",), "1.0")]
