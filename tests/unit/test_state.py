"""Private state on real files: directory and file modes (stat)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cdtasks import config, state
from cdtasks.providers import certs
from cdtasks.providers.lab import LabProvider


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def loose_umask():
    """The most permissive umask a user may have: modes must not depend on it."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_private_dir_makes_every_new_directory_0700(tmp_path, loose_umask):
    outer = tmp_path / "outer"
    outer.mkdir(mode=0o755)
    os.chmod(outer, 0o755)
    deep = outer / "state" / "lab" / "machines"
    assert state.private_dir(deep) == deep
    for d in (outer / "state", outer / "state" / "lab", deep):
        assert mode(d) == 0o700, d
    assert mode(outer) == 0o755  # not the tool's to change
    assert state.private_dir(deep) == deep  # again: nothing to do, no error


def test_private_dir_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(OSError):
        state.private_dir(tmp_path / "taken" / "sub")


def test_write_private_is_0600_from_the_first_byte(tmp_path, loose_umask):
    key = tmp_path / "new" / "key.pem"
    state.write_private(key, b"secret")
    assert (mode(key), mode(key.parent), key.read_bytes()) == (0o600, 0o700, b"secret")
    # An existing readable file is tightened before anything is written into it.
    old = tmp_path / "old.pem"
    old.write_bytes(b"a much longer previous content")
    old.chmod(0o644)
    state.write_private(old, b"short")
    assert (mode(old), old.read_bytes()) == (0o600, b"short")


def test_write_private_does_not_follow_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "key.pem").symlink_to(target)
    with pytest.raises(OSError):
        state.write_private(tmp_path / "key.pem", b"secret")
    assert target.read_text() == "keep"


def test_create_private_keeps_the_first_file(tmp_path, loose_umask):
    f = tmp_path / "d" / "password"
    assert state.create_private(f, b"first") is True
    assert state.create_private(f, b"second") is False
    assert (f.read_bytes(), mode(f), mode(f.parent)) == (b"first", 0o600, 0o700)
    assert sorted(p.name for p in f.parent.iterdir()) == ["password"]  # no temp file left


def test_client_files_write_the_key_private(tmp_path, loose_umask):
    ca = tmp_path / "certs"
    certs.ensure_ca(ca)
    out = tmp_path / "machines" / "swarm-test-1"
    certs.client_files(ca, out)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        assert (out / name).read_bytes() == (ca / name).read_bytes()
    assert mode(out / "key.pem") == 0o600
    assert mode(out) == mode(out.parent) == mode(ca) == 0o700


def test_lab_node_files_are_private(tmp_path, loose_umask):
    """What the lab writes for a new machine, without an engine: keys, certificates, dirs."""
    s = config.load("test", {"STATE_DIR": str(tmp_path / "state")}, environ={})
    lab = LabProvider(s, host=object())
    root = tmp_path / "state" / s.cluster.lab_name
    certs.ensure_ca(root / "certs")
    certs.ssh_keypair(lab.ssh_key)
    node_dir = lab._prepare_machine("swarm-test-1")
    machine = lab.machine_dir("swarm-test-1")
    dirs = [p for p in (tmp_path / "state").rglob("*") if p.is_dir()]
    assert dirs and all(mode(d) == 0o700 for d in dirs), {str(d): oct(mode(d)) for d in dirs}
    for key in (
        machine / "key.pem",
        node_dir / "tls" / "server-key.pem",
        node_dir / "ssh" / "host_key",
        lab.ssh_key,
        root / "certs" / "ca-key.pem",
    ):
        assert mode(key) == 0o600, key
