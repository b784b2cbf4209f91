"""The registry's credentials on real files: made once, private, agreed on by concurrent runs."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import bcrypt
import pytest

from cdtasks import config, registry, state


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def settings(tmp_path):
    return config.load("test", {"STATE_DIR": str(tmp_path / "state")}, environ={})


def test_credentials_are_made_once_private_and_hashed(settings):
    creds = registry.credentials(settings)
    d = registry.auth_dir(settings)
    assert mode(d) == mode(settings.cluster.state_dir) == 0o700
    assert mode(d / "password") == mode(d / "htpasswd") == 0o600
    assert (d / "password").read_text().strip() == creds.password and len(creds.password) >= 40
    user, _, hashed = creds.htpasswd.strip().partition(b":")
    assert user.decode() == creds.username == registry.USER
    assert bcrypt.checkpw(creds.password.encode(), hashed)
    assert creds.password not in repr(creds)
    again = registry.credentials(settings)
    assert (again.password, again.htpasswd, again.secret_name) == (
        creds.password,
        creds.htpasswd,
        creds.secret_name,
    )
    assert registry.logins(settings) == {"localhost:5000": (registry.USER, creds.password)}


def test_concurrent_first_uses_agree(settings):
    found = []
    threads = [
        threading.Thread(target=lambda: found.append(registry.credentials(settings)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({(c.password, c.htpasswd) for c in found}) == 1


def test_a_password_replaced_by_hand_gets_a_new_htpasswd(settings):
    first = registry.credentials(settings)
    state.write_private(registry.auth_dir(settings) / "password", b"chosen-by-hand\n")
    second = registry.credentials(settings)
    assert second.password == "chosen-by-hand"
    assert bcrypt.checkpw(b"chosen-by-hand", second.htpasswd.strip().partition(b":")[2])
    assert second.secret_name != first.secret_name  # the registry's spec changes with it
