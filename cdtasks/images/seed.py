"""A node image whose engine already holds the images every node needs at `provision` (the
registry): made once per machine, so a new node gets them as files Docker copies into its empty
/var/lib/docker volume when the container is created, instead of a `docker save | docker load`
per node (which costs the node's engine, and the host's, a second of CPU or more).

The seed is made by the engine itself, not by hand: a throwaway container of the node image runs
a bare dockerd on a throwaway volume, loads the images, stops; its image store (`image/` and
`overlay2/` of /var/lib/docker, nothing of the engine's identity, networks or swarm state) is
copied into a container of the node image, which is committed as `<node image>-seeded`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from . import Image, ImageError, _build_lock, _image_id, build, save

SEED_LABEL = "io.cdtasks.seed"
STORE = ("image", "overlay2")  # what the seed keeps of its engine's /var/lib/docker
READY_TIMEOUT = 60
HostConfig = Callable[[Mapping[str, dict]], dict]  # binds -> a host config able to run dockerd


def ref(node: Image) -> str:
    return f"{node.repo}:{node.version}-seeded"


def _key(client, node: Image, images: list[Image]) -> str:
    """The node image's ID and the seeded images' IDs: a rebuild of any makes a new seed."""
    ids = [client.images.get(i.ref).id for i in [node, *images]]
    return hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16]


def _current(client, node: Image, images: list[Image]) -> bool:
    image_id = _image_id(client, ref(node))
    labels = (client.images.get(image_id).labels or {}) if image_id else {}
    return labels.get(SEED_LABEL) == _key(client, node, images)


def seeded(
    client, node: Image, images: list[Image], host_config: HostConfig, log: Callable[[str], None]
) -> str:
    """The seeded node image's reference, made (once per machine) if missing or stale."""
    build(client, [node, *images], log)
    if not _current(client, node, images):
        with _build_lock(log):
            if not _current(client, node, images):
                _make(client, node, images, host_config, log)
    return ref(node)


def _make(
    client, node: Image, images: list[Image], host_config: HostConfig, log: Callable[[str], None]
) -> None:
    log(f"seeding {ref(node)} with {', '.join(i.ref for i in images)}")
    api, made = client.api, []
    volume = client.volumes.create(labels={SEED_LABEL: "building"})
    try:
        engine = api.create_container(
            node.ref,
            entrypoint=["dockerd", "--host=unix:///var/run/docker.sock"],
            host_config=host_config({volume.name: {"bind": "/var/lib/docker", "mode": "rw"}}),
            labels={SEED_LABEL: "building"},
        )
        made.append(engine["Id"])
        api.start(engine["Id"])
        _wait_engine(api, engine["Id"])
        with tempfile.TemporaryDirectory(prefix="cdtasks-seed-") as tmp:
            saved = Path(tmp) / "images.tar"
            with open(saved, "wb") as f:
                for chunk in save(client, [i.ref for i in images]):
                    f.write(chunk)
            api.put_archive(engine["Id"], "/tmp", _tar_of(saved))
        _run(api, engine["Id"], ["docker", "load", "-q", "-i", "/tmp/images.tar"])
        api.stop(engine["Id"], timeout=30)  # dockerd shuts down cleanly on SIGTERM
        copy = api.create_container(
            node.ref,
            entrypoint=[
                "sh",
                "-c",
                'mkdir -p /var/lib/docker && cp -a "$@" /var/lib/docker/',
                "sh",
                *[f"/seed/{d}" for d in STORE],
            ],
            host_config=api.create_host_config(
                binds={volume.name: {"bind": "/seed", "mode": "ro"}}
            ),
            labels={SEED_LABEL: "building"},
        )
        made.append(copy["Id"])
        api.start(copy["Id"])
        if api.wait(copy["Id"])["StatusCode"]:
            raise ImageError(
                f"seeding {ref(node)}: copying the image store failed: "
                f"{api.logs(copy['Id']).decode(errors='replace').strip()}"
            )
        old = _image_id(client, ref(node))
        api.commit(
            copy["Id"],
            repository=ref(node).rsplit(":", 1)[0],
            tag=ref(node).rsplit(":", 1)[1],
            changes=node.changes() + [f"LABEL {SEED_LABEL}={_key(client, node, images)}"],
        )
        if old:  # the replaced seed, now untagged
            # Still used by a container: Docker keeps it, so do we.
            with contextlib.suppress(Exception):
                client.images.remove(old)
    finally:
        for cid in made:
            api.remove_container(cid, force=True)
        volume.remove(force=True)


def _tar_of(path: Path) -> bytes:
    """A tarball holding the file (what `put_archive` takes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=path.name)
    return buf.getvalue()


def _run(api, container: str, argv: list[str]) -> str:
    exec_id = api.exec_create(container, argv)["Id"]
    out = api.exec_start(exec_id).decode(errors="replace")
    if api.exec_inspect(exec_id)["ExitCode"]:
        raise ImageError(f"seeding the node image: {' '.join(argv)} failed: {out.strip()}")
    return out


def _wait_engine(api, container: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        exec_id = api.exec_create(container, ["docker", "version"])["Id"]
        api.exec_start(exec_id)
        if api.exec_inspect(exec_id)["ExitCode"] == 0:
            return
        if time.monotonic() > deadline:
            logs = api.logs(container, tail=5).decode(errors="replace").strip()
            raise ImageError(
                f"seeding the node image: its engine did not start within {READY_TIMEOUT}s: {logs}"
            )
        time.sleep(0.3)
