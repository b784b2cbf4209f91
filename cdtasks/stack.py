"""The services a cluster runs, from its env file: proxy, application and database, their overlay
networks and the proxy's configuration. Created once; afterwards releases change only the
application's image, so the drift check takes the running image as the wanted one."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import gateway, images, registry, services, stackfile, stackplan
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


class Drift(NamedTuple):
    """A difference between what the settings want and what runs (the `--json` fields too)."""

    service: str
    field: str
    wanted: str
    running: str


@dataclass(frozen=True)
class StackResult:
    env: str
    routing: str
    done: tuple[str, ...]  # what was created or updated
    drift: tuple[Drift, ...]


def _ensure_networks_and_config(manager, s: Settings, log: Log) -> list[str]:
    done = []
    have = manager.networks()
    for net in networks(s):
        if net not in have:
            log(f"creating overlay network {net}")
            manager.create_network(net, labels=dict([STACK_LABEL]))
            done.append(f"created network {net}")
    name = proxy_config_name(s)
    if not manager.configs(name=name):
        manager.create_config(
            name, s.services.proxy_config.read_bytes(), labels=dict([STACK_LABEL]), retry=False
        )
        done.append(f"created config {name}")
    return done


def publish_first_version(cluster: Cluster, s: Settings, log: Log) -> list[str]:
    """Build APP_DIR on the CD node and push it as APP_VERSION, unless the registry has it."""
    cd = cluster.client(s.cluster.cd_node)
    ref = app_ref(s)
    try:
        gateway.registry_digest(cd, ref)
        return []
    except gateway.APIFailure:
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
    what differs; then wait until every replica runs. With STACK_FILE, that file's stack."""
    if s.stack.stack_file is not None:
        return ensure_file(s, log, check=check, update=update)
    cluster = Cluster.of(s).discover()
    manager = cluster.gateway(log)
    routing, _ = cluster.routing()
    running_app = manager.service(s.services.app_service)
    app_image = running_app.image if running_app else None
    wanted = specs(s, routing, app_image)
    if check:
        return StackResult(s.env, routing, (), _spec_drift(services.plan(manager, wanted), True))
    done = lab_images(cluster, s, log)
    done += _ensure_networks_and_config(manager, s, log)
    if running_app is None:
        done += publish_first_version(cluster, s, log)
    drift = () if update else _spec_drift(services.plan(manager, wanted), False)
    done += services.converge(manager, wanted, log, update=update)
    services.wait_running(manager, [w.name for w in wanted], s.services.services_timeout, log)
    return StackResult(s.env, routing, tuple(done), drift)


def _spec_drift(
    plan: list[tuple[ServiceSpec, dict[str, tuple]]], missing: bool
) -> tuple[Drift, ...]:
    """The plan's differences; a missing service (no differences listed) only with `missing`
    (otherwise it is created, not drift)."""
    return tuple(
        Drift(spec.name, field, _fmt(w), _fmt(h))
        for spec, d in plan
        if d or missing
        for field, (w, h) in (d.items() if d else [("service", ("present", None))])
    )


def _fmt(value) -> str:
    if value is None:
        return "(missing)"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def proxy_nodes(cluster: Cluster, app: ServicesSettings) -> list[str]:
    """Nodes that run a proxy task now (where HOST_IP can point without the routing mesh);
    with STACK_FILE, PROXY_SERVICE is one of the file's services."""
    manager = cluster.gateway()
    names = services.hostnames(manager)
    proxy = service_name(cluster.settings, app.proxy_service)
    _, _, tasks = services.running_tasks(manager, proxy)
    return sorted({names[t.node_id] for t in tasks if t.state == "running"})


# -- a stack file (STACK_FILE) ----------------------------------------------------------------
def read_file(s: Settings, environ: Mapping[str, str] | None = None) -> stackfile.Stack:
    """The env file's stack, interpolated from the process environment and, over it, the env
    file's STACK_VARIABLES (one file, a value per cluster)."""
    assert s.stack.stack_file is not None
    variables = {**(os.environ if environ is None else environ), **dict(s.stack.stack_variables)}
    return stackfile.read(s.stack.stack_file, s.stack.stack_name, variables)


