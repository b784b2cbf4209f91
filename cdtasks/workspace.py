"""Checkouts on the CD node. Compose bind-mounts paths of the checkout on the engine's host, so
where the provider does not mount WORKSPACE_DIR into the nodes, the checkout is copied to the CD
node at the same path, through its Docker API (no SSH rights or rsync needed there), and
removed after the run."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

LABEL = "io.cdtasks.workspace"


def _archive(path: Path) -> bytes:
    """The checkout as a tar whose top entry is its directory name (git metadata left out:
    compose and the tests read files, builds send their context from here)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(
            path,
            arcname=path.name,
            filter=lambda info: None if "/.git/" in f"/{info.name}/" else info,
        )
    return buf.getvalue()


def _helper(client, path: Path, image: str, command: list[str]):
    """A container of `image` that mounts the checkout's parent directory at the same path."""
    parent = str(path.parent)
    return client.containers.create(
        image,
        command=command,
        entrypoint=[],
        volumes={parent: {"bind": parent, "mode": "rw"}},
        labels={LABEL: str(path)},
    )


def upload(client, path: Path, image: str) -> int:
    """Copy the checkout to the same path on the node; returns the bytes sent."""
    data = _archive(path)
    helper = _helper(client, path, image, ["true"])
    try:
        helper.put_archive(str(path.parent), data)
    finally:
        helper.remove(force=True)
    return len(data)


def remove(client, path: Path, image: str) -> None:
    helper = _helper(client, path, image, ["rm", "-rf", str(path)])
    try:
        helper.start()
        helper.wait(timeout=60)
    finally:
        helper.remove(force=True)
