"""The lab provider: each machine is a Docker-in-Docker container on the local engine.

All nodes of a lab share one user-defined bridge network (docker-machine's host-only network).
A node's Docker API is reachable from the host only through TLS on a 127.0.0.1 port, its sshd
only with the lab's key and with the host key the lab generated (written to the lab's
known_hosts). Everything created carries the label io.cdtasks.lab=<LAB_NAME>.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import engine, images, state
from ..config import Settings
from ..engine import Endpoint
from ..gateway import APIFailure, NotFound, translated
from ..images import seed
from ..log import Log
from . import certs
from .base import Provider, ProviderError, removed_with_registry

LAB_LABEL = "io.cdtasks.lab"
ENV_LABEL = "io.cdtasks.env"
NODE_LABEL = "io.cdtasks.node"
PORTS = {"ssh": 22, "api": 2376, "http": 80}
READY_TIMEOUT = 90
# Both clusters of a lab are provisioned at once and share the node image and the network.
_SHARED = threading.Lock()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LabProvider(Provider):
    name = "lab"
    shares_workspace = True

    def __init__(self, settings: Settings, host: engine.Client | None = None):
        self.s = settings
        self._host = host
        self.root = settings.cluster.state_dir / settings.cluster.lab_name
        self.known_hosts = self.root / "known_hosts"
        self.ssh_key = self.root / "id_ed25519"

    # -- names -----------------------------------------------------------------------------
    @property
    def host(self) -> engine.Client:
        if self._host is None:
            self._host = engine.host_client()
        return self._host

    def image_source(self) -> engine.Client:
        return self.host

    @property
    def network(self) -> str:
        return self.s.cluster.lab_name

    def container_name(self, node: str) -> str:
        return f"{self.s.cluster.lab_name}-{node}"

    def volume_name(self, node: str) -> str:
        return f"{self.s.cluster.lab_name}-{node}-docker"

    def machine_dir(self, node: str) -> Path:
        return self.root / "machines" / node

    def labels(self, node: str | None = None) -> dict[str, str]:
        out = {LAB_LABEL: self.s.cluster.lab_name, ENV_LABEL: self.s.env}
        if node:
            out[NODE_LABEL] = node
        return out

    def shared_dirs(self) -> dict[Path, Path]:
        """Host directory -> where every node mounts it: the registry's storage (shared by both
        clusters) and the workspace compose bind-mounts from, each at the same path."""
        return {d: d for d in (self.s.registry.registry_dir, self.s.delivery.workspace_dir)}

    def host_ports(self, node: str) -> dict[str, int | None]:
        """Fixed host ports when LAB_PORT_BASE is set: base + 10 * node index + slot."""
        if not self.s.cluster.lab_port_base:
            return {k: None for k in PORTS}
        i = self.s.cluster.nodes.index(node)
        return {k: self.s.cluster.lab_port_base + 10 * i + slot for slot, k in enumerate(PORTS)}

    # -- queries ---------------------------------------------------------------------------
    def _container(self, node: str):
        try:
            with translated():
                return self.host.containers.get(self.container_name(node))
        except NotFound:
            return None

    def _endpoint(self, node: str, container) -> Endpoint:
        """From a container inspected since it last started (its ports are published then)."""
        ports = container.attrs["NetworkSettings"]["Ports"] or {}

        def published(port: int) -> int:
            bindings = ports.get(f"{port}/tcp") or []
            if not bindings:
                raise ProviderError(
                    f"node {node}: port {port} is not published; "
                    f"remove it with `inv destroy` and provision again"
                )
            return int(bindings[0]["HostPort"])

        nets = container.attrs["NetworkSettings"]["Networks"]
        address = (nets.get(self.network) or {}).get("IPAddress", "")
        return Endpoint(
            node=node,
            docker_host=f"tcp://127.0.0.1:{published(2376)}",
            cert_path=self.machine_dir(node),
            ssh_host="127.0.0.1",
            ssh_port=published(22),
            ssh_user="root",
            ssh_key=self.ssh_key,
            known_hosts=self.known_hosts,
            address=address,
        )

    def http_port(self, node: str) -> int | None:
        """The 127.0.0.1 port on which the host reaches the node's port 80 (the proxy)."""
        c = self._container(node)
        bindings = (c.attrs["NetworkSettings"]["Ports"] or {}).get("80/tcp") if c else None
        return int(bindings[0]["HostPort"]) if bindings else None

    def endpoints(self, nodes: Sequence[str]) -> dict[str, Endpoint]:
        # One inspect per machine, side by side: every task starts here. The host's client
        # first, so that the threads share it.
        self.host  # noqa: B018
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            found = dict(zip(nodes, pool.map(self._container, nodes), strict=True))
        return {
            node: self._endpoint(node, c)
            for node, c in found.items()
            if c is not None and c.status == "running"
        }

    # -- create ----------------------------------------------------------------------------
    def ensure(self, nodes: Sequence[str], log: Log) -> dict[str, Endpoint]:
        missing = [n for n in nodes if self._container(n) is None]
        self._check_ports(missing)
        with _SHARED:
            # Only a machine to create needs the image (a re-provision makes no image calls).
            node_ref = self.node_image(log) if missing else ""
            self._ensure_network()
            state.private_dir(self.root)
            certs.ensure_ca(self.root / "certs")
            certs.ssh_keypair(self.ssh_key)
            for d in self.shared_dirs():  # keys: host side; the nodes mount them as root
                state.private_dir(d)
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            results = list(pool.map(lambda n: self._ensure_node(n, node_ref, log), nodes))
        with _SHARED:
            self._write_known_hosts()
        return dict(zip(nodes, results, strict=True))

    def node_image(self, log: Log) -> str:
        """What new machines start from: the node image with the registry image already in its
        engine (images/seed.py); built once per machine when missing."""
        image = images.IMAGES["node"]
        if images.missing(self.host, [image]):
            log(f"building the node image {image.ref} (once; cached afterwards)")
            images.build(self.host, [image], log)
        return seed.seeded(
            self.host,
            image,
            [images.IMAGES["registry"]],
            lambda binds: dind_host_config(self.host.api, binds),
            log,
        )

    def _check_ports(self, nodes: Sequence[str]) -> None:
        for node in nodes:
            for what, port in self.host_ports(node).items():
                if port is not None and not _port_free(port):
                    raise ProviderError(
                        f"host port 127.0.0.1:{port} ({node} {what}) is already "
                        f"taken; change LAB_PORT_BASE or free the port"
                    )

    def _ensure_network(self) -> None:
        if not self.host.networks.list(
            names=[self.network], filters={"label": f"{LAB_LABEL}={self.s.cluster.lab_name}"}
        ):
            self.host.networks.create(
                self.network, driver="bridge", labels={LAB_LABEL: self.s.cluster.lab_name}
            )

    def _prepare_machine(self, node: str) -> Path:
        """Certificates and keys for a new machine; what the node gets goes to machine/node/."""
        d = self.machine_dir(node)
        shutil.rmtree(d, ignore_errors=True)
        state.private_dir(d)
        ca = self.root / "certs"
        certs.client_files(ca, d)
        certs.server_cert(ca, d / "node" / "tls", [node, "localhost", "127.0.0.1"])
        certs.ssh_keypair(d / "node" / "ssh" / "host_key")
        (d / "node" / "ssh" / "authorized_keys").write_text(
            self.ssh_key.with_suffix(".pub").read_text()
        )
        return d / "node"

    def _ensure_node(self, node: str, image: str, log: Log) -> Endpoint:
        c = self._container(node)
        if c is not None and c.status != "running":
            log(f"{node}: starting the stopped machine")
            c.start()
        elif c is None:
            log(f"{node}: creating the machine")
            self._remove_volume(node)  # a fresh machine must not inherit a dead node's swarm state
            node_dir = self._prepare_machine(node)
            try:
                with translated():
                    c = self._create_container(node, image, node_dir)
            except APIFailure as exc:
                raise ProviderError(f"node {node}: cannot create its container: {exc}") from None
        if c.status != "running":  # started or created just now: its ports are known now
            c.reload()
        endpoint = self._endpoint(node, c)
        self._wait_ready(endpoint, c)
        return endpoint

    def _create_container(self, node: str, image: str, node_dir: Path):
        api = self.host.api
        ports = {p: ("127.0.0.1", self.host_ports(node)[k]) for k, p in PORTS.items()}
        host_config = dind_host_config(
            api,
            {
                self.volume_name(node): {"bind": "/var/lib/docker", "mode": "rw"},
                str(node_dir): {"bind": "/etc/cdtasks", "mode": "ro"},
                **{str(h): {"bind": str(g), "mode": "rw"} for h, g in self.shared_dirs().items()},
            },
            port_bindings=ports,
            network_mode=self.network,
        )
        self.host.volumes.create(self.volume_name(node), labels=self.labels(node))
        created = api.create_container(
            image,
            name=self.container_name(node),
            hostname=node,
            labels=self.labels(node),
            ports=list(PORTS.values()),
            host_config=host_config,
        )
        try:
            with translated():
                api.start(created["Id"])
        except APIFailure:
            api.remove_container(created["Id"], force=True)  # leave no half-made machine behind
            raise
        return self.host.containers.get(created["Id"])

    def _remove_volume(self, node: str) -> None:
        with contextlib.suppress(NotFound), translated():
            self.host.volumes.get(self.volume_name(node)).remove(force=True)

    def _wait_ready(self, endpoint: Endpoint, container) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                engine.client(endpoint).close()
                return
            except engine.EngineError as exc:
                container.reload()
                if container.status != "running":
                    tail = container.logs(tail=5).decode(errors="replace").strip()
                    raise ProviderError(
                        f"node {endpoint.node}: its machine stopped: {tail}"
                    ) from None
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"node {endpoint.node}: Docker did not answer within "
                        f"{READY_TIMEOUT}s: {exc}"
                    ) from None
                time.sleep(0.3)

    def _write_known_hosts(self) -> None:
        """known_hosts for every running node of this lab, from the host keys the lab made.
        A lab whose state directory is gone has no keys to trust: nothing is written (a
        destroy of what is left must not fail on it)."""
        if not self.root.is_dir():
            return
        lines = []
        for c in self.host.containers.list(
            filters={"label": f"{LAB_LABEL}={self.s.cluster.lab_name}"}
        ):
            node = c.labels.get(NODE_LABEL)
            pub = self.root / "machines" / node / "node" / "ssh" / "host_key.pub"
            ports = (c.attrs["NetworkSettings"]["Ports"] or {}).get("22/tcp")
            if pub.exists() and ports:
                key_type, key = pub.read_text().split()[:2]
                lines.append(f"[127.0.0.1]:{ports[0]['HostPort']} {key_type} {key}")
        # Through a new file renamed over the old one: the other cluster's SSH connections,
        # provisioned at the same time, read it meanwhile and must never see it half written.
        fresh = self.known_hosts.with_name(f"{self.known_hosts.name}.{threading.get_ident()}")
        fresh.write_text("\n".join(sorted(lines)) + "\n")
        fresh.replace(self.known_hosts)

    # -- remove ----------------------------------------------------------------------------
    def remove(self, nodes: Sequence[str], log: Log, purge: bool = False) -> list[str]:
        removed = []
        for node in nodes:
            c = self._container(node)
            if c is not None:
                c.remove(force=True, v=True)
                removed.append(f"container {c.name}")
            try:
                with translated():
                    self.host.volumes.get(self.volume_name(node)).remove(force=True)
                removed.append(f"volume {self.volume_name(node)}")
            except NotFound:
                pass
            if self.machine_dir(node).exists():
                shutil.rmtree(self.machine_dir(node))
                removed.append(f"keys and certificates of {node}")
        others = self.host.containers.list(
            all=True, filters={"label": f"{LAB_LABEL}={self.s.cluster.lab_name}"}
        )
        if not others:
            for net in self.host.networks.list(
                filters={"label": f"{LAB_LABEL}={self.s.cluster.lab_name}"}
            ):
                net.remove()
                removed.append(f"network {net.name}")
            if self.root.exists():
                shutil.rmtree(self.root)
                removed.append(f"lab directory {self.root}")
        else:
            self._write_known_hosts()
        return removed_with_registry(self.s, removed, log, purge)


def dind_host_config(api, binds: Mapping[str, dict], **more) -> dict:
    """A host config for a container running its own dockerd, with `binds` and `more` options."""
    host_config = api.create_host_config(
        # --privileged fails on kernels without CAP_SYS_RESOURCE: grant the rest instead.
        cap_add=["ALL"],
        cap_drop=["SYS_RESOURCE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        device_cgroup_rules=["a *:* rwm"],
        tmpfs={"/run": "", "/var/run": ""},
        binds={**binds, "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        **more,
    )
    # `--security-opt systempaths=unconfined`, which the SDK does not know: dockerd needs
    # /proc and /sys unmasked to run containers of its own.
    host_config.update(MaskedPaths=[], ReadonlyPaths=[])
    return host_config


def remove_labelled(host: engine.Client, lab_name: str) -> None:
    """Whatever is left of a lab on the engine, by its label: containers, volumes, networks
    (for clean-ups that must not depend on the lab's own state files)."""
    flt = {"label": f"{LAB_LABEL}={lab_name}"}
    for c in host.containers.list(all=True, filters=flt):
        c.remove(force=True, v=True)
    for v in host.volumes.list(filters=flt):
        v.remove(force=True)
    for n in host.networks.list(filters=flt):
        n.remove()
