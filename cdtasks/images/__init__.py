"""Images the lab needs, built offline: Debian packages -> root filesystem (mmdebstrap) -> image.

Docker Hub is unreachable on air-gapped sites (and on the machines this project is built on), so
every image is built from Debian bookworm packages and cached: an image is rebuilt only when its
recipe changes (the recipe hash is an image label). Each image is tagged with the upstream version
it pins, and the build fails if Debian ships another upstream version than the pin.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import procs

HERE = Path(__file__).parent
SOURCES = "/etc/apt/sources.list.d/debian.sources"
SUITE = "bookworm"
RECIPE_LABEL = "io.cdtasks.recipe"
VERSIONS_LABEL = "io.cdtasks.versions"
MMDEBSTRAP_TIMEOUT = 1800  # seconds one root filesystem may take (~35 s with a nearby mirror)


class ImageError(RuntimeError):
    """An image could not be built; the message names it and the cause."""


@dataclass(frozen=True)
class Rootfs:
    """A Debian root filesystem: packages, upstream version pins, files copied in."""

    name: str
    packages: tuple[str, ...]
    pins: Mapping[str, str]  # package -> upstream version the image promises
    files: Mapping[str, str] = field(
        default_factory=dict
    )  # path in rootfs -> file beside this module


@dataclass(frozen=True)
class Image:
    key: str
    repo: str
    version: str
    rootfs: Rootfs
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    expose: tuple[int, ...] = ()
    upstream: str = ""  # the pinned upstream image this one stands in for
    # Paths (fnmatch globs, relative to /) the image keeps of its root filesystem; empty: all.
    keep: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.version}"

    def changes(self) -> list[str]:
        """Dockerfile instructions `docker import` applies on top of the root filesystem."""
        out = [f"ENTRYPOINT {json.dumps(list(self.entrypoint))}"] if self.entrypoint else []
        out += [f"CMD {json.dumps(list(self.cmd))}"] if self.cmd else []
        out += [f"ENV {k}={v}" for k, v in sorted(self.env.items())]
        out += [f"EXPOSE {p}" for p in self.expose]
        return out

    def recipe_hash(self) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps(
                [
                    SUITE,
                    self.rootfs.packages,
                    sorted(self.rootfs.pins.items()),
                    self.changes(),
                    *([list(self.keep)] if self.keep else []),
                ]
            ).encode()
        )
        for target, name in sorted(self.rootfs.files.items()):
            h.update(target.encode() + (HERE / name).read_bytes())
        return h.hexdigest()[:16]


NODE_FS = Rootfs(
    "node",
    ("docker.io", "iptables", "openssh-server", "ca-certificates", "procps", "iproute2"),
    {"docker.io": "20.10.24"},
    {"/usr/local/bin/cdtasks-node": "node-entrypoint.sh"},
)
# One root filesystem for everything that runs inside the nodes: its single layer is loaded into
# a node once and then shared by the proxy, database and application base images. The registry
# image keeps only its own files of it (a tenth of the size): every node of both clusters gets it
# at `provision`, long before (if ever) it needs the others.
RUNTIME_FS = Rootfs(
    "runtime",
    ("python3", "haproxy", "redis-server", "docker-registry", "ca-certificates"),
    {"python3": "3.11", "haproxy": "2.6", "redis-server": "7.0", "docker-registry": "2.8.2"},
    {"/etc/docker/registry/config.yml": "registry.yml"},
)

IMAGES: dict[str, Image] = {
    i.key: i
    for i in (
        Image(
            "node",
            "cdtasks/node",
            "20.10.24",
            NODE_FS,
            ("/usr/local/bin/cdtasks-node",),
            upstream="docker:20.10.24-dind",
        ),
        Image(
            "registry",
            "cdtasks/registry-slim",
            "2.8.2",
            RUNTIME_FS,
            ("/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"),
            expose=(5000,),
            upstream="registry:2.8.2",
            # The Go binary needs only the C library and its loader (bookworm's merged /usr: /lib,
            # /lib64 are links into usr/). `true` and `rm`: workspace.py uses the image, which every
            # node has, as the carrier that copies a checkout to the CD node and removes it.
            keep=(
                "usr/bin/docker-registry",
                "etc/docker/registry/config.yml",
                "lib",
                "lib64",
                "usr/lib64/ld-linux*",
                "usr/lib/*/ld-linux*",
                "usr/lib/*/libc.so.6",
                "etc/ssl/certs/ca-certificates.crt",
                "etc/passwd",
                "etc/group",
                "tmp",
                "usr/bin/true",
                "usr/bin/rm",
            ),
        ),
        # Like python:3.11-slim: no entrypoint, so compose commands and Dockerfile CMDs work as is.
        Image(
            "python",
            "cdtasks/python",
            "3.11",
            RUNTIME_FS,
            (),
            cmd=("python3",),
            upstream="python:3.11-slim-bookworm",
        ),
        Image(
            "haproxy",
            "cdtasks/haproxy",
            "2.6",
            RUNTIME_FS,
            ("haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"),
            upstream="haproxy:2.6",
        ),
        Image(
            "redis",
            "cdtasks/redis",
            "7.0",
            RUNTIME_FS,
            (
                "redis-server",
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ),
            expose=(6379,),
            upstream="redis:7.0",
        ),
    )
}


def upstream_version(debian_version: str) -> str:
    """`5:7.0.15-1~deb12u1` -> `7.0.15`; `20.10.24+dfsg1-1+deb12u1+b6` -> `20.10.24`."""
    v = debian_version.split(":", 1)[-1].rsplit("-", 1)[0]
    return v.split("+", 1)[0].split("~", 1)[0]


def check_pins(rootfs: Rootfs, installed: Mapping[str, str]) -> None:
    """Raise ValueError naming the package whose upstream version differs from its pin."""
    for pkg, pin in rootfs.pins.items():
        if pkg not in installed:
            raise ValueError(f"image {rootfs.name}: package {pkg} is not installed")
        got = upstream_version(installed[pkg])
        if got != pin and not got.startswith(pin + "."):
            raise ValueError(f"image {rootfs.name}: {pkg} is {got}, the recipe pins {pin}")


def mmdebstrap_command(rootfs: Rootfs, out_tar: Path, versions_file: Path) -> list[str]:
    cmd = [
        "mmdebstrap",
        "--quiet",
        "--variant=apt",
        "--mode=root",
        "--include=" + ",".join(rootfs.packages),
        '--aptopt=APT::Install-Recommends "false"',
        # Docs, man pages and translations are a third of the size and no node needs them.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
    ]
    for target, name in sorted(rootfs.files.items()):
        cmd.append(
            "--customize-hook="
            + shlex.join(["install", "-D", "-m", "755", str(HERE / name)])
            + f' "$1"{shlex.quote(target)}'
        )
    cmd.append(
        "--customize-hook="
        + shlex.join(["chroot"])
        + ' "$1" '
        + shlex.join(["dpkg-query", "-W", "-f=${Package} ${Version}\\n"])
        + " > "
        + shlex.quote(str(versions_file))
    )
    cmd += [SUITE, str(out_tar), SOURCES]
    return cmd


def _image_id(client, ref: str) -> str | None:
    try:
        return client.images.get(ref).id
    except Exception as exc:
        if type(exc).__name__ != "ImageNotFound":
            raise
        return None


def missing(client, images: list[Image]) -> list[Image]:
    """The images that are absent or were built from another recipe."""
    out = []
    for image in images:
        image_id = _image_id(client, image.ref)
        labels = (client.images.get(image_id).labels or {}) if image_id else {}
        if labels.get(RECIPE_LABEL) != image.recipe_hash():
            out.append(image)
    return out


# One build at a time on this machine: both clusters of `provision` (threads) and other labs'
# runs (processes) would otherwise build the same root filesystem side by side.
LOCK_FILE = Path(tempfile.gettempdir()) / "cdtasks-images.lock"


@contextmanager
def _build_lock(log: Callable[[str], None]):
    with open(LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another build of the images to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def slim_tar(src: Path, dst: Path, keep: tuple[str, ...]) -> None:
    """Copy the members of tarball `src` whose path matches a `keep` glob, with their parent
    directories (and the targets of kept hard links), to `dst`."""
    with tarfile.open(src) as tin:
        members = tin.getmembers()
        path = {id(m): m.name.removeprefix("./").rstrip("/") for m in members}
        wanted = {
            path[id(m)] for m in members if any(fnmatch.fnmatchcase(path[id(m)], g) for g in keep)
        }
        wanted |= {
            m.linkname.removeprefix("./") for m in members if m.islnk() and path[id(m)] in wanted
        }
        parents = {"/".join(p.split("/")[:i]) for p in wanted for i in range(1, p.count("/") + 1)}
        with tarfile.open(dst, "w") as tout:
            for m in members:
                if path[id(m)] in wanted or path[id(m)] in parents:
                    tout.addfile(m, tin.extractfile(m) if m.isreg() else None)


def build(
    client, images: list[Image], log: Callable[[str], None] = print, force: bool = False
) -> list[str]:
    """Build what is missing or stale (all with `force`); return the refs built. Waits for a
    build running elsewhere on this machine, then builds only what that one did not."""
    if not force and not missing(client, images):
        return []
    with _build_lock(log):
        return _build(client, images, log, force)


def mmdebstrap(
    rootfs: Rootfs, out_tar: Path, versions_file: Path, timeout: float = MMDEBSTRAP_TIMEOUT
) -> None:
    """The root filesystem as a tarball; ImageError when mmdebstrap fails or runs longer than
    `timeout` seconds (then it is killed with the apt and dpkg processes it started)."""
    try:
        proc = procs.run(mmdebstrap_command(rootfs, out_tar, versions_file), timeout)
    except FileNotFoundError:
        raise ImageError("mmdebstrap is not installed (apt-get install mmdebstrap)") from None
    except subprocess.TimeoutExpired:
        raise ImageError(
            f"mmdebstrap did not finish image {rootfs.name} within {timeout:g}s "
            f"(a package mirror that does not answer?)"
        ) from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise ImageError(f"mmdebstrap failed for image {rootfs.name}:\n{tail}")


def _build(client, images: list[Image], log: Callable[[str], None], force: bool) -> list[str]:
    stale = {i.rootfs.name for i in (images if force else missing(client, images))}
    built: list[str] = []
    # Every image of a root filesystem is imported from the same tarball, so they share one
    # layer: rebuilding one of them rebuilds its siblings too.
    for fs_name in sorted(stale):
        group = [i for i in IMAGES.values() if i.rootfs.name == fs_name]
        rootfs = group[0].rootfs
        with tempfile.TemporaryDirectory(prefix=f"cdtasks-{rootfs.name}-") as tmp:
            tar, versions_file = Path(tmp) / "rootfs.tar", Path(tmp) / "versions"
            log(f"building root filesystem {rootfs.name} ({', '.join(rootfs.packages)})")
            mmdebstrap(rootfs, tar, versions_file)
            installed = dict(
                line.split(" ", 1) for line in versions_file.read_text().splitlines() if " " in line
            )
            try:
                check_pins(rootfs, installed)
            except ValueError as exc:
                raise ImageError(str(exc)) from None
            pinned = json.dumps({p: installed[p] for p in sorted(rootfs.pins)})
            for image in group:
                log(f"importing {image.ref}")
                old = _image_id(client, image.ref)
                source = tar
                if image.keep:
                    source = Path(tmp) / f"{image.key}.tar"
                    slim_tar(tar, source, image.keep)
                changes = image.changes() + [
                    f"LABEL {RECIPE_LABEL}={image.recipe_hash()}",
                    f"LABEL {VERSIONS_LABEL}={json.dumps(pinned)}",
                ]
                client.api.import_image_from_file(
                    str(source), repository=image.repo, tag=image.version, changes=changes
                )
                built.append(image.ref)
                if old:  # the replaced build, now untagged: don't let rebuilds pile up
                    # Still used by a container: Docker keeps it, so do we.
                    with contextlib.suppress(Exception):
                        client.images.remove(old)
    return built


def save(source, refs: list[str]):
    """`docker save REF...` as a stream of chunks (the SDK saves one image per call)."""
    res = source.api._get(source.api._url("/images/get"), params={"names": refs}, stream=True)
    source.api._raise_for_status(res)
    return res.iter_content(1 << 20)


def distribute(source, targets: Mapping, refs: list[str], log: Callable[[str], None]) -> list[str]:
    """Copy images from the local engine into the nodes that lack them (`docker save | docker
    load`, streamed, nodes in parallel). Returns the nodes that received something."""

    ids = {r: source.images.get(r).id for r in refs}

    # Here, not at the top: the image recipes are read without the Docker SDK (which loads
    # paramiko, which loads Invoke), e.g. by an installed package's `import cdtasks.images`.
    from .. import gateway

    def one(item):
        node, client = item
        # By ID, not tag: a rebuilt image keeps its tag but must replace the node's copy.
        have = gateway.image_tags(client)
        need = [r for r in refs if (r, ids[r]) not in have]
        if not need:
            return None
        log(f"{node}: loading {', '.join(need)}")
        client.images.load(save(source, need))
        return node

    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        return [n for n in pool.map(one, targets.items()) if n]


def provide(source, targets: Mapping, refs: list[str], log: Callable[[str], None]) -> list[str]:
    """For the offline-built images among `refs`: build what is missing, then copy them into
    the nodes that lack them. Other references are left for the nodes to pull."""
    ours = [i for i in IMAGES.values() if i.ref in refs]
    if not ours:
        return []
    build(source, ours, log)
    return distribute(source, targets, [i.ref for i in ours], log)
