"""The one place that builds Docker clients and SSH connections: the local engine, or a node's
engine over TLS or SSH, and a node's shell, from an `Endpoint` (how to reach a node; providers
make them)."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import docker
import paramiko
from docker.tls import TLSConfig
from invoke import Config, Context, Local
from urllib3.util import Timeout

from . import tunnel as tunnels
from .config import ENGINE_VAR

TIMEOUT = 120  # seconds an Engine API answer may take (a pull answers when it is done)
CONNECT_TIMEOUT = 10  # seconds to connect to a node's engine: an unreachable node costs this
SSH_KEEPALIVE = 15  # seconds between SSH keepalive messages on an idle link
SSH_COMMAND_TIMEOUT = 120  # seconds a command the tool runs on a node over SSH may take


class _NodeTimeout(Timeout):
    """A node client's timeout: connecting within CONNECT_TIMEOUT, each answer within TIMEOUT.
    docker-py adds a container's stop grace period to its timeout (`+ seconds`)."""

    def __add__(self, seconds: float) -> _NodeTimeout:
        return _NodeTimeout(connect=self.connect_timeout, read=(self.read_timeout or 0) + seconds)


NODE_TIMEOUT = _NodeTimeout(connect=CONNECT_TIMEOUT, read=TIMEOUT)
# Engine API 1.41 is Docker 20.10, the oldest engine the tool supports; fixing it saves a
# round trip per client and lets a client be built before its engine answers.
API_VERSION = "1.41"


Client: TypeAlias = docker.DockerClient  # a node's or the host's engine, for annotations elsewhere


class EngineError(RuntimeError):
    """No Docker engine answers where one was expected."""


@dataclass(frozen=True)
class Endpoint:
    """How to reach one node: its Docker API (TLS or SSH), a shell, and its address inside the
    cluster."""

    node: str
    docker_host: str  # tcp://HOST:PORT (TLS verified) or ssh://USER@HOST:PORT
    cert_path: Path | None  # directory with ca.pem, cert.pem, key.pem, as DOCKER_CERT_PATH
    address: str  # the address other nodes reach it at (Swarm's advertise address)
    ssh_host: str = ""
    ssh_port: int = 22
    ssh_user: str = "root"
    ssh_key: Path | None = None  # None: the user's agent and default keys
    known_hosts: Path | None = None  # the only host keys trusted (None: ~/.ssh/known_hosts)
    # A local command that runs a command on the node, when the provider owns SSH itself
    # (`docker-machine ssh NAME`); empty: Fabric connects to ssh_host with the fields above.
    shell: tuple[str, ...] = ()

    @property
    def via_ssh(self) -> bool:
        return self.docker_host.startswith("ssh://")

    def env(self) -> dict[str, str]:
        """The variables that point the docker CLI at this node (`docker-machine env`)."""
        out = {"DOCKER_HOST": self.docker_host}
        if self.cert_path:
            out.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(self.cert_path))
        return out


def _checked(client: docker.DockerClient, where: str) -> docker.DockerClient:
    try:
        client.ping()
    except Exception as exc:  # requests/urllib3/ssl errors all mean the same to the user
        raise EngineError(f"cannot reach Docker at {where}: {_reason(exc)}") from None
    return client


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


HOST_ENGINE_VAR = ENGINE_VAR  # CDTASKS_DOCKER_HOST; config knows it, to refuse typos of it
DEFAULT_SOCKET = Path("/var/run/docker.sock")


def host_client() -> docker.DockerClient:
    """The engine of this machine: labs run on it, offline images are built in it.
    `eval $(inv env NODE)` points DOCKER_HOST at a node, so that variable counts only when
    neither CDTASKS_DOCKER_HOST nor the default socket names an engine."""
    where = os.environ.get(HOST_ENGINE_VAR) or (
        f"unix://{DEFAULT_SOCKET}" if DEFAULT_SOCKET.exists() else ""
    )
    shown = where or os.environ.get("DOCKER_HOST", "the DOCKER_* variables")
    try:
        client = (
            docker.DockerClient(base_url=where, timeout=TIMEOUT)
            if where
            else docker.from_env(timeout=TIMEOUT)
        )
    except Exception as exc:
        raise EngineError(f"cannot reach Docker at {shown}: {_reason(exc)}") from None
    return _checked(client, shown)


