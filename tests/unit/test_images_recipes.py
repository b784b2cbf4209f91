"""Image recipes: Debian version parsing, pins, recipe hashes and the mmdebstrap argv (no engine)."""

from __future__ import annotations

import inspect
import io
import os
import shlex
import shutil
import stat
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from cdtasks import config, workspace
from cdtasks import images as mod
from cdtasks.config import pinned_image
from cdtasks.images import (
    IMAGES,
    NODE_FS,
    RUNTIME_FS,
    SOURCES,
    SUITE,
    Rootfs,
    check_pins,
    mmdebstrap_command,
    upstream_version,
)


# -- upstream_version -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "debian, upstream",
    [
        ("5:7.0.15-1~deb12u1", "7.0.15"),  # redis-server: epoch, Debian revision, stable update
        ("20.10.24+dfsg1-1+deb12u1+b6", "20.10.24"),  # docker.io: repack suffix, binNMU
        ("2.8.2+ds1-1", "2.8.2"),  # docker-registry: repack suffix
        ("3.11.2-1+b1", "3.11.2"),  # python3
        ("2.6.12-1+deb12u1", "2.6.12"),  # haproxy
        ("2.6.12-1+deb12u4", "2.6.12"),
        ("5:7.0.15-1~deb12u10", "7.0.15"),
        ("1.8.9-2", "1.8.9"),
        ("20230311", "20230311"),  # native package: no revision
    ],
)
def test_upstream_version(debian, upstream):
    assert upstream_version(debian) == upstream


# -- check_pins -----------------------------------------------------------------------------------
def test_check_pins_accepts_the_pinned_version_and_its_patch_releases():
    fs = Rootfs(
        "runtime",
        ("python3", "haproxy", "redis-server", "docker-registry"),
        {"python3": "3.11", "haproxy": "2.6", "redis-server": "7.0", "docker-registry": "2.8.2"},
    )
    check_pins(
        fs,
        {
            "python3": "3.11.2-1+b1",
            "haproxy": "2.6.12-1+deb12u1",
            "redis-server": "5:7.0.15-1~deb12u1",
            "docker-registry": "2.8.2+ds1-1",
            "unpinned": "9.9-1",
        },
    )


def test_check_pins_accepts_an_exact_pin():
    check_pins(NODE_FS, {"docker.io": "20.10.24+dfsg1-1+deb12u1+b6"})


@pytest.mark.parametrize(
    "installed, found",
    [
        ("3.12.1-1", "3.12.1"),
        ("3.1.4-1", "3.1.4"),
        ("3.110.0-1", "3.110.0"),  # shares the prefix "3.11" but is another version line
    ],
)
def test_check_pins_refuses_another_upstream_version(installed, found):
    fs = Rootfs("runtime", ("python3",), {"python3": "3.11"})
    with pytest.raises(ValueError) as exc:
        check_pins(fs, {"python3": installed})
    msg = str(exc.value)
    assert "runtime" in msg
    assert "python3" in msg
    assert f"is {found}" in msg
    assert "pins 3.11" in msg


def test_check_pins_refuses_a_missing_package():
    with pytest.raises(ValueError, match="docker.io is not installed"):
        check_pins(NODE_FS, {"iptables": "1.8.9-2"})


def test_the_project_pins_match_debian_bookworm_versions():
    """The versions bookworm ships for the pinned packages satisfy the project's pins."""
    bookworm = {
        "docker.io": "20.10.24+dfsg1-1+deb12u1+b6",
        "python3": "3.11.2-1+b1",
        "haproxy": "2.6.12-1+deb12u1",
        "redis-server": "5:7.0.15-1~deb12u1",
        "docker-registry": "2.8.2+ds1-1",
    }
    for fs in (NODE_FS, RUNTIME_FS):
        check_pins(fs, bookworm)


