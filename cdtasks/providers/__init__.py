"""Where machines come from. Tasks and library modules ask `for_settings` and use the interface."""

from __future__ import annotations

# Settings whole: providers read the cluster, their own section (machine
# or ssh), the registry and workspace directories they share into nodes, and the env name
from ..config import Settings
from ..engine import Endpoint
from .base import Provider, ProviderError


def for_settings(settings: Settings) -> Provider:
    if settings.cluster.provider == "lab":
        from .lab import LabProvider

        return LabProvider(settings)
    if settings.cluster.provider == "docker-machine":
        from .machine import MachineProvider

        return MachineProvider(settings)
    if settings.cluster.provider == "ssh":
        from .ssh import SshProvider

        return SshProvider(settings)
    raise ProviderError(f"{settings.source}: PROVIDER={settings.cluster.provider} is not available")


__all__ = ["Endpoint", "Provider", "ProviderError", "for_settings"]
