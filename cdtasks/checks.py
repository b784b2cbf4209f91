"""Checks of the delivery's flags before any step runs: `--version`, `--ref`, `--repo`,
`--compose-file` and `--max-errors`. Each returns the value it accepts or raises config.ConfigError with one line
naming the flag and the value (exit 2), credentials in a repository URL hidden."""

from __future__ import annotations

import posixpath
import re
import subprocess
from pathlib import Path, PurePosixPath

from . import git, git_credentials
from .config import ConfigError, pinned_version
from .redaction import redact

LS_REMOTE_TIMEOUT = 20  # seconds a repository URL gets to answer `git ls-remote`
# `scheme://...` or scp-like `user@host:path`; anything else is a local path.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[^/:@\s]+@[^/:\s]+:")


def is_url(repo: str) -> bool:
    return bool(_URL.match(repo))


def version(value: str) -> str:
    """`--version`: config's one rule for versions (not empty, not latest, a valid tag)."""
    try:
        return pinned_version(value)
    except ValueError as exc:
        raise ConfigError(f"--version {value!r}: {exc}") from None


def max_errors(value: str | int | None) -> int | None:
    """`--max-errors`: a whole number of errors, 0 or more; None (not given): record only."""
    if value is None:
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"--max-errors {value!r}: give a whole number of errors, 0 or more")
    return int(text)


def ref(value: str) -> str:
    """`--ref`: a branch, tag or commit; never an option. Callers still pass it to git after
    `--end-of-options` (`git checkout --end-of-options REF`, `git cat-file -e
    --end-of-options REF:PATH`)."""
    if not value or value.startswith("-") or any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(
            f"--ref {value!r}: give a branch, tag or commit (no leading -, no "
            f"spaces or control characters)"
        )
    return value


def repo(value: str, timeout: float = LS_REMOTE_TIMEOUT) -> str:
    """`--repo`: empty (this project), a local git repository or directory, or a URL that
    answers `git ls-remote` within `timeout` without asking for credentials."""
    if not value:
        return value
    shown = redact(value)
    if value.startswith("-"):
        raise ConfigError(f"--repo {shown!r}: a repository, not an option")
    if not is_url(value):
        if not Path(value).is_dir():
            raise ConfigError(f"--repo {shown!r}: no such directory (give a local path or a URL)")
        return value
    try:
        proc = git.run(
            ["ls-remote", "--quiet", git_credentials.url(value), "HEAD"], timeout, repo=value
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(
            f"--repo {shown!r}: did not answer `git ls-remote` within {timeout:g}s"
        ) from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        raise ConfigError(f"--repo {shown!r}: {redact(lines[-1].strip())}")
    return value


def compose_file(value: str, repo_path: str = "", at: str = "HEAD") -> str:
    """`--compose-file`: relative, inside the checkout (no `..` out of it); in a local git
    repository it must exist at `at` (the ref), in a local directory on disk. A URL's checkout
    is checked after cloning, with `inside()`."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or value.startswith("~"):
        raise ConfigError(f"--compose-file {value!r}: give a path relative to the repository")
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            raise ConfigError(f"--compose-file {value!r}: leaves the repository (..)")
    if not repo_path or is_url(repo_path):
        return value
    where = Path(repo_path)
    if (where / ".git").exists():
        try:
            known = git.run(
                [
                    "-C",
                    str(where),
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    "--end-of-options",
                    f"{at}^{{commit}}",
                ],
                git.LOCAL_TIMEOUT,
            )
            if known.returncode != 0:
                return value  # an unknown ref: the checkout step says so, naming the ref
            # git names paths in a tree without `.` or `a/..` steps
            proc = git.run(
                [
                    "-C",
                    str(where),
                    "cat-file",
                    "-e",
                    "--end-of-options",
                    f"{at}:{posixpath.normpath(value)}",
                ],
                git.LOCAL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"--compose-file {value!r}: git did not answer within "
                f"{git.LOCAL_TIMEOUT}s in {repo_path}"
            ) from None
        if proc.returncode != 0:
            raise ConfigError(f"--compose-file {value!r}: not in {repo_path} at {at}")
    elif not (where / value).is_file():
        raise ConfigError(f"--compose-file {value!r}: not in {repo_path}")
    return value


def inside(checkout: Path, relative: str) -> Path:
    """The file `relative` of a checkout, refused (ConfigError) when it resolves outside it,
    through a symbolic link for instance; call it on the checkout before reading the file."""
    root = checkout.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ConfigError(f"--compose-file {relative!r}: resolves outside the checkout")
    return target
