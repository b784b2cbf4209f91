"""What every provider offers: machines for named nodes, and how to reach each one (an
`engine.Endpoint`)."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence

from .. import engine
from ..engine import Endpoint
from ..log import Log


class ProviderError(RuntimeError):
    """A machine could not be created, found or removed; the message names it."""


class Provider(ABC):
    """Creates, finds and removes the machines of one environment's nodes."""

    name = "base"

    @abstractmethod
    def ensure(self, nodes: Sequence[str], log: Log) -> dict[str, Endpoint]:
        """Make every node exist and answer; create only what is missing. Idempotent."""

    @abstractmethod
    def endpoints(self, nodes: Sequence[str]) -> dict[str, Endpoint]:
        """Endpoints of the nodes that exist now (missing ones are left out)."""

    @property
    def shares_workspace(self) -> bool:
        """True when every node sees the host's WORKSPACE_DIR at the same path (a mount);
        otherwise each checkout is copied to the CD node before compose bind-mounts from it."""
        return False

    @property
    def parallel(self) -> int:
        """Nodes worked on at once (SSH connections, image copies)."""
        return 16

    def image_source(self):
        """The engine whose offline-built images are copied into the nodes: the local one when
        it answers (None: the nodes pull what they need themselves)."""
        try:
            return engine.host_client()
        except engine.EngineError:
            return None

    def exports(self, ep: Endpoint) -> dict[str, str]:
        """What `eval $(inv env NODE)` sets: the variables that point the docker CLI at it."""
        return ep.env()

    @abstractmethod
    def remove(self, nodes: Sequence[str], log: Log, purge: bool = False) -> list[str]:
        """Remove the nodes' machines and what was made for them; return what was removed."""


def removed_with_registry(settings, removed: list[str], log: Log, purge: bool) -> list[str]:
    """The end of `remove` where the registry's data lives on this machine: delete it only
    when purging, then say what went."""
    if purge and settings.registry.registry_dir.exists():
        shutil.rmtree(settings.registry.registry_dir)
        removed.append(f"registry data {settings.registry.registry_dir}")
    for r in removed:
        log(f"removed {r}")
    return removed
