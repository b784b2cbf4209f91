"""git as a subprocess that never waits for an answer: no terminal prompt, ssh in batch mode, no
stdin, a time limit, and its transport helpers (git-remote-https, ssh) killed with it on a
timeout or an interruption (`procs.run`). Every git command of the tool goes through `run`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import git_credentials, procs

LOCAL_TIMEOUT = 30  # seconds a git command on a local repository may take (no network)


def environment(repo: str = "") -> dict[str, str]:
    """The environment of a git command that must not wait for an answer: no terminal
    prompt, ssh in batch mode (`run` also closes its stdin); with the credentials of `repo`'s
    URL, which git then gets as `git_credentials.url(repo)`."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")  # ssh would ask on the tty
    return {**env, **git_credentials.environment(repo, env)}


def run(
    args: Sequence[str], timeout: float, cwd: Path | str | None = None, repo: str = ""
) -> subprocess.CompletedProcess:
    """`git ARGS` (`procs.run`: killed with its transport helpers after `timeout` seconds or
    an interruption, the exception going on), in `environment(repo)`."""
    return procs.run(["git", *args], timeout, cwd, environment(repo))
