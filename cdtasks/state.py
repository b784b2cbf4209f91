"""The tool's own files (STATE_DIR and what lives beside it): directories only their owner can
enter, keys and credentials only their owner can read, from the first byte written."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

DIR_MODE, FILE_MODE = 0o700, 0o600


def private_dir(path: Path) -> Path:
    """`mkdir -p` whose every new directory is 0700 whatever the umask. A directory that exists
    already is left as it is (a REGISTRY_DIR you made may be a shared mount)."""
    missing, d = [], path
    while not d.is_dir() and d.parent != d:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made meanwhile by a concurrent run, which tightens it itself
        d.chmod(DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a key or credential readable by this user only: the file is 0600 before its first
    byte (an existing one is tightened before it is truncated), never a copy then chmod."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def create_private(path: Path, data: bytes) -> bool:
    """Write `path` only if it does not exist, atomically: a concurrent run either finds the
    whole file or writes it itself. Returns False when it existed."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    write_private(tmp, data)
    try:
        os.link(tmp, path)  # fails if path exists: never replaces what another run wrote
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True
