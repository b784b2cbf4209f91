"""The services a cluster runs, from its env file: proxy, application and database, their overlay
networks and the proxy's configuration. Created once; afterwards releases change only the
application's image, so the drift check takes the running image as the wanted one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from docker.errors import APIError, NotFound

from . import images, registry, services
from .cluster import Cluster

# Settings whole where a Cluster is built, or the
# registry (references) and the cluster (CD node) are read beside the services
from .config import ServicesSettings, Settings
from .log import Log
from .services import ServiceSpec, with_routing

PROXY_NETWORK = "proxy"
HAPROXY_CFG = "/usr/local/etc/haproxy/haproxy.cfg"
STACK_LABEL = ("io.cdtasks.stack", "cdtasks")


def networks(s: Settings) -> tuple[str, str]:
    return PROXY_NETWORK, s.services.app_service


def proxy_config_name(s: Settings) -> str:
    """Swarm configs are immutable: a changed file gets a new name, and the proxy a new spec."""
    try:
        digest = hashlib.sha256(s.services.proxy_config.read_bytes()).hexdigest()[:10]
    except OSError as exc:
        raise services.ServiceError(
            f"PROXY_CONFIG {s.services.proxy_config}: {exc.strerror}"
        ) from None
    return f"{s.services.proxy_service}-cfg-{digest}"


def app_ref(s: Settings, version: str | None = None) -> str:
    return registry.local_ref(s, s.services.app_image, version or s.services.app_version)


def specs(s: Settings, routing: str, app_image: str | None = None) -> list[ServiceSpec]:
    """The three services, adapted to the cluster's routing (mesh, or dnsrr and host ports)."""
    placement = (s.services.constraint,) if s.services.constraint.strip() else ()
    proxy_net, app_net = networks(s)
    common: dict[str, Any] = dict(
        constraints=placement, labels=(STACK_LABEL,), stop_grace=s.services.stop_grace
    )
    db = ServiceSpec(
        name=s.services.db_service,
        image=s.services.db_image,
        replicas=1,
        reserve_mb=s.services.db_reserve_mb,
        networks=(app_net,),
        **common,
    )
    # start-first plus the image's HEALTHCHECK and a graceful stop on SIGTERM: a rolling
    # update never leaves the proxy without a healthy task (zero lost requests).
    app = ServiceSpec(
        name=s.services.app_service,
        image=app_image or app_ref(s),
        replicas=s.services.app_replicas,
        env=(f"DB={s.services.db_service}", f"PORT={s.services.app_port}"),
        reserve_mb=s.services.app_reserve_mb,
        networks=(app_net, proxy_net),
        update_delay=s.services.update_delay,
        update_order="start-first",
        **common,
    )
    ports: tuple[tuple[int, int, str], ...] = ((s.services.proxy_port, 80, "ingress"),)
    if s.services.proxy_admin_port:
        ports += ((s.services.proxy_admin_port, 8090, "ingress"),)
    proxy = ServiceSpec(
        name=s.services.proxy_service,
        image=s.services.proxy_image,
        replicas=s.services.proxy_replicas,
        env=(f"BACKEND_HOST={s.services.app_service}", f"BACKEND_PORT={s.services.app_port}"),
        reserve_mb=s.services.proxy_reserve_mb,
        ports=ports,
        networks=(proxy_net,),
        configs=((proxy_config_name(s), HAPROXY_CFG),),
        **common,
    )
    return [with_routing(spec, routing) for spec in (db, app, proxy)]


@dataclass(frozen=True)
class StackResult:
    env: str
    routing: str
    done: tuple[str, ...]  # what was created or updated
    drift: tuple[tuple[str, str, str, str], ...]  # (service, field, wanted, running)


def _ensure_networks_and_config(manager, s: Settings, log: Log) -> list[str]:
    done = []
    have = {n["Name"] for n in manager.api.networks()}
    for net in networks(s):
        if net not in have:
            log(f"creating overlay network {net}")
            manager.api.create_network(
                net, driver="overlay", attachable=True, labels=dict([STACK_LABEL])
            )
            done.append(f"created network {net}")
    name = proxy_config_name(s)
    if not manager.api.configs(filters={"name": name}):
        manager.api.create_config(
            name, s.services.proxy_config.read_bytes(), labels=dict([STACK_LABEL])
        )
        done.append(f"created config {name}")
    return done