def _actual(manager: gateway.Gateway, name: str, pool: ThreadPoolExecutor) -> stackplan.Actual:
    """What runs, its five lists read side by side."""
    specs = pool.submit(manager.service_specs, {stackplan.NAMESPACE: name})
    networks = pool.submit(manager.networks)
    configs = pool.submit(manager.configs)
    secrets = pool.submit(manager.secret_list)
    uses = pool.submit(_uses, manager)
    return stackplan.Actual(
        services=specs.result(),
        networks=networks.result(),
        configs={c.name: (c.id, dict(c.labels)) for c in configs.result()},
        secrets={c.name: (c.id, dict(c.labels)) for c in secrets.result()},
        uses=uses.result(),
    )


def _uses(manager: gateway.Gateway) -> dict[str, tuple[frozenset, frozenset]]:
    """Every service's configs and secrets, of its spec and of its previous spec."""
    return {
        svc.name: (
            frozenset(
                [("config", n) for _, n, _ in svc.configs]
                + [("secret", n) for _, n, _ in svc.secrets]
            ),
            frozenset(
                [("config", n) for n in svc.previous_configs]
                + [("secret", n) for n in svc.previous_secrets]
            ),
        )
        for svc in manager.services()
    }


def _calls(manager: gateway.Gateway) -> stackplan.Calls:
    return stackplan.Calls(
        create_network=lambda n, labels, **kw: manager.create_network(
            n, labels, scope="swarm", **kw
        ),
        # not retried: a create whose answer was lost would then fail on its own name
        create_config=lambda n, data, labels: manager.create_config(n, data, labels, retry=False),
        create_secret=manager.create_secret,
        remove_config=manager.remove_config,
        remove_secret=manager.remove_secret,
        in_use=lambda: {u for now, before in _uses(manager).values() for u in now | before},
        create_service=lambda spec, ids: manager.create_service(**gateway.spec_request(spec, ids)),
        update_service=lambda name, spec, ids: manager.update_service(
            name, **gateway.spec_request(spec, ids)
        ),
    )


def _check_images(
    cluster: Cluster, manager: gateway.Gateway, stack: stackfile.Stack, log: Log
) -> list[str]:
    """The tool's offline images onto the nodes; any other image must be in the registry, or
    be one the project builds (the delivery compose file), which is built and pushed now."""
    offline = {i.ref for i in images.IMAGES.values()}
    others = sorted({svc.image for svc in stack.services} - offline)
    # Each lookup is a round trip from the manager to the registry: one per image, side by side.
    with ThreadPoolExecutor(max_workers=max(1, len(others))) as pool:
        found = dict(
            zip(others, pool.map(lambda ref: _in_registry(manager, ref), others), strict=True)
        )
    missing: dict[str, list[str]] = {}
    for svc in stack.services:
        if svc.image in found and not found[svc.image]:
            missing.setdefault(svc.image, []).append(svc.name)
    done = []
    if missing:
        # delivery imports this module (a release's services are the stack's): imported here
        from . import delivery

        done += delivery.publish_missing(cluster.settings, cluster, missing, str(stack.path), log)
    host = cluster.provider.image_source()
    if host is None:
        return done
    refs = sorted({svc.image for svc in stack.services} & offline)
    return done + [
        f"loaded images into {n}" for n in images.provide(host, cluster.clients(), refs, log)
    ]


def _in_registry(manager: gateway.Gateway, ref: str) -> bool:
    try:
        manager.registry_digest(ref)
    except gateway.APIFailure:
        return False
    return True


def _routing_note(p: stackplan.Plan) -> str:
    return (
        f"no IPVS on these nodes: {', '.join(p.adapted)} use DNS round robin and host-mode "
        f"ports instead of a VIP and the routing mesh"
    )


@dataclass(frozen=True)
class FilePlan:
    """A stack file's plan and what it was computed from."""

    settings: Settings
    stack: stackfile.Stack
    plan: stackplan.Plan
    cluster: Cluster
    manager: Any
    actual: stackplan.Actual


