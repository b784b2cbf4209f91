"""The one place that builds Docker clients: the local engine, or a node's engine over TLS/SSH."""
from __future__ import annotations

import os

import docker
from docker.tls import TLSConfig

from .providers.base import Endpoint

TIMEOUT = 120
# Engine API 1.41 is Docker 20.10, the oldest engine the tool supports; fixing it saves a
# round trip per client and lets a client be built before its engine answers.
API_VERSION = "1.41"


class EngineError(RuntimeError):
    """No Docker engine answers where one was expected."""


def _checked(client: docker.DockerClient, where: str) -> docker.DockerClient:
    try:
        client.ping()
    except Exception as exc:  # requests/urllib3/ssl errors all mean the same to the user
        raise EngineError(f"cannot reach Docker at {where}: {_reason(exc)}") from None
    return client


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def host_client() -> docker.DockerClient:
    """The engine this tool runs against locally (DOCKER_HOST or the default socket)."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=TIMEOUT)
    except Exception as exc:
        raise EngineError(f"cannot reach Docker at {where}: {_reason(exc)}") from None
    return _checked(client, where)


def client(endpoint: Endpoint, check: bool = True) -> docker.DockerClient:
    """A client for one node's engine, verifying its TLS certificate against the lab's CA."""
    if endpoint.cert_path:
        d = endpoint.cert_path
        tls = TLSConfig(client_cert=(str(d / "cert.pem"), str(d / "key.pem")),
                        ca_cert=str(d / "ca.pem"), verify=True)
        c = docker.DockerClient(base_url=endpoint.docker_host, tls=tls, timeout=TIMEOUT,
                                version=API_VERSION)
        # requests would let REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE replace the lab's CA.
        c.api.trust_env = False
    else:
        c = docker.DockerClient(base_url=endpoint.docker_host, timeout=TIMEOUT,
                                version=API_VERSION, use_ssh_client=True)
    return _checked(c, f"{endpoint.docker_host} ({endpoint.node})") if check else c


def ssh(endpoint: Endpoint):
    """A Fabric connection to a node that trusts only the host keys in the node's known_hosts."""
    import paramiko
    from fabric import Config, Connection

    conn = Connection(endpoint.ssh_host, user=endpoint.ssh_user, port=endpoint.ssh_port,
                      # Commands take no stdin: where stdin is closed or captured (CI, tests)
                      # mirroring it would fail; `inv ssh` without --cmd uses shell() instead.
                      config=Config(overrides={"load_ssh_configs": False,
                                               "run": {"in_stream": False}}),
                      connect_timeout=10,
                      connect_kwargs={"key_filename": str(endpoint.ssh_key),
                                      "look_for_keys": False, "allow_agent": False})
    # Fabric auto-adds unknown host keys; a tool that provisions clusters must not.
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client.load_host_keys(str(endpoint.known_hosts))
    return conn