def publish_first_version(cluster: Cluster, s: Settings, log: Log) -> list[str]:
    """Build APP_DIR on the CD node and push it as APP_VERSION, unless the registry has it."""
    cd = cluster.client(s.cluster.cd_node)
    ref = app_ref(s)
    try:
        cd.images.get_registry_data(ref)
        return []
    except (NotFound, APIError):
        pass
    if not (s.services.app_dir / "Dockerfile").exists():
        raise services.ServiceError(
            f"APP_DIR {s.services.app_dir} has no Dockerfile to build {ref} from"
        )
    log(f"building {ref} on {s.cluster.cd_node} from {s.services.app_dir}")
    try:
        cd.images.build(
            path=str(s.services.app_dir),
            tag=ref,
            buildargs={"BASE_IMAGE": s.services.base_image},
            rm=True,
            forcerm=True,
        )
    except Exception as exc:  # BuildError, APIError: both carry the engine's message
        raise services.ServiceError(
            f"building {ref} on {s.cluster.cd_node} failed: {exc}"
        ) from None
    log(f"pushing {ref}")
    for line in cd.images.push(ref, stream=True, decode=True):
        if "error" in line:
            raise services.ServiceError(f"pushing {ref} failed: {line['error']}")
    return [f"built and pushed {ref}"]


def lab_images(cluster: Cluster, s: Settings, log: Log) -> list[str]:
    """Put the offline-built images the services use onto the nodes that lack them."""
    host = cluster.provider.image_source()
    if host is None:
        return []
    refs = [s.services.db_image, s.services.proxy_image, s.services.base_image]
    return [f"loaded images into {n}" for n in images.provide(host, cluster.clients(), refs, log)]


def ensure(s: Settings, log: Log, *, check: bool = False, update: bool = False) -> StackResult:
    """`check`: only compare. Otherwise create what is missing, and with `update` also converge
    what differs; then wait until every replica runs."""
    cluster = Cluster.of(s).discover()
    manager = cluster.manager()
    routing, _ = cluster.routing()
    existing = {
        n: services.inspect(manager, n)
        for n in (s.services.db_service, s.services.app_service, s.services.proxy_service)
    }
    running_app = existing[s.services.app_service]
    app_image = (
        running_app["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] if running_app else None
    )
    wanted = specs(s, routing, app_image)
    if check:
        drift = tuple(
            (spec.name, field, _fmt(w), _fmt(h))
            for spec, d in services.plan(manager, wanted)
            for field, (w, h) in (d.items() if d else [("service", ("present", None))])
        )
        return StackResult(s.env, routing, (), drift)
    done = lab_images(cluster, s, log)
    done += _ensure_networks_and_config(manager, s, log)
    if running_app is None:
        done += publish_first_version(cluster, s, log)
    drift = tuple(
        (spec.name, field, _fmt(w), _fmt(h))
        for spec, d in services.plan(manager, wanted)
        if d and not update
        for field, (w, h) in d.items()
    )
    done += services.converge(manager, wanted, log, update=update)
    services.wait_running(manager, [w.name for w in wanted], s.services.services_timeout, log)
    return StackResult(s.env, routing, tuple(done), drift)


def _fmt(value) -> str:
    if value is None:
        return "(missing)"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def proxy_nodes(cluster: Cluster, app: ServicesSettings) -> list[str]:
    """Nodes that run a proxy task now (where HOST_IP can point without the routing mesh)."""
    manager = cluster.manager()
    names = {n["ID"]: n["Description"]["Hostname"] for n in manager.api.nodes()}
    _, _, tasks = services.running_tasks(manager, app.proxy_service)
    return sorted({names[t["NodeID"]] for t in tasks if t["Status"]["State"] == "running"})
