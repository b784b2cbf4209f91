"""The stack a cluster runs, from its stack file (STACK_FILE, STACK_NAME, STACK_VARIABLES): read
and interpolated (`stackfile`), planned against what runs (`stackplan`), carried out and waited
for, as `docker stack deploy` would. The book's sample is one too (demo/stack.yml)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import gateway, images, registry, release, services, stackfile, stackplan
from .cluster import Cluster

# Settings whole where a Cluster is built, or the registry (its prefix) is read beside the stack
from .config import ServicesSettings, Settings
from .log import Log


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


def proxy_nodes(cluster: Cluster, app: ServicesSettings) -> list[str]:
    """Nodes that run a task of the stack's proxy (PROXY_SERVICE) now: where HOST_IP can point
    without the routing mesh."""
    manager = cluster.gateway()
    names = services.hostnames(manager)
    proxy = service_name(cluster.settings, app.proxy_service)
    _, _, tasks = services.running_tasks(manager, proxy)
    return sorted({names[t.node_id] for t in tasks if t.state == "running"})


def read_file(s: Settings, environ: Mapping[str, str] | None = None) -> stackfile.Stack:
    """The env file's stack, interpolated from the process environment and, over it, the env
    file's STACK_VARIABLES (one file, a value per cluster). Unless either sets them, REGISTRY
    is the cluster's registry as its nodes name it (localhost:5000, or REGISTRY_URL's host and
    path), so that `${REGISTRY}/go-demo:1.0` follows the registry the env file chose, and
    PROXY_PORT the env file's (where production tests go)."""
    variables = {
        "REGISTRY": registry.address(s),
        "PROXY_PORT": str(s.services.proxy_port),
        **(os.environ if environ is None else environ),
        **dict(s.stack.stack_variables),
    }
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


def ensure(s: Settings, log: Log, *, check: bool = False, update: bool = False) -> StackResult:
    """The stack file's networks, configs, secrets and services, as `docker stack deploy`
    makes them: its plan carried out (without `update` only what is missing; `check`: nothing,
    the differences returned as drift), then waited for until every replica runs."""
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
    """The Swarm names of the stack file's jobs."""
    return _jobs(read_file(s))


def members(s: Settings, published: Mapping[str, str]) -> dict[str, str]:
    """Swarm service -> published reference, for each service of the stack file (a job too)
    that runs an image of `published` (compose service -> reference): the release's set."""
    st = read_file(s)
    return release.members(
        [release.StackMember(st.scoped(x.name), x.image) for x in st.services], published
    )


def service_name(s: Settings, name: str) -> str:
    """The Swarm name of one of the file's services, named as the file (`api`) or Swarm
    (`team_api`) names it; StackFileError if the file has none of that name."""
    st = read_file(s)
    short = name.removeprefix(f"{st.name}_")
    return st.scoped(st.service(short).name)


def backend_names(s: Settings, services: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Service -> the names its backend may have in the proxy's haproxy.cfg: as the file names
    it (`api`) or as Swarm does (`team_api`)."""
    prefix = f"{read_file(s).name}_"
    return {svc: (svc.removeprefix(prefix), svc) for svc in services}
