"""Compose against the real engine: every project is uniquely named and removed after its test."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal

import pytest

from cdtasks.compose import Compose, ComposeError, compose_command, unique_project

docker = pytest.importorskip("docker")

IMAGE = "cdtasks/python:3.11"
PREFIX = f"cdtcomposetest{secrets.token_hex(3)}"

try:
    _client = docker.from_env()
    _client.ping()
except Exception as exc:  # no socket, refused, TLS: all mean no engine for these tests
    pytest.skip(f"no Docker engine answers: {exc}", allow_module_level=True)
try:
    _client.images.get(IMAGE)
except docker.errors.ImageNotFound:
    pytest.skip(
        f"local image {IMAGE} is missing (Docker Hub is unreachable, build it first)",
        allow_module_level=True,
    )
try:
    compose_command()
except ComposeError as exc:
    pytest.skip(str(exc), allow_module_level=True)

# The image comes from interpolation, which also proves `env` reaches compose.
COMPOSE_FILE = """\
x-python: &python
  image: ${TEST_IMAGE:?TEST_IMAGE must be set}
  pull_policy: never
  entrypoint: ["python3"]  # explicit: the image's own entrypoint is not this test's contract
services:
  ok:
    <<: *python
    command: ["-c", "print('hi')"]
  bad:
    <<: *python
    command: ["-c", "import sys; print('failing'); sys.exit(3)"]
  dep:
    <<: *python
    command: ["-c", "import time; print('started', flush=True); time.sleep(600)"]
    stop_signal: SIGKILL
  env:
    <<: *python
    environment: [CDT_PASSED, CDT_NOT_PASSED]  # taken from compose's own environment
    command: ["-c", "import os; print(sorted(k for k in os.environ if k.startswith('CDT_')))"]
  built:
    build: {context: ., dockerfile: Dockerfile.built}
"""


def labelled(project: str) -> tuple[list, list]:
    """Containers and networks the engine still holds for a compose project."""
    label = {"label": f"com.docker.compose.project={project}"}
    return _client.containers.list(all=True, filters=label), _client.networks.list(filters=label)


@pytest.fixture
def make(tmp_path):
    """Builds Compose objects with unique projects; removes whatever they left, even on failure."""
    f = tmp_path / "docker-compose-test.yml"
    f.write_text(COMPOSE_FILE)
    # The SDK and compose must look at the same engine.
    docker_env = {k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}
    made: list[Compose] = []

    def factory(**kw) -> Compose:
        c = Compose(f, unique_project(PREFIX), docker_env, {"TEST_IMAGE": IMAGE}, **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.down(check=False)
        containers, networks = labelled(c.project)
        for container in containers:
            container.remove(force=True)
        for network in networks:
            network.remove()


def test_run_ok_returns_its_output(make):
    lines: list[str] = []
    result = make(on_line=lines.append).run("ok")
    assert result.ok
    assert "hi" in result.output.splitlines()
    assert "hi" in lines
    assert result.seconds > 0


def test_run_bad_raises_with_its_exit_code(make):
    c = make()
    with pytest.raises(ComposeError) as err:
        c.run("bad")
    assert err.value.result.code == 3
    assert "exit code 3" in str(err.value) and "run --rm bad" in str(err.value)
    assert "failing" in err.value.result.tail()


def test_session_removes_everything_after_an_exception(make):
    c = make()
    with pytest.raises(RuntimeError, match="boom"), c.session():
        c.up("dep")
        c.run("ok")
        containers, networks = labelled(c.project)
        assert [x.status for x in containers] == ["running"] and networks
        raise RuntimeError("boom")
    assert labelled(c.project) == ([], [])


def test_sigterm_during_a_long_run_still_removes_everything(make):
    def terminate_once_started(line: str) -> None:
        if line == "started":  # sent from inside the session, so it cannot hit pytest itself
            os.kill(os.getpid(), signal.SIGTERM)

    c = make(on_line=terminate_once_started)
    with pytest.raises(KeyboardInterrupt), c.session():
        c.run("dep")
    assert [argv[argv.index("-p") + 2] for argv in c.issued] == ["run", "down"]
    assert labelled(c.project) == ([], [])


def test_two_projects_run_side_by_side(make):
    a, b = make(), make()
    assert a.project != b.project
    a.up("dep")
    b.up("dep")
    (ca,), _ = labelled(a.project)
    (cb,), _ = labelled(b.project)
    assert ca.id != cb.id and ca.status == cb.status == "running"
    a.down()
    assert labelled(a.project) == ([], [])
    (still,), _ = labelled(b.project)
    assert still.id == cb.id and still.status == "running"


def test_operator_variables_reach_services_only_when_pass_env_names_them(make, monkeypatch):
    monkeypatch.setenv("CDT_PASSED", "ci-token-1")
    monkeypatch.setenv("CDT_NOT_PASSED", "ci-token-2")
    assert "[]" in make().run("env").output.splitlines()
    assert "['CDT_PASSED']" in make(pass_env=["CDT_PASSED"]).run("env").output.splitlines()


def test_a_build_says_nothing_of_bake(make, tmp_path):
    """Compose v2.40 would advise Bake in every build, and buildx is not installed: it is turned
    off in compose's environment (COMPOSE_BAKE=false), so the build's output stays the build's."""
    (tmp_path / "Dockerfile.built").write_text(f"FROM {IMAGE}\nLABEL io.cdtasks.test=bake\n")
    c = make()
    try:
        result = c.build("built")
        assert result.ok and "Bake" not in result.output and "buildx" not in result.output, (
            result.output
        )
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            _client.images.remove(f"{c.project}-built", force=True)
