"""A subprocess bounded in time and stopped whole: in a session of its own, so that on a timeout
or an interruption it is killed together with every process it started (git's transport
helpers, mmdebstrap's apt), none lingering after it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def run(
    argv: Sequence[str],
    timeout: float,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`argv` with no stdin, its output captured as text. After `timeout` seconds, or when
    interrupted (Ctrl-C, SIGTERM), it and its process group are killed and the exception
    (subprocess.TimeoutExpired, KeyboardInterrupt) goes on."""
    with subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