# -- recipe_hash ----------------------------------------------------------------------------------
@pytest.fixture
def here_copy(tmp_path, monkeypatch):
    """The module's directory copied to tmp_path, so tests can change the files it copies."""
    copy = tmp_path / "images"
    shutil.copytree(Path(mod.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(mod, "HERE", copy)
    return copy


def test_recipe_hash_is_stable(here_copy):
    for image in IMAGES.values():
        h = image.recipe_hash()
        assert h == image.recipe_hash()
        assert len(h) == 16 and int(h, 16) >= 0


def test_recipe_hash_is_the_same_for_the_copied_directory(here_copy, monkeypatch):
    copied = IMAGES["node"].recipe_hash()
    monkeypatch.setattr(mod, "HERE", Path(mod.__file__).parent)
    assert IMAGES["node"].recipe_hash() == copied  # content counts, not location


def test_recipe_hash_changes_with_the_packages(here_copy):
    image = IMAGES["node"]
    more = replace(image, rootfs=replace(image.rootfs, packages=image.rootfs.packages + ("curl",)))
    assert more.recipe_hash() != image.recipe_hash()


def test_recipe_hash_changes_with_the_pins(here_copy):
    image = IMAGES["registry"]
    repinned = replace(
        image, rootfs=replace(image.rootfs, pins={**image.rootfs.pins, "python3": "3.12"})
    )
    assert repinned.recipe_hash() != image.recipe_hash()


def test_recipe_hash_changes_with_a_copied_file(here_copy):
    before = {k: i.recipe_hash() for k, i in IMAGES.items()}
    entry = here_copy / "node-entrypoint.sh"
    entry.write_bytes(entry.read_bytes() + b"\n# changed\n")
    after = {k: i.recipe_hash() for k, i in IMAGES.items()}
    assert after["node"] != before["node"]
    # the runtime images do not copy that file
    for key in ("registry", "python", "haproxy", "redis"):
        assert after[key] == before[key]

    cfg = here_copy / "registry.yml"
    cfg.write_text(cfg.read_text().replace("level: warn", "level: info"))
    assert IMAGES["registry"].recipe_hash() != after["registry"]


def test_recipe_hash_changes_with_the_image_config(here_copy):
    image = IMAGES["redis"]
    assert replace(image, expose=(6380,)).recipe_hash() != image.recipe_hash()
    assert replace(image, env={"A": "1"}).recipe_hash() != image.recipe_hash()


def test_images_of_one_rootfs_hash_differently_by_their_config(here_copy):
    runtime = [i for i in IMAGES.values() if i.rootfs is RUNTIME_FS]
    assert len(runtime) >= 2
    assert len({i.recipe_hash() for i in runtime}) == len(runtime)


# -- mmdebstrap_command ---------------------------------------------------------------------------
def test_mmdebstrap_command_is_an_argv(tmp_path):
    out, versions = tmp_path / "rootfs.tar", tmp_path / "versions"
    cmd = mmdebstrap_command(RUNTIME_FS, out, versions)
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd)
    assert cmd[0] == "mmdebstrap"
    include = [a for a in cmd if a.startswith("--include=")]
    assert len(include) == 1
    assert include[0].removeprefix("--include=").split(",") == list(RUNTIME_FS.packages)
    # positional arguments last: suite, target, the sources file as the mirror
    assert cmd[-3:] == [SUITE, str(out), SOURCES]
    assert SOURCES.endswith(".sources")


def _hooks(cmd):
    return [a.removeprefix("--customize-hook=") for a in cmd if a.startswith("--customize-hook=")]


def test_mmdebstrap_command_copies_every_file_with_a_hook(tmp_path):
    cmd = mmdebstrap_command(NODE_FS, tmp_path / "r.tar", tmp_path / "v")
    hooks = _hooks(cmd)
    copies = [shlex.split(h) for h in hooks if h.startswith("install ")]
    assert len(copies) == len(NODE_FS.files)
    argv = copies[0]
    assert argv[:4] == ["install", "-D", "-m", "755"]
    assert argv[4] == str(mod.HERE / "node-entrypoint.sh")
    assert argv[5] == "$1/usr/local/bin/cdtasks-node"


def test_mmdebstrap_command_records_versions(tmp_path):
    versions = tmp_path / "dir with space" / "versions"
    hooks = _hooks(mmdebstrap_command(RUNTIME_FS, tmp_path / "r.tar", versions))
    record = [h for h in hooks if "dpkg-query" in h]
    assert len(record) == 1
    argv = shlex.split(record[0])
    assert argv[:3] == ["chroot", "$1", "dpkg-query"]
    assert argv[-2:] == [">", str(versions)]


def test_customize_hooks_run_as_mmdebstrap_runs_them(tmp_path):
    """mmdebstrap runs a hook with `sh -c HOOK exec ROOT`. With `chroot` faked (it prints its
    arguments), the hooks copy the files into ROOT and write the versions file."""
    if not shutil.which("sh") or not shutil.which("install"):
        pytest.skip("needs sh and install")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "chroot"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    versions = tmp_path / "versions"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    for hook in _hooks(mmdebstrap_command(RUNTIME_FS, tmp_path / "r.tar", versions)):
        subprocess.run(["sh", "-c", hook, "exec", str(root)], check=True, env=env)

    copied = root / "etc/docker/registry/config.yml"
    assert copied.read_bytes() == (mod.HERE / "registry.yml").read_bytes()
    assert stat.S_IMODE(copied.stat().st_mode) == 0o755
    assert versions.read_text().splitlines() == [
        str(root),
        "dpkg-query",
        "-W",
        "-f=${Package} ${Version}\\n",
    ]


# -- the images -----------------------------------------------------------------------------------
# Which package of its root filesystem each image stands for.
PROVIDES = {
    "node": "docker.io",
    "registry": "docker-registry",
    "python": "python3",
    "haproxy": "haproxy",
    "redis": "redis-server",
}


def test_every_image_has_a_pinned_version_tag():
    assert IMAGES
    for key, image in IMAGES.items():
        assert image.key == key
        assert image.version and image.version != "latest"
        assert image.ref == f"{image.repo}:{image.version}"
        assert pinned_image(image.ref) == image.ref


def test_every_image_is_tagged_with_the_version_its_rootfs_pins():
    assert set(PROVIDES) == set(IMAGES)
    for key, image in IMAGES.items():
        assert image.rootfs.pins[PROVIDES[key]] == image.version


def test_every_image_names_the_pinned_upstream_it_replaces():
    for image in IMAGES.values():
        name, _, tag = image.upstream.partition(":")
        assert name and tag and tag != "latest"
        assert tag == image.version or tag.startswith(image.version + "-")


def test_every_copied_file_exists_beside_the_module():
    for fs in (NODE_FS, RUNTIME_FS):
        for target, name in fs.files.items():
            assert target.startswith("/")
            assert (mod.HERE / name).is_file()


def test_default_registry_image_is_the_built_one():
    assert config.KEYS["REGISTRY_IMAGE"].default == IMAGES["registry"].ref


def test_changes_are_dockerfile_instructions():
    reg = IMAGES["registry"].changes()
    assert (
        reg[0]
        == 'ENTRYPOINT ["/usr/bin/docker-registry", "serve", "/etc/docker/registry/config.yml"]'
    )
    assert "EXPOSE 5000" in reg
    py = IMAGES["python"].changes()
    assert not any(c.startswith("ENTRYPOINT") for c in py)
    assert 'CMD ["python3"]' in py


# -- slim_tar -------------------------------------------------------------------------------------
def _tar_of(path: Path, entries: dict) -> Path:
    """A tarball with mmdebstrap's "./" prefix: name -> bytes (file), "dir", ("sym", target)
    or ("hard", target)."""
    with tarfile.open(path, "w") as tar:
        for name, what in entries.items():
            info = tarfile.TarInfo("./" + name)
            if what == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(what, tuple):
                info.type = tarfile.SYMTYPE if what[0] == "sym" else tarfile.LNKTYPE
                info.linkname = what[1] if what[0] == "sym" else "./" + what[1]
                tar.addfile(info)
            else:
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
    return path


def test_slim_tar_keeps_matches_their_parents_and_hard_link_targets(tmp_path):
    src = _tar_of(
        tmp_path / "full.tar",
        {
            "usr": "dir",
            "usr/bin": "dir",
            "usr/lib": "dir",
            "usr/lib/x86_64-linux-gnu": "dir",
            "usr/bin/app": b"binary",
            "usr/bin/python3": b"big",
            "usr/lib/x86_64-linux-gnu/libc.so.6": b"libc",
            "usr/lib/x86_64-linux-gnu/libz.so": b"z",
            "lib": ("sym", "usr/lib"),
            "etc": "dir",
            "etc/app.yml": b"cfg",
            "etc/alias": ("hard", "etc/app.yml"),
            "var": "dir",
            "var/cache": "dir",
        },
    )
    dst = tmp_path / "slim.tar"
    mod.slim_tar(src, dst, ("usr/bin/app", "usr/lib/*/libc.so.6", "lib", "etc/alias"))
    with tarfile.open(dst) as tar:
        kept = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        assert set(kept) == {
            "usr",
            "usr/bin",
            "usr/bin/app",
            "usr/lib",
            "usr/lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            "lib",
            "etc",
            "etc/app.yml",
            "etc/alias",
        }
        assert tar.extractfile(kept["usr/bin/app"]).read() == b"binary"
        assert kept["lib"].issym() and kept["lib"].linkname == "usr/lib"
        assert kept["etc/alias"].islnk()


def test_only_the_registry_image_is_slimmed_and_keep_counts_in_its_recipe(here_copy):
    assert [k for k, i in IMAGES.items() if i.keep] == ["registry"]
    image = IMAGES["registry"]
    assert (
        "usr/bin/docker-registry" in image.keep
        and image.entrypoint[0] == "/usr/bin/docker-registry"
    )
    assert replace(image, keep=image.keep + ("bin",)).recipe_hash() != image.recipe_hash()


def test_the_registry_image_keeps_what_the_workspace_carrier_runs():
    """workspace.py creates containers of REGISTRY_IMAGE with `true` and `rm -rf`."""
    source = inspect.getsource(workspace)
    assert '["true"]' in source and '["rm", "-rf"' in source
    assert {"usr/bin/true", "usr/bin/rm"} <= set(IMAGES["registry"].keep)
