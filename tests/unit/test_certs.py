"""Key material of a lab: CA, server and client certificates, SSH keys (files in tmp_path only)."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cdtasks.providers.certs import ensure_ca, server_cert, ssh_keypair

NODE = "swarm-test-1"


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verifies(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Signature and issuer name check (cryptography >= 40)."""
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError):  # bad signature / issuer name mismatch
        return False
    return True


def eku(c: x509.Certificate) -> list:
    return list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def lab(tmp_path):
    ca_dir, node_dir = tmp_path / "certs", tmp_path / "machines" / NODE
    ensure_ca(ca_dir)
    server_cert(ca_dir, node_dir, [NODE, "localhost", "127.0.0.1"])
    return ca_dir, node_dir


# -- the CA and the client certificate ------------------------------------------------------------
def test_ensure_ca_writes_the_docker_machine_layout(lab):
    ca_dir, _ = lab
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "ca-key.pem",
        "ca.pem",
        "cert.pem",
        "key.pem",
    ]


def test_ca_is_a_self_signed_ca(lab):
    ca = cert(lab[0] / "ca.pem")
    assert ca.subject == ca.issuer
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert verifies(ca, ca)
    key = serialization.load_pem_private_key((lab[0] / "ca-key.pem").read_bytes(), None)
    assert key.public_key().public_numbers() == ca.public_key().public_numbers()


def test_client_cert_is_signed_by_the_ca_for_client_auth(lab):
    ca_dir, _ = lab
    ca, client = cert(ca_dir / "ca.pem"), cert(ca_dir / "cert.pem")
    assert verifies(client, ca)
    assert client.issuer == ca.subject
    assert eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key = serialization.load_pem_private_key((ca_dir / "key.pem").read_bytes(), None)
    assert key.public_key().public_numbers() == client.public_key().public_numbers()


def test_ensure_ca_twice_keeps_the_same_ca(tmp_path):
    ensure_ca(tmp_path)
    files = {
        n: (tmp_path / n).read_bytes() for n in ("ca.pem", "ca-key.pem", "cert.pem", "key.pem")
    }
    ensure_ca(tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in files} == files


def test_certificates_are_valid_now_and_for_years(lab):
    now = datetime.datetime.now(datetime.UTC)
    for path in (lab[0] / "ca.pem", lab[0] / "cert.pem", lab[1] / "server-cert.pem"):
        c = cert(path)
        assert c.not_valid_before_utc <= now < c.not_valid_after_utc
        assert c.not_valid_after_utc - now > datetime.timedelta(days=365)


# -- the server certificate -----------------------------------------------------------------------
def test_server_cert_verifies_against_the_ca(lab):
    ca_dir, node_dir = lab
    ca, server = cert(ca_dir / "ca.pem"), cert(node_dir / "server-cert.pem")
    assert verifies(server, ca)
    assert server.issuer == ca.subject
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == NODE
    # the node directory carries the CA it trusts, as DOCKER_CERT_PATH expects
    assert (node_dir / "ca.pem").read_bytes() == (ca_dir / "ca.pem").read_bytes()


def test_server_cert_does_not_verify_against_another_ca(lab, tmp_path):
    other = tmp_path / "other-ca"
    ensure_ca(other)
    assert not verifies(cert(lab[1] / "server-cert.pem"), cert(other / "ca.pem"))


def test_server_cert_names_and_usage(lab):
    server = cert(lab[1] / "server-cert.pem")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NODE, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_server_key_matches_and_is_ec(lab):
    _, node_dir = lab
    key = serialization.load_pem_private_key((node_dir / "server-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    server = cert(node_dir / "server-cert.pem")
    assert key.public_key().public_numbers() == server.public_key().public_numbers()


def test_each_server_cert_gets_its_own_key(lab, tmp_path):
    ca_dir, node_dir = lab
    other = tmp_path / "machines" / "swarm-test-2"
    server_cert(ca_dir, other, ["swarm-test-2", "localhost", "127.0.0.1"])
    assert (other / "server-key.pem").read_bytes() != (node_dir / "server-key.pem").read_bytes()
    assert (
        cert(other / "server-cert.pem").serial_number
        != cert(node_dir / "server-cert.pem").serial_number
    )


# -- file modes -----------------------------------------------------------------------------------
def test_private_keys_are_mode_0600_and_certificates_readable(lab):
    ca_dir, node_dir = lab
    for key in (ca_dir / "ca-key.pem", ca_dir / "key.pem", node_dir / "server-key.pem"):
        assert mode(key) == 0o600, key
    for pem in (ca_dir / "ca.pem", ca_dir / "cert.pem", node_dir / "server-cert.pem"):
        assert mode(pem) & 0o600 == 0o600  # the owner reads and rewrites it
        assert not mode(pem) & 0o022  # nobody else writes it


# -- SSH ------------------------------------------------------------------------------------------
def test_ssh_keypair(tmp_path):
    private = tmp_path / "ssh" / "id_ed25519"
    line = ssh_keypair(private)
    assert line.startswith("ssh-ed25519 ")
    assert mode(private) == 0o600
    assert (tmp_path / "ssh" / "id_ed25519.pub").read_text().strip() == line

    key = serialization.load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    assert line.split()[:2] == public.split()[:2]


def test_ssh_keypair_is_created_once(tmp_path):
    private = tmp_path / "id_ed25519"
    first = ssh_keypair(private)
    content = private.read_bytes()
    assert ssh_keypair(private) == first
    assert private.read_bytes() == content


# -- known defect (documented, not fixed here) ----------------------------------------------------
def test_ensure_ca_reissuing_a_lost_client_cert_keeps_the_ca(lab):
    ca_dir, node_dir = lab
    ca_before = (ca_dir / "ca.pem").read_bytes()
    (ca_dir / "cert.pem").unlink()
    ensure_ca(ca_dir)
    assert (ca_dir / "cert.pem").exists()
    assert (ca_dir / "ca.pem").read_bytes() == ca_before
    assert verifies(cert(node_dir / "server-cert.pem"), cert(ca_dir / "ca.pem"))
