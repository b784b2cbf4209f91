"""What every provider offers: machines for named nodes, and how to reach each one."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

Log = Callable[[str], None]


class ProviderError(RuntimeError):
    """A machine could not be created, found or removed; the message names it."""


@dataclass(frozen=True)
class Endpoint:
    """How to reach one node: its Docker API (TLS), SSH, and its address inside the cluster."""

    node: str
    docker_host: str  # tcp://HOST:PORT (TLS verified) or ssh://USER@HOST:PORT
    cert_path: Path | None  # directory with ca.pem, cert.pem, key.pem, as DOCKER_CERT_PATH
    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_key: Path
    known_hosts: Path
    address: str  # the address other nodes reach it at (Swarm's advertise address)

    def env(self) -> dict[str, str]:
        """The variables `docker-machine env` would print for this node."""
        out = {"DOCKER_HOST": self.docker_host}
        if self.cert_path:
            out.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(self.cert_path))
        return out


class Provider(ABC):
    """Creates, finds and removes the machines of one environment's nodes."""

    name = "base"

    @abstractmethod
    def ensure(self, nodes: Sequence[str], log: Log) -> dict[str, Endpoint]:
        """Make every node exist and answer; create only what is missing. Idempotent."""

    @abstractmethod
    def endpoints(self, nodes: Sequence[str]) -> dict[str, Endpoint]:
        """Endpoints of the nodes that exist now (missing ones are left out)."""

    def image_source(self):
        """The engine whose offline-built images are copied into the nodes (None: the nodes
        pull what they need themselves)."""
        return None

    @abstractmethod
    def remove(self, nodes: Sequence[str], log: Log, purge: bool = False) -> list[str]:
        """Remove the nodes' machines and what was made for them; return what was removed."""
