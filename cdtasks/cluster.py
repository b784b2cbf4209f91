"""A cluster as the tasks see it: provision, status, destroy, and reaching its nodes."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise

from . import engine, gateway, images, registry, services, swarm

# Settings whole: a cluster is its nodes, its provider (which
# reads the provider's own section) and the registry it runs
from .config import ConfigError, Settings
from .log import Log
from .providers import Endpoint, Provider, for_settings

REGISTRY_TIMEOUT = 120


@dataclass
class Cluster:
    """One environment's nodes, reached through its provider."""

    settings: Settings
    provider: Provider
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    _clients: dict = field(default_factory=dict, repr=False)
    _gateway: gateway.Gateway | None = field(default=None, repr=False)
    _logins: dict[str, tuple[str, str]] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, settings: Settings) -> Cluster:
        return cls(settings, for_settings(settings))

    def discover(self) -> Cluster:
        self.endpoints = self.provider.endpoints(self.settings.cluster.nodes)
        return self

    def client(self, node: str):
        if node not in self._clients:
            if node not in self.endpoints:
                raise engine.EngineError(
                    f"node {node} of {self.settings.env} does not exist or is "
                    f"not running: run `inv provision --env {self.settings.env}`"
                )
            if self._logins is None:  # read from STATE_DIR once, not once per node
                self._logins = registry.logins(self.settings)
            self._clients[node] = engine.client(self.endpoints[node], registries=self._logins)
        return self._clients[node]

    def clients(self) -> dict:
        """Every node's client, connected side by side (each one a handshake and a ping)."""
        nodes = self.settings.cluster.nodes
        workers = max(1, min(self.provider.parallel, len(nodes)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return dict(zip(nodes, pool.map(self.client, nodes), strict=True))

    def gateway(self, log: Log | None = None) -> gateway.Gateway:
        """The cluster's session with its managers (one per Cluster; `log` tells its failovers)."""
        if self._gateway is None:
            self._gateway = gateway.Gateway(
                self.settings.env,
                self.settings.cluster.managers,
                self.client,
                lambda n: self._clients.pop(n, None),
            )
        if log is not None:
            self._gateway.log = log
        return self._gateway

    def routing_in_use(self) -> str:
        """The mode provision chose, read from the registry service it made, or with your own
        registry from the stack's proxy `inv services` made (one API call instead of an SSH
        probe of every node); probed when there is neither yet."""
        if self.settings.cluster.routing == "auto":
            manager = self.gateway()
            stack, proxy = self.settings.stack.stack_name, self.settings.services.proxy_service
            scoped = proxy if proxy.startswith(f"{stack}_") else f"{stack}_{proxy}"
            for name in (registry.NAME, scoped):
                svc = manager.service(name)
                if svc is not None:
                    return "dnsrr" if svc.endpoint_mode == "dnsrr" else "mesh"
        return self.routing()[0]

    def routing(self) -> tuple[str, str]:
        """Probe every node's kernel for IPVS (over SSH) unless ROUTING forces a mode."""
        if self.settings.cluster.routing != "auto":
            return swarm.routing_mode(self.settings.cluster, self.settings.source, {})

        def probe(ep: Endpoint) -> bool:
            with engine.ssh(ep) as conn:
                return conn.run(swarm.IPVS_PROBE, hide=True, warn=True).ok

        workers = max(1, min(self.provider.parallel, len(self.endpoints)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = dict(zip(self.endpoints, pool.map(probe, self.endpoints.values()), strict=True))
        return swarm.routing_mode(self.settings.cluster, self.settings.source, found)


@dataclass(frozen=True)
class ProvisionResult:
    env: str
    actions: tuple[str, ...]
    routing: str
    routing_reason: str
    seconds: float


def provision(settings: Settings, log: Log) -> ProvisionResult:
    """Machines, swarm membership, labels and the registry service: create only what is missing."""
    started = time.monotonic()

    def done(phase: str) -> None:  # `bench/provision.py` reads these lines for its phase table
        log(f"{settings.env}: {phase} after {time.monotonic() - started:.1f}s")

    c = Cluster.of(settings)
    before = set(c.provider.endpoints(settings.cluster.nodes))
    c.endpoints = c.provider.ensure(settings.cluster.nodes, log)
    done("machines ready")
    actions = [f"created machine {n}" for n in settings.cluster.nodes if n not in before]
    clients = c.clients()
    addresses = {n: ep.address for n, ep in c.endpoints.items()}
    host = c.provider.image_source()

    def members() -> list[str]:
        out = [
            str(a) for a in swarm.converge(settings.cluster, settings.env, clients, addresses, log)
        ]
        done("swarm converged")
        return out

    def registry_image() -> list[str]:
        if registry.external(settings):
            return prepare_for_registry(c, settings, log)
        loaded = images.provide(host, clients, [settings.registry.registry_image], log)
        done("registry image on every node")
        return [f"loaded {settings.registry.registry_image} into {n}" for n in loaded]

    # Membership, the IPVS probe and copying the registry image into the nodes (or giving
    # them your own registry's CA and login) need only the machines, not each other.
    with ThreadPoolExecutor(max_workers=3) as pool:
        joined = pool.submit(members)
        routing = pool.submit(c.routing)
        loaded = (
            pool.submit(registry_image) if host is not None or registry.external(settings) else None
        )
        actions += joined.result()
        mode, reason = routing.result()
        actions += loaded.result() if loaded else []
    if registry.external(settings):
        done(f"every node logged in to {registry.server(settings)}")
        return ProvisionResult(
            settings.env, tuple(actions), mode, reason, time.monotonic() - started
        )
    manager = c.gateway(log)
    actions += registry.ensure_secret(manager, settings, log)
    spec = registry.spec(settings, mode)
    actions += services.converge(manager, [spec], log)
    services.wait_running(manager, [spec.name], REGISTRY_TIMEOUT, log)
    done("registry running")
    return ProvisionResult(settings.env, tuple(actions), mode, reason, time.monotonic() - started)


def prepare_for_registry(c: Cluster, settings: Settings, log: Log) -> list[str]:
    """Your own registry instead of a service: every node gets its CA and logs in to it."""
    log(
        f"{settings.env}: registry {registry.address(settings)} (REGISTRY_URL): no registry "
        f"service is created"
    )
    workers = max(1, min(c.provider.parallel, len(c.endpoints)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(
            pool.map(
                lambda n: registry.prepare_node(c.endpoints[n], c.client(n), settings), c.endpoints
            )
        )
    return [a for actions in found for a in actions]


def check_port_ranges(all_settings: Sequence[Settings]) -> None:
    """Fixed host ports (LAB_PORT_BASE) of clusters provisioned together must not overlap."""
    spans = sorted(
        (s.cluster.lab_port_base, s.cluster.lab_port_base + 10 * len(s.cluster.nodes), s.env)
        for s in all_settings
        if s.cluster.lab_port_base
    )
    for (lo1, hi1, e1), (lo2, _, e2) in pairwise(spans):
        if lo2 < hi1:
            raise ConfigError(
                f"LAB_PORT_BASE of {e1} ({lo1}) and {e2} ({lo2}) overlap: each "
                f"cluster needs {hi1 - lo1} ports from its base"
            )


def provision_many(all_settings: Sequence[Settings], log: Log) -> list[ProvisionResult]:
    """Several clusters at once: their machines and swarms are independent."""
    check_port_ranges(all_settings)
    with ThreadPoolExecutor(max_workers=len(all_settings) or 1) as pool:
        return list(pool.map(lambda s: provision(s, log), all_settings))


@dataclass(frozen=True)
class Status:
    env: str
    members: tuple[gateway.Node, ...]
    missing: tuple[str, ...]  # nodes without a running machine
    # (name, mode, running/wanted or completed/wanted for a job, image, last task errors)
    services: tuple[tuple[str, str, str, str, str], ...]


def status(settings: Settings) -> Status:
    c = Cluster.of(settings).discover()
    missing = tuple(n for n in settings.cluster.nodes if n not in c.endpoints)
    if not c.endpoints:
        return Status(settings.env, (), missing, ())
    manager = c.gateway()
    members = tuple(sorted(manager.nodes(), key=lambda m: m.hostname))
    rows = []
    for svc in manager.services():
        done, wanted = services.progress(manager, svc)
        # a service short of its replicas (or a job of its completions): its tasks' last errors
        errors = services.diagnose(manager, svc.name) if done < wanted else ""
        rows.append((svc.name, svc.mode, f"{done}/{wanted}", svc.image, errors))
    return Status(settings.env, members, missing, tuple(sorted(rows)))


def destroy(settings: Settings, log: Log, purge: bool = False) -> list[str]:
    return for_settings(settings).remove(settings.cluster.nodes, log, purge=purge)


def endpoint(settings: Settings, node: str) -> Endpoint:
    settings.check_node(node)
    found = for_settings(settings).endpoints([node])
    if node not in found:
        raise engine.EngineError(
            f"node {node} is not running: run `inv provision --env {settings.env}`"
        )
    return found[node]


def run_on(settings: Settings, node: str, command: str | None, pty: bool = False):
    """One command (or an interactive shell) on a node, over SSH with host key verification."""
    ep = endpoint(settings, node)
    with engine.ssh(ep) as conn:
        if command is None:
            return conn.shell()
        return conn.run(command, warn=True, pty=pty, timeout=None)  # the user's, watched by them


def env_lines(settings: Settings, node: str) -> list[str]:
    """What `docker-machine env NODE` prints, for `eval $(inv env NODE)`."""
    exports = for_settings(settings).exports(endpoint(settings, node))
    return [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
