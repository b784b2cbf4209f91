"""Changing the running service and proving it works, for delivery (prod-like) and deployment
(production) alike: pre-pull, update by digest, wait on Swarm's UpdateStatus, HOST_IP, the
production tests and, overlapping them, the watch of Swarm's monitor period (`settle`); and
the record that ties the two: the versions that passed production tests on prod-like."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from . import budget, gateway, jobs, records, services, stack, stackfile, stackplan
from .checkout import Checkout
from .cluster import Cluster
from .compose import Compose
from .config import ServicesSettings
from .engine import EngineError
from .log import Log
from .runner import StepFailed

LOCK_WAIT = 600  # seconds a change of a service waits for the lock another one holds
# Rollout states that are fine (a rollback by Swarm to the image waited for ends "converged":
# services.wait_rollout; rollback_completed away from it is a failure)
OK_STATES = ("completed", "unchanged", "converged", "dry-run")


def prepull(cluster: Cluster, service: str, image: str, log: Log) -> list[str]:
    """Pull the new image, in parallel, before the update on every node the service's tasks
    may be placed on (a rolling update may start a task on a node that runs none now): the
    update then only starts containers."""
    manager = cluster.gateway(log)
    svc = services.existing(manager, service)
    nodes = [n for n in services.eligible_nodes(manager, svc) if n in cluster.endpoints]

    def pull(node: str) -> str:
        try:
            gateway.pull(cluster.client(node), image)
        except (EngineError, gateway.APIFailure) as exc:
            if not (isinstance(exc, EngineError) or gateway.transient(exc)):
                raise  # a node that went away is Swarm's to handle, not a failure
            log(f"pre-pull skipped {node}: it does not answer ({str(exc).splitlines()[0][:120]})")
            return ""
        return node

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(nodes) or 1) as pool:
        done = [n for n in pool.map(pull, nodes) if n]
    log(f"pre-pulled {image} on {', '.join(done) or 'no node'} ({time.monotonic() - start:.1f}s)")
    return done


def update(
    cluster: Cluster,
    app: ServicesSettings,
    images: Mapping[str, str],
    log: Log,
    dry_run: bool = False,
    record: Callable[[Sequence[str]], None] | None = None,
    lock: records.Lock | None = None,
) -> list[services.Rollout]:
    """A release's services (`images`: service -> image) updated together: pre-pulled; its
    jobs first, each run to completion on its image (`jobs.run`: a failure or JOB_TIMEOUT
    fails the step before any other service changes); then each `docker service update
    --image`, followed side by side until Swarm reports them done; any that did not end well
    fails the step, naming each (the caller undoes the set, the jobs too: their previous spec
    runs again, which also stops a job's task that still runs). `app`: how long to wait.
    `lock` (the release's, held) is checked right before each update, after the pre-pull that
    may take long (LockLost)."""
    job_names = stack.job_names(cluster.settings) & set(images)
    for svc in sorted(images, key=lambda name: (name not in job_names, name)):
        if record:
            record(["docker", "service", "update", "--image", images[svc], svc])
    if dry_run:
        return [services.Rollout(svc, image, "dry-run", 0.0) for svc, image in images.items()]
    with ThreadPoolExecutor(max_workers=len(images) or 1) as pool:
        list(pool.map(lambda item: prepull(cluster, item[0], item[1], log), images.items()))
    manager = cluster.gateway(log)
    before = lock.check if lock else lambda: None
    for svc in sorted(job_names):
        try:
            jobs.run(
                manager,
                svc,
                images[svc],
                cluster.settings.stack.job_timeout,
                log,
                before,
                {stackplan.RELEASED: images[svc]},
            )
        except jobs.JobFailed as exc:
            raise StepFailed(str(exc), exc.tail) from None
    rest = {svc: image for svc, image in images.items() if svc not in job_names}
    for svc, image in sorted(rest.items()):
        services.update_image(
            manager,
            svc,
            image,
            before=before,
            # the service names the image a release set, so that `inv services` keeps it
            labels={stackplan.RELEASED: image},
        )

    def follow(item: tuple[str, str]) -> services.Rollout:
        return services.wait_rollout(
            manager, item[0], item[1], app.services_timeout, log, node_client=cluster.client
        )

    with ThreadPoolExecutor(max_workers=len(rest) or 1) as pool:
        results = check(list(pool.map(follow, sorted(rest.items()))))
    if len(rest) > 1:
        # All or nothing: a service whose new task dies within Swarm's monitor period (a worker
        # that exits a second after it started) fails this step, which undoes the whole set,
        # not the tests of the others. The book's one service overlaps that period with its
        # production tests instead (`settle` after them).
        settle(cluster, app, rest, monitor_start(results), log)
    return results


def measured_update(
    cluster: Cluster,
    app: ServicesSettings,
    images: Mapping[str, str],
    log: Log,
    keep: Callable[[budget.Budget], None],
    max_errors: int | None = None,
    dry_run: bool = False,
    record: Callable[[Sequence[str]], None] | None = None,
    lock: records.Lock | None = None,
) -> list[services.Rollout]:
    """`update` under the error budget: the proxy's counters (PROXY_SERVICE, one of the stack
    file's services) read around it for each released service's backend that the proxy has,
    named after the service as the file (`main`) or Swarm (`go-demo_main`) names it. `keep`
    gets the budget. StepFailed above `max_errors`."""
    if dry_run:
        return update(cluster, app, images, log, dry_run, record, lock)
    s = cluster.settings
    backends = [n for names in stack.backend_names(s, images).values() for n in names]
    try:
        proxy = stack.service_name(s, app.proxy_service)
    except stackfile.StackFileError:  # a stack without that proxy: the budget says "not measured"
        proxy = app.proxy_service
    return budget.measure(
        budget.reader(cluster, proxy, *backends),
        lambda: update(cluster, app, images, log, record=record, lock=lock),
        keep,
        max_errors,
    )


NOTHING_BACK = "nothing to roll back: no service of the release had changed"
# A service's UpdateStatus while Swarm rolls it back by itself (its failure_action), or once
# that rollback stopped short: its spec names the image before already, its tasks may not.
SWARM_ROLLING_BACK = ("rollback_started", "rollback_paused")


def to_undo(cluster: Cluster, back: Mapping[str, str]) -> dict[str, str]:
    """Of `back` (service -> the image it ran before a release that failed), what undoing the
    release moves or follows: a service whose spec runs another image, or that Swarm is still
    rolling back by itself (or stopped doing so: the undo then fails as it should). One the
    release never changed (a failed job stopped it first), or that Swarm brought back
    already, is neither changed again nor said to be."""
    manager = cluster.gateway()
    found = {svc: services.existing(manager, svc) for svc in back}
    return {
        svc: image
        for svc, image in back.items()
        if found[svc].image != image or found[svc].update_state in SWARM_ROLLING_BACK
    }


def check(results: Sequence[services.Rollout]) -> list[services.Rollout]:
    """Every rollout ended well, or StepFailed naming each that did not (a rollback Swarm did
    by itself included: the release did not happen)."""
    failed = [r for r in results if r.state not in OK_STATES]
    if failed:
        raise StepFailed(
            "; ".join(f"rolling update of {r.service} ended {r.state}: {r.message}" for r in failed)
        )
    return list(results)


def monitor_start(results: Sequence[services.Rollout]) -> float:
    """The monotonic time the last replica of the set started: Swarm's monitor period counts
    from it (each result's start from when it was seen, not from now: `update` may have
    watched that period already)."""
    return max((r.seen_at - r.running_for for r in results), default=time.monotonic())


def settle(
    cluster: Cluster,
    app: ServicesSettings,
    images: Mapping[str, str],
    converged_at: float,
    log: Log,
) -> None:
    """After the tests that overlapped Swarm's monitor period: every replica of each service
    must still run its image (the service's spec too), for the whole period, with no failure
    or rollback reported by Swarm. converged_at 0 (not known): the period counts from now."""
    until = (converged_at or time.monotonic()) + services.MONITOR
    jobs_done = stack.job_names(cluster.settings)  # ran to completion in `update`: nothing runs

    def watch(item: tuple[str, str]) -> services.Rollout:
        return services.wait_rollout(
            cluster.gateway(log),
            item[0],
            item[1],
            app.services_timeout,
            log,
            stable_until=until,
            node_client=cluster.client,
        )

    serving = sorted((svc, image) for svc, image in images.items() if svc not in jobs_done)
    with ThreadPoolExecutor(max_workers=len(serving) or 1) as pool:
        check(list(pool.map(watch, serving)))


def host_ip(cluster: Cluster, app: ServicesSettings, routing: str) -> str:
    """Where production tests reach the proxy (HOST_IP): any node with the routing mesh;
    without it, a node that runs a proxy task."""
    nodes = list(cluster.endpoints) if routing == "mesh" else stack.proxy_nodes(cluster, app)
    if not nodes:
        raise StepFailed(f"no node of {cluster.settings.env} runs a {app.proxy_service} task")
    address = cluster.endpoints[nodes[0]].address
    return address if app.proxy_port == 80 else f"{address}:{app.proxy_port}"


def runs(cluster: Cluster, images: Mapping[str, str]) -> None:
    """Each service's spec must run exactly its image (tests of anything else verify nothing)."""
    manager = cluster.gateway()
    for svc, image in sorted(images.items()):
        running = services.current_image(manager, svc)
        if running != image:
            raise StepFailed(
                f"{svc} on {cluster.settings.env} runs {running}, not "
                f"{image}: the production tests would test another version"
            )


def production_tests(
    co: Checkout, target: Cluster, images: Mapping[str, str], converged_at: float
) -> str:
    """`run --rm production` in the checkout on the CD node against a cluster's proxy, with
    the release's services running `images` (service -> image); then the rolling updates
    that preceded them (their last replica started at `converged_at`) must have settled."""
    app = target.settings.services
    if not co.dry_run:
        runs(target, images)
    ip = "HOST_IP" if co.dry_run else host_ip(target, app, target.routing_in_use())

    def act(c: Compose) -> None:
        co.starting(f"production tests running against {target.settings.env}")
        c.run("production")

    co.compose_step(act, host_ip=ip, defer=True)
    if co.compose_left:  # a whole run: the project goes down while the monitor period is watched
        co.tear_down_beside()
    if not co.dry_run:
        settle(target, app, images, converged_at, co.log)
    co.torn_down()
    return f"production tests passed against {target.settings.env} ({ip})"


# -- versions that passed production tests on prod-like: delivery writes, deployment reads ----
def mark_delivered(manager, service: str, entry: dict) -> None:
    records.put(manager, "delivered", service, entry)


def delivered(manager, service: str) -> list[dict]:
    """Versions that passed prod-like for a service, oldest first."""
    return records.load(manager, "delivered", service)