def client(
    endpoint: Endpoint, check: bool = True, registries: Mapping[str, tuple[str, str]] | None = None
) -> docker.DockerClient:
    """A client for one node's engine: TLS verified against the node's CA, or through the
    node's SSH tunnel (host key verified). `registries` ({server: (user, password)}) are sent
    as X-Registry-Auth with every push, pull, service create and update naming an image of
    theirs (docker-py reads them from its auth configs), so Swarm gives them to the nodes
    that pull the service's image."""
    if endpoint.cert_path:
        d = endpoint.cert_path
        tls = TLSConfig(
            client_cert=(str(d / "cert.pem"), str(d / "key.pem")),
            ca_cert=str(d / "ca.pem"),
            verify=True,
        )
        c = docker.DockerClient(
            base_url=endpoint.docker_host, tls=tls, timeout=NODE_TIMEOUT, version=API_VERSION
        )
        # requests would let REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE replace the lab's CA.
        c.api.trust_env = False
    else:
        c = docker.DockerClient(
            base_url=docker_env(endpoint)["DOCKER_HOST"], timeout=NODE_TIMEOUT, version=API_VERSION
        )
    for server, (user, password) in (registries or {}).items():
        c.api._auth_configs.add_auth(
            server, {"username": user, "password": password, "serveraddress": server}
        )
    return _checked(c, f"{endpoint.docker_host} ({endpoint.node})") if check else c


def docker_env(endpoint: Endpoint) -> dict[str, str]:
    """DOCKER_* variables for a docker or compose subprocess of this process."""
    if not endpoint.via_ssh:
        return endpoint.env()
    tunnel = tunnels.open_for(endpoint, endpoint.node, lambda: _opened(endpoint))
    return {"DOCKER_HOST": tunnel.url}


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, host: str, port: int, key, known_hosts: Path):
        where = host if port == 22 else f"[{host}]:{port}"
        scan = shlex.join(["ssh-keyscan", *(["-p", str(port)] if port != 22 else []), host])
        super().__init__(
            f"host key of {where} is not in {known_hosts} ({key.get_name()} "
            f"{fingerprint(key)}); if that is the host's key, trust it with: "
            f"{scan} >> {shlex.quote(str(known_hosts))}"
        )


class HostKeyChanged(paramiko.BadHostKeyException):
    def __init__(self, exc: paramiko.BadHostKeyException, port: int, known_hosts: Path):
        super().__init__(exc.hostname, exc.key, exc.expected_key)
        where = exc.hostname if port == 22 else f"[{exc.hostname}]:{port}"
        self.message = (
            f"host key of {where} CHANGED: it offers {fingerprint(exc.key)}, "
            f"{known_hosts} expects {fingerprint(exc.expected_key)}; if the host "
            f"was rebuilt, forget the old key with: ssh-keygen -R "
            f"{shlex.quote(where)} -f {shlex.quote(str(known_hosts))}"
        )

    def __str__(self) -> str:
        return self.message


