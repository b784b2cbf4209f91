"""Key material a provider generates for its machines, as docker-machine does: a CA, a TLS server
certificate per node, one client certificate, an SSH client key and an SSH host key per node."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .. import state

VALID_DAYS = 3650


def _write(path: Path, data: bytes, private: bool = False) -> None:
    if private:
        state.write_private(path, data)
    else:
        state.private_dir(path.parent)
        path.write_bytes(data)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(subject: str, key, issuer_cert, issuer_key, *, ca=False, server_names=(), client=False):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server_names:
        sans = [
            x509.IPAddress(ipaddress.ip_address(n))
            if n.replace(".", "").isdigit()
            else x509.DNSName(n)
            for n in server_names
        ]
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def ensure_ca(directory: Path) -> None:
    """CA and client certificate, shared by every node of a lab. An existing CA is kept (the
    nodes' server certificates hang on it); a lost client certificate is issued anew."""
    if not (directory / "ca.pem").exists() or not (directory / "ca-key.pem").exists():
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _cert("cdtasks CA", root_key, None, None, ca=True)
        _write(directory / "ca-key.pem", _key_pem(root_key), private=True)
        _write(directory / "ca.pem", root.public_bytes(serialization.Encoding.PEM))
    if (directory / "cert.pem").exists() and (directory / "key.pem").exists():
        return
    ca_key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("cdtasks client", key, ca, ca_key, client=True)
    _write(directory / "key.pem", _key_pem(key), private=True)
    _write(directory / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))


def client_files(ca_dir: Path, out_dir: Path) -> None:
    """A DOCKER_CERT_PATH as docker-machine lays it out: ca.pem, cert.pem and key.pem of the
    lab's client (the key written private, not copied then tightened)."""
    for name in ("ca.pem", "cert.pem"):
        _write(out_dir / name, (ca_dir / name).read_bytes())
    _write(out_dir / "key.pem", (ca_dir / "key.pem").read_bytes(), private=True)


def server_cert(ca_dir: Path, out_dir: Path, names: list[str]) -> None:
    """Server certificate for one node, signed by the lab's CA, valid for `names`."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(names[0], key, ca, ca_key, server_names=names)
    _write(out_dir / "server-key.pem", _key_pem(key), private=True)
    _write(out_dir / "server-cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out_dir / "ca.pem", (ca_dir / "ca.pem").read_bytes())


def ssh_keypair(private_path: Path) -> str:
    """An ed25519 key pair in OpenSSH format (created once); returns the public key line."""
    pub_path = private_path.with_name(private_path.name + ".pub")
    if not private_path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        _write(
            private_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            private=True,
        )
        _write(
            pub_path,
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b"\n",
        )
    return pub_path.read_text().strip()
