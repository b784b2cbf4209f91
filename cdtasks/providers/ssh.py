"""The SSH provider: servers you already have, listed in the env file (SSH_HOSTS).

Nothing is created: each host is checked (its host key against SSH_KNOWN_HOSTS, Docker installed
and recent enough, the registry's directory present), at most SSH_PARALLEL at once; the swarm,
labels and registry are then converged like on any provider. Docker is reached through SSH only
(cdtasks.tunnel), never an open TCP port. Checkouts are copied to the CD node for compose.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .. import engine, state, swarm
from ..config import Settings
from ..engine import Endpoint
from ..log import Log
from .base import Provider, ProviderError

MIN_DOCKER = (20, 10)  # Engine API 1.41
VERSION_CMD = "docker version --format '{{.Server.Version}}'"
# The source address of the default route: what `docker swarm init` would advertise.
ADDRESS_CMD = "ip -4 -o route get 1.1.1.1"


def parse_version(text: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", text.strip())
    if not m:
        raise ValueError(f"unexpected Docker version {text.strip()!r}")
    return int(m.group(1)), int(m.group(2))


def parse_route_source(text: str) -> str | None:
    m = re.search(r"\bsrc (\d+\.\d+\.\d+\.\d+)", text)
    return m.group(1) if m else None


class SshProvider(Provider):
    name = "ssh"

    def __init__(self, settings: Settings):
        self.s = settings
        self.hosts = {
            n: (user or settings.ssh.ssh_user, host, port)
            for n, user, host, port in settings.ssh.ssh_hosts
        }
        self.configured = dict(settings.ssh.node_addresses)
        self.keys = dict(settings.ssh.ssh_keys)
        self.cache = settings.cluster.state_dir / "ssh" / f"{settings.env}-addresses.json"

    @property
    def parallel(self) -> int:
        return self.s.ssh.ssh_parallel

    def where(self, node: str) -> str:
        user, host, port = self.hosts[node]
        return f"{user}@{host}:{port}"

    def endpoint(self, node: str, address: str = "") -> Endpoint:
        user, host, port = self.hosts[node]
        return Endpoint(
            node=node,
            docker_host=f"ssh://{user}@{host}:{port}",
            cert_path=None,
            address=address,
            ssh_host=host,
            ssh_port=port,
            ssh_user=user,
            ssh_key=self.keys.get(node, self.s.ssh.ssh_key),
            known_hosts=self.s.ssh.ssh_known_hosts,
        )

    def _each(self, fn, nodes: Sequence[str]) -> list:
        with ThreadPoolExecutor(max_workers=max(1, min(self.parallel, len(nodes)))) as pool:
            return list(pool.map(fn, nodes))

    # -- addresses -------------------------------------------------------------------------
    def _cached(self) -> dict[str, str]:
        try:
            return json.loads(self.cache.read_text())
        except (OSError, ValueError):
            return {}

    def _detect_address(self, node: str, conn) -> str:
        if node in self.configured:
            return self.configured[node]
        found = parse_route_source(conn.run(ADDRESS_CMD, hide=True, warn=True).stdout)
        if not found:
            raise ProviderError(
                f"host {node} ({self.where(node)}): cannot tell the address the "
                f"swarm should use (no default route): set NODE_ADDRESSES in {self.s.source}"
            )
        return found

    def endpoints(self, nodes: Sequence[str]) -> dict[str, Endpoint]:
        """Every listed host 'exists'; whether it answers shows when a client connects."""
        known = {**self._cached(), **self.configured}
        unknown = [n for n in nodes if n not in known]
        if unknown:  # never provisioned from here: ask the hosts
            known.update(zip(unknown, self._each(self._address_of, unknown), strict=True))
        return {n: self.endpoint(n, known[n]) for n in nodes}

    def _address_of(self, node: str) -> str:
        with engine.ssh(self.endpoint(node)) as conn:
            return self._detect_address(node, conn)

    # -- check -----------------------------------------------------------------------------
    def ensure(self, nodes: Sequence[str], log: Log) -> dict[str, Endpoint]:
        addresses = dict(zip(nodes, self._each(lambda n: self._check(n, log), nodes), strict=True))
        state.private_dir(self.cache.parent)
        self.cache.write_text(json.dumps({**self._cached(), **addresses}, indent=1))
        return {n: self.endpoint(n, a) for n, a in addresses.items()}

    def _check(self, node: str, log: Log) -> str:
        """Host key, Docker and its version, the registry's directory; returns the address."""
        where = f"host {node} ({self.where(node)})"
        with engine.ssh(self.endpoint(node)) as conn:
            proc = conn.run(VERSION_CMD, hide=True, warn=True)
            if not proc.ok:
                said = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                what = "Docker is not installed" if proc.exited == 127 else "Docker does not answer"
                raise ProviderError(f"{where}: {what}: {said[0]}")
            try:
                version = parse_version(proc.stdout)
            except ValueError as exc:
                raise ProviderError(f"{where}: {exc}") from None
            if version < MIN_DOCKER:
                raise ProviderError(
                    f"{where}: Docker {proc.stdout.strip()} is too old: "
                    f"{'.'.join(map(str, MIN_DOCKER))} or newer is needed"
                )
            # The registry bind-mounts it; on servers it should be storage both clusters share.
            conn.run(
                shlex.join(["mkdir", "-p", "-m", "700", str(self.s.registry.registry_dir)]),
                hide=True,
            )
            address = self._detect_address(node, conn)
        log(f"{node}: Docker {proc.stdout.strip()} at {self.where(node)}, swarm address {address}")
        return address

    # -- remove ----------------------------------------------------------------------------
    def remove(self, nodes: Sequence[str], log: Log, purge: bool = False) -> list[str]:
        """The hosts are not ours to delete: they leave the swarm (its services go with it);
        with purge, the registry's data is deleted too."""

        def one(node: str) -> list[str]:
            done: list[str] = []
            ep = self.endpoint(node)
            try:
                client = engine.client(ep)
            except engine.EngineError as exc:
                log(f"{node}: skipped, {exc}")
                return done
            if swarm.leave(node, client):
                done.append(f"{node} from the swarm")
            if purge:
                with engine.ssh(ep) as conn:
                    # Its contents: on servers the directory is usually a mount point.
                    conn.run(
                        shlex.join(
                            ["find", str(self.s.registry.registry_dir), "-mindepth", "1", "-delete"]
                        ),
                        hide=True,
                        warn=True,
                    )
                done.append(f"registry data {self.s.registry.registry_dir} on {node}")
            return done

        removed = [r for rs in self._each(one, nodes) for r in rs]
        if self.cache.exists():
            self.cache.unlink()
        for r in removed:
            log(f"removed {r}")
        return removed