def plan_file(s: Settings, log: Log) -> FilePlan:
    """What `inv services` would change, computed from what runs (`inv plan` prints it): the
    whole file validated, and what it names outside found, before any change."""
    stack = read_file(s)
    cluster = Cluster.of(s).discover()
    manager = cluster.gateway(log)
    manager.manager_name()  # the manager probed once, before the reads below ask side by side
    with ThreadPoolExecutor(max_workers=6) as pool:
        routing = pool.submit(cluster.routing_in_use)
        actual = _actual(manager, stack.name, pool)
        p = stackplan.plan(stack, actual, routing.result())
    if p.adapted:
        log(_routing_note(p))
    missing = stackplan.missing_external(stack, actual)
    if missing:
        raise stackplan.StackError(f"{stack.path}: {', '.join(missing)} does not exist")
    return FilePlan(s, stack, p, cluster, manager, actual)


def ensure_file(s: Settings, log: Log, *, check: bool = False, update: bool = False) -> StackResult:
    """The stack file's networks, configs, secrets and services, as `docker stack deploy`
    makes them: its plan carried out (`check`: only returned as drift), then waited for."""
    fp = plan_file(s, log)
    stack, p, manager = fp.stack, fp.plan, fp.manager
    if check:
        return StackResult(s.env, p.routing, (), _drift(p.changes))
    done = _check_images(fp.cluster, manager, stack, log)
    calls = _calls(manager)
    done += stackplan.apply(stack, p, calls, log, update)
    drift = () if update else _drift(c for c in p.drift if c.action in ("update", "retire"))
    extra = [c for c in p.drift if c.action == "extra"]
    jobs = _jobs(stack)
    running = [stack.scoped(x.name) for x in stack.services if not x.is_job]
    timeout = s.services.services_timeout
    if update:
        updated = [c.name for c in p.changes if c.action == "update" and c.name in running]
        services.wait_updated(manager, updated, timeout, log)
    services.wait_running(manager, running, timeout, log)
    wait_jobs(manager, sorted(jobs), timeout, log)
    if update:  # only now: until the services converged, a rollback may need any of them
        done += stackplan.retire(p, fp.actual, calls, log)
    return StackResult(s.env, p.routing, tuple(done), drift + _drift(extra))


def _drift(changes) -> tuple[Drift, ...]:
    out = []
    for c in changes:
        if c.action == "create":
            out.append(Drift(f"{c.kind} {c.name}", "exists", "yes", "(missing)"))
        if c.action == "retire":
            out.append(Drift(f"{c.kind} {c.name}", "exists", "(retired)", "yes"))
        for key, want, have in c.keys:
            out.append(Drift(f"{c.kind} {c.name}", key, want, have))
    return tuple(out)


def wait_jobs(
    manager: gateway.Gateway, names: Sequence[str], timeout: float, log: Log, poll: float = 0.5
) -> None:
    """Wait until every job service has completed as many tasks as it wants."""
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            done, total = services.progress(manager, services.existing(manager, name))
            if done >= total:
                log(f"job {name}: {done}/{total} completed")
                break
            if time.monotonic() > deadline:
                raise services.ServiceError(
                    f"job {name}: {done}/{total} completed after {timeout:.0f}s: "
                    f"{services.diagnose(manager, name)}"
                )
            time.sleep(poll)


def _jobs(stack: stackfile.Stack) -> set[str]:
    return {stack.scoped(x.name) for x in stack.services if x.is_job}


def job_names(s: Settings) -> set[str]:
    """The Swarm names of the stack file's jobs (none without STACK_FILE)."""
    return _jobs(read_file(s)) if s.stack.stack_file is not None else set()


def service_name(s: Settings, name: str) -> str:
    """The Swarm name of a service: with STACK_FILE, one of the file's (`api` or `team_api`),
    else any service of the cluster."""
    if s.stack.stack_file is None:
        return name
    st = read_file(s)
    short = name.removeprefix(f"{st.name}_")
    return st.scoped(st.service(short).name)