def fingerprint(key) -> str:
    """OpenSSH's form: SHA256:<base64 without padding>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _Strict(paramiko.MissingHostKeyPolicy):
    """RejectPolicy that says which key was offered and how to trust it."""

    def __init__(self, port: int, known_hosts: Path):
        self.port, self.known_hosts = port, known_hosts

    def missing_host_key(self, client, hostname, key):
        host = hostname[1:].rsplit("]:", 1)[0] if hostname.startswith("[") else hostname
        raise UnknownHostKey(host, self.port, key, self.known_hosts)


class _KillRecorded:
    """Invoke reads "timed out" as "its timer thread has ended"; on a busy machine the killed
    command is reaped first and a timeout surfaced as a plain exit -9. The runner records the
    kill itself, so a command past its timeout is always CommandTimedOut."""

    _killed = False

    def kill(self) -> None:
        self._killed = True
        super().kill()  # type: ignore[misc]

    @property
    def timed_out(self) -> bool:
        return self._killed or super().timed_out  # type: ignore[misc]


class _Local(_KillRecorded, Local):
    pass


@functools.cache
def _remote_runner():
    from fabric.runners import Remote

    return type("_Remote", (_KillRecorded, Remote), {})


class CommandShell(Context):
    """Commands on a node through a local command that owns the SSH session (`docker-machine
    ssh NAME`): the run/shell interface of a Fabric Connection, for one code path."""

    def __init__(self, argv: tuple[str, ...]):
        super().__init__(
            Config(
                overrides={
                    "run": {"in_stream": False},
                    "runners": {"local": _Local},
                    "timeouts": {"command": SSH_COMMAND_TIMEOUT},
                }
            )
        )
        self.argv = argv

    def run(self, command: str, **kwargs):
        return super().run(shlex.join([*self.argv, command]), **kwargs)

    def shell(self):
        return super().run(shlex.join(self.argv), pty=True, in_stream=sys.stdin, warn=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def ssh(endpoint: Endpoint):
    """A connection to a node that trusts only the host keys in the endpoint's known_hosts
    (opened, so an unknown or changed key is refused here, with its fingerprint)."""
    if endpoint.shell:
        return CommandShell(endpoint.shell)
    return _opened(endpoint)


def _opened(endpoint: Endpoint):
    from fabric import Config as FabricConfig
    from fabric import Connection

    known_hosts = endpoint.known_hosts or Path("~/.ssh/known_hosts").expanduser()
    key = (
        {"key_filename": str(endpoint.ssh_key), "look_for_keys": False, "allow_agent": False}
        if endpoint.ssh_key
        else {}
    )
    conn = Connection(
        endpoint.ssh_host,
        user=endpoint.ssh_user,
        port=endpoint.ssh_port,
        # Commands take no stdin: where stdin is closed or captured (CI, tests)
        # mirroring it would fail; `inv ssh` without --cmd uses shell() instead.
        # A command that hangs (a stuck mount, a dead engine) ends after
        # SSH_COMMAND_TIMEOUT (CommandTimedOut) unless its call says otherwise.
        config=FabricConfig(
            overrides={
                "load_ssh_configs": False,
                "run": {"in_stream": False},
                "runners": {"remote": _remote_runner()},
                "timeouts": {"command": SSH_COMMAND_TIMEOUT},
            }
        ),
        connect_timeout=10,
        connect_kwargs=key,
    )
    # Fabric auto-adds unknown host keys; a tool that provisions clusters must not.
    conn.client.set_missing_host_key_policy(_Strict(endpoint.ssh_port, known_hosts))
    if known_hosts.exists():
        conn.client.load_host_keys(str(known_hosts))
    where = f"{endpoint.ssh_user}@{endpoint.ssh_host}:{endpoint.ssh_port} ({endpoint.node})"
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise HostKeyChanged(exc, endpoint.ssh_port, known_hosts) from None
    except paramiko.AuthenticationException as exc:
        raise EngineError(
            f"SSH to {where} refused the key {endpoint.ssh_key or '(agent/default keys)'}: {exc}"
        ) from None
    except (OSError, EOFError, paramiko.ssh_exception.NoValidConnectionsError) as exc:
        raise EngineError(f"cannot reach SSH at {where}: {_reason(exc)}") from None
    # A link idle behind a NAT or firewall is kept open; a dead peer is noticed.
    conn.client.get_transport().set_keepalive(SSH_KEEPALIVE)
    return conn
