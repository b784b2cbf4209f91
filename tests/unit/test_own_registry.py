"""Your own registry's settings and names: what is refused (one line, the password never shown),
the image references and logins it gives, and the CA command run on real files."""

from __future__ import annotations

import subprocess

import pytest

from cdtasks import config, registry
from cdtasks.config import ConfigError

PASSWORD = "s3cret-Pa55word"
CA = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "test.env").write_text("")
    (tmp_path / "password").write_text(PASSWORD + "\n")
    (tmp_path / "ca.pem").write_text(CA)
    return tmp_path


def load(files, **keys):
    overrides = {
        "STATE_DIR": str(files / "state"),
        "REGISTRY_URL": "reg.example.org:5443/team",
        "REGISTRY_USER": "team",
        "REGISTRY_PASSWORD_FILE": str(files / "password"),
        "REGISTRY_CA_FILE": str(files / "ca.pem"),
        **keys,
    }
    return config.load("test", overrides, environ={}, env_dir=files)


def test_images_and_logins_name_your_registry(files):
    s = load(files)
    assert registry.external(s)
    assert registry.address(s) == "reg.example.org:5443/team"
    assert registry.server(s) == "reg.example.org:5443"
    assert registry.local_ref(s, "go-demo", "1.1", "sha256:ab") == (
        "reg.example.org:5443/team/go-demo:1.1@sha256:ab"
    )
    assert registry.repository(registry.local_ref(s, "go-demo", "1.1", "sha256:ab")) == (
        "reg.example.org:5443/team/go-demo"
    )
    # Logins are keyed by HOST:PORT, as docker-py resolves an image's registry.
    assert registry.logins(s) == {"reg.example.org:5443": ("team", PASSWORD)}
    assert PASSWORD in s.secrets and str(files / "password") not in s.secrets
    assert PASSWORD not in repr(s)


def test_without_registry_url_the_cluster_has_its_own(files):
    s = load(
        files, REGISTRY_URL="", REGISTRY_USER="", REGISTRY_PASSWORD_FILE="", REGISTRY_CA_FILE=""
    )
    assert not registry.external(s)
    assert registry.local_ref(s, "go-demo", "1.1") == "localhost:5000/go-demo:1.1"


@pytest.mark.parametrize(
    "keys, said",
    [
        (
            {"REGISTRY_URL": "https://reg.example.org:5443"},
            "REGISTRY_URL='https://reg.example.org:5443': has a scheme",
        ),
        ({"REGISTRY_URL": "reg.example.org"}, "is not host:port[/path]"),
        ({"REGISTRY_URL": "reg.example.org:5443/Team"}, "is not host:port[/path]"),
        ({"REGISTRY_URL": "reg.example.org:70000"}, "port outside"),
        ({"REGISTRY_URL": ""}, "REGISTRY_USER is set but REGISTRY_URL is empty"),
        ({"REGISTRY_USER": ""}, "REGISTRY_USER and REGISTRY_PASSWORD_FILE go together"),
        ({"REGISTRY_PASSWORD_FILE": "/nonexistent/password"}, "No such file or directory"),
        (
            {"REGISTRY_CA_FILE": "/nonexistent/ca.pem"},
            "REGISTRY_CA_FILE=/nonexistent/ca.pem: No such",
        ),
    ],
)
def test_bad_registry_settings_are_one_line_naming_the_key(files, keys, said):
    with pytest.raises(ConfigError) as exc:
        load(files, **keys)
    assert said in str(exc.value) and "\n" not in str(exc.value)


def test_credentials_in_the_url_are_refused_without_showing_them(files):
    with pytest.raises(ConfigError) as exc:
        load(files, REGISTRY_URL=f"team:{PASSWORD}@reg.example.org:5443")
    assert "REGISTRY_URL: holds credentials" in str(exc.value)
    assert PASSWORD not in str(exc.value)


def test_empty_password_file_and_a_ca_file_that_is_no_certificate(files):
    (files / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load(files, REGISTRY_PASSWORD_FILE=str(files / "empty"))
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        load(files, REGISTRY_CA_FILE=str(files / "password"))
    with pytest.raises(ConfigError, match="REGISTRY_PASSWORD_FILE=.*: Is a directory"):
        load(files, REGISTRY_PASSWORD_FILE=str(files))


def test_ca_command_writes_the_ca_once(files, monkeypatch):
    monkeypatch.setattr(registry, "CERTS_D", str(files / "certs.d"))
    command = registry.ca_command(load(files))

    def run() -> str:
        return subprocess.run(
            ["sh", "-c", command], check=True, capture_output=True, text=True
        ).stdout

    assert run().strip() == "changed"
    assert (files / "certs.d" / "reg.example.org:5443" / "ca.crt").read_text() == CA
    assert run() == ""  # the same CA: nothing written
    assert sorted(p.name for p in (files / "certs.d" / "reg.example.org:5443").iterdir()) == [
        "ca.crt"
    ]
