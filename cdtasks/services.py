"""Swarm services as data: a spec, the difference to what runs, converge, wait and diagnose.

`ServiceSpec` is what the tool wants; `actual()` reads the same fields back from a running
service, so a diff is a comparison of two plain values and changes touch only what differs.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

from . import gateway
from .config import pinned_image
from .gateway import Gateway, Node, Service, Task
from .log import Log

MB = 1024 * 1024
NS = 1_000_000_000


class ServiceError(RuntimeError):
    """A service could not be created, updated or brought to its replicas; names it and why."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    image: str
    replicas: int | None = 1  # None: global mode, one task per eligible node
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # KEY=value
    constraints: tuple[str, ...] = ()
    reserve_mb: int = 0
    mounts: tuple[str, ...] = ()  # type=bind,source=...,target=... (CLI syntax)
    ports: tuple[tuple[int, int, str], ...] = ()  # (published, target, ingress|host)
    networks: tuple[str, ...] = ()
    endpoint_mode: str = "vip"  # vip | dnsrr
    update_delay: int = 0  # seconds
    update_order: str = "stop-first"  # stop-first | start-first
    update_failure: str = "pause"  # pause | rollback | continue
    stop_grace: int = 10  # seconds
    configs: tuple[tuple[str, str], ...] = ()  # (config name, target path)
    secrets: tuple[tuple[str, str], ...] = ()  # (secret name, file name in /run/secrets)
    labels: tuple[tuple[str, str], ...] = ()

    def validated(self) -> ServiceSpec:
        try:
            pinned_image(self.image)
        except ValueError as exc:
            raise ServiceError(f"service {self.name}: image {self.image} {exc}") from None
        return self

    def api_kwargs(
        self,
        network_ids: Mapping[str, str],
        config_ids: Mapping[str, str],
        secret_ids: Mapping[str, str] | None = None,
    ) -> dict:
        """What the Engine API is sent to create or update the service (by the gateway)."""
        return gateway.service_request(self, network_ids, config_ids, secret_ids or {}, MONITOR)


def actual(
    svc: Service,
    network_names: Mapping[str, str],
    config_names: Mapping[str, str],
    secret_names: Mapping[str, str] | None = None,
) -> ServiceSpec:
    """The fields of a running service as a ServiceSpec (names of what its IDs refer to now)."""
    return ServiceSpec(
        name=svc.name,
        image=svc.image,
        replicas=svc.replicas,
        args=svc.args,
        env=svc.env,
        constraints=svc.constraints,
        reserve_mb=svc.reserve_bytes // MB,
        mounts=tuple(
            f"type={m.type},source={m.source},target={m.target}"
            + (",readonly" if m.readonly else "")
            for m in svc.mounts
        ),
        ports=svc.ports,
        networks=tuple(network_names.get(n, n) for n in svc.network_ids),
        endpoint_mode=svc.endpoint_mode,
        update_delay=svc.update_delay,
        update_order=svc.update_order,
        update_failure=svc.update_failure,
        stop_grace=svc.stop_grace,
        configs=tuple((config_names.get(i, n), f) for i, n, f in svc.configs),
        secrets=tuple(((secret_names or {}).get(i, n), f) for i, n, f in svc.secrets),
        labels=tuple(sorted(svc.labels.items())),
    )


def diff(want: ServiceSpec, have: ServiceSpec | None) -> dict[str, tuple]:
    """{field: (wanted, running)} for every field that differs; all fields when it is missing."""
    out = {}
    for f in fields(ServiceSpec):
        w = getattr(want, f.name)
        h = getattr(have, f.name) if have else None
        if f.name in (
            "env",
            "constraints",
            "mounts",
            "ports",
            "networks",
            "configs",
            "secrets",
            "labels",
        ):
            w, h = tuple(sorted(w)), (tuple(sorted(h)) if h is not None else None)
        if f.name == "image" and h and "@sha256:" not in w:
            h = h.split("@sha256:")[
                0
            ]  # the CLI appends the digest it resolved; a tag pin ignores it
        if w != h:
            out[f.name] = (w, h)
    return out


# -- the engine side --------------------------------------------------------------------------
def _lookup(gw: Gateway) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """name -> ID of the cluster's networks, configs and secrets."""
    return gw.networks(), {c.name: c.id for c in gw.configs()}, gw.secrets()


def _names(ids: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in ids.items()}


def plan(gw: Gateway, specs: Sequence[ServiceSpec]) -> list[tuple[ServiceSpec, dict[str, tuple]]]:
    """[(spec, differences)] for the services that are missing or differ from their spec."""
    nets, confs, secrets = _lookup(gw)
    out = []
    for spec in specs:
        running = gw.service(spec.name)
        have = actual(running, _names(nets), _names(confs), _names(secrets)) if running else None
        d = diff(spec.validated(), have)
        if d:
            out.append((spec, d if have else {}))
    return out


def converge(gw: Gateway, specs: Sequence[ServiceSpec], log: Log, update: bool = True) -> list[str]:
    """Create what is missing; with `update`, update what differs. Returns what was done."""
    nets, confs, secrets = _lookup(gw)
    done = []
    for spec, d in plan(gw, specs):
        missing = (
            [n for n in spec.networks if n not in nets]
            + [c for c, _ in spec.configs if c not in confs]
            + [c for c, _ in spec.secrets if c not in secrets]
        )
        if missing:
            raise ServiceError(f"service {spec.name}: {', '.join(missing)} does not exist")
        kwargs = spec.api_kwargs(nets, confs, secrets)
        if not d:
            log(f"creating service {spec.name} ({spec.image})")
            gw.create_service(**kwargs)
            done.append(f"created {spec.name}")
        elif update:
            log(f"updating service {spec.name}: {', '.join(d)}")
            gw.update_service(spec.name, **kwargs)
            done.append(f"updated {spec.name} ({', '.join(d)})")
    return done


def _replicas_wanted(svc: Service, tasks: Sequence[Task], nodes: Callable[[], list[Node]]) -> int:
    """`tasks`: the service's tasks that should run; `nodes()` is asked only for a global
    service without constraints."""
    if svc.replicas is not None:
        return svc.replicas
    if svc.constraints:
        # Which nodes satisfy the constraints is the scheduler's call: count what it placed.
        return max(1, len({t.node_id for t in tasks}))
    return sum(1 for n in nodes() if n.schedulable)


def constraint_matches(node: Node, constraint: str) -> bool | None:
    """Swarm's placement rule for one node: `attr == value` or `attr != value`, values
    compared without case as swarmkit does; None when the attribute is not one it reads here."""
    m = re.fullmatch(r"\s*([\w.-]+)\s*(==|!=)\s*(.*?)\s*", constraint)
    if not m:
        return None
    attr, op, value = m.groups()
    known = {
        "node.id": node.id,
        "node.hostname": node.hostname,
        "node.role": node.role,
        "node.platform.os": node.os or None,
        "node.platform.arch": node.arch or None,
    }
    for prefix, labels in (("node.labels.", node.labels), ("engine.labels.", node.engine_labels)):
        if attr.startswith(prefix):
            known[attr] = labels.get(attr[len(prefix) :])
    if attr not in known:
        return None
    equal = known[attr] is not None and str(known[attr]).lower() == value.lower()
    return equal if op == "==" else not equal


def eligible_nodes(gw: Gateway, svc: Service) -> list[str]:
    """Hostnames of the ready, active nodes a service's tasks may be placed on (a constraint
    this module cannot read counts as met: the caller gets more nodes, never fewer)."""
    return sorted(
        n.hostname
        for n in gw.nodes()
        if n.schedulable and all(constraint_matches(n, c) is not False for c in svc.constraints)
    )


def _stopping(gw: Gateway, svc: Service, image: str) -> int:
    """Tasks of another image that Swarm told to shut down and that still run (a manager that
    does not answer now counts as one: the next look decides)."""
    try:
        tasks = gw.tasks(svc.id, "shutdown")
    except Exception:
        return 1
    return sum(1 for t in tasks if t.state == "running" and t.image != image)


def running_tasks(gw: Gateway, name: str) -> tuple[int, int, list[Task]]:
    """(running, wanted, tasks that should run) for one service."""
    svc = existing(gw, name)
    tasks = gw.tasks(svc.id, "running")
    running = sum(1 for t in tasks if t.state == "running")
    return running, _replicas_wanted(svc, tasks, lambda: gw.nodes()), tasks


def running_counts(gw: Gateway, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(running, wanted) of each service, from one list of services and one of tasks (and of
    nodes when a global service needs it), whatever the number of services."""
    found = {s.name: s for s in gw.services()}
    missing = [n for n in names if n not in found]
    if missing:
        raise ServiceError(f"service {missing[0]} does not exist: create it with `inv services`")
    tasks = gw.tasks(None, "running")
    listed_nodes = functools.cache(lambda: gw.nodes())  # once, if a global service needs them
    out = {}
    for n in names:
        svc = found[n]
        mine = [t for t in tasks if t.service_id == svc.id]
        running = sum(1 for t in mine if t.state == "running")
        out[n] = (running, _replicas_wanted(svc, mine, listed_nodes))
    return out


def progress(gw: Gateway, svc: Service) -> tuple[int, int]:
    """(running, wanted) of a service, (completed, wanted) of a job."""
    if svc.job:
        tasks = gw.tasks(svc.id)
        done = sum(1 for t in tasks if t.state == "complete")
        return done, svc.replicas or max(1, len({t.node_id for t in tasks}))
    running, wanted, _ = running_tasks(gw, svc.name)
    return running, wanted


def hostnames(gw: Gateway) -> dict[str, str]:
    """Node ID -> hostname, for the nodes of the swarm."""
    return {n.id: n.hostname for n in gw.nodes()}


def replica_images(gw: Gateway, name: str) -> list[tuple[str, str]]:
    """(node, image) of every task of the service that runs now, sorted: what really serves."""
    _, _, tasks = running_tasks(gw, name)
    nodes = hostnames(gw)
    return sorted(
        (nodes.get(t.node_id, t.node_id or "?"), t.image) for t in tasks if t.state == "running"
    )


def _health_of(t: Task, nodes: Mapping[str, str], node_client) -> str:
    """The failing health check of a task's container, read on the node that ran it."""
    host = nodes.get(t.node_id)
    if not t.container_id or not host:
        return ""
    try:
        return gateway.container_health(node_client(host), t.container_id)
    except Exception:  # node gone, container removed: the task's own words still tell
        return ""


def diagnose(gw: Gateway, name: str, node_client: Callable[[str], object] | None = None) -> str:
    """Why tasks don't run, in the tasks' own words (latest error per distinct message); with
    `node_client` (hostname -> client) also the last output of a failing health check, read
    from the container on the node that ran it."""
    svc = existing(gw, name)
    tasks = sorted(gw.tasks(svc.id), key=lambda t: t.updated_at, reverse=True)
    reasons = []
    nodes = hostnames(gw) if node_client else {}
    looked = 0
    for t in tasks:
        msg = t.error or (t.message if t.state in ("pending", "rejected", "failed") else "")
        if node_client and looked < 3 and t.state not in ("new", "pending", "assigned", "running"):
            looked += 1
            health = _health_of(t, nodes, node_client)
            if health:
                msg = f"{msg + ': ' if msg else ''}health check failed: {health}"
        if msg and msg not in reasons:
            reasons.append(msg)
    return "; ".join(reasons[:3]) or "no task reported an error"


def wait_running(
    gw: Gateway, names: Sequence[str], timeout: float, log: Log, poll: float = 0.5
) -> None:
    """Wait until every service has all its replicas running; on timeout say why."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        states = running_counts(gw, names)
        text = ", ".join(f"{n} {r}/{w}" for n, (r, w) in states.items())
        if all(r >= w for r, w in states.values()):
            log(f"running: {text}")
            return
        if text != last:
            log(f"waiting: {text}")
            last = text
        if time.monotonic() > deadline:
            stuck = [n for n, (r, w) in states.items() if r < w]
            why = "; ".join(f"{n}: {diagnose(gw, n)}" for n in stuck)
            raise ServiceError(
                f"timed out after {timeout:.0f}s waiting for {', '.join(stuck)}: {why}"
            )
        time.sleep(poll)


def wait_updated(
    gw: Gateway, names: Sequence[str], timeout: float, log: Log, poll: float = 0.5
) -> None:
    """Wait until every replica of each (just updated) service runs its current spec and no
    task of an older one still runs, whatever changed (a config's new generation as much as an
    image). Swarm pausing or rolling back the update is a failure, said with the tasks' words."""
    deadline = time.monotonic() + timeout
    last = ""
    for name in names:
        while True:
            svc = existing(gw, name)
            if svc.update_state in FAILED_UPDATE:
                raise ServiceError(
                    f"updating {name}: Swarm's update is {svc.update_state}: "
                    f"{svc.update_message} ({diagnose(gw, name)})"
                )
            _, wanted, tasks = running_tasks(gw, name)
            current = sum(
                1
                for t in tasks
                if t.state == "running" and t.container_digest == svc.container_digest
            )
            old = sum(
                1
                for t in [*tasks, *gw.tasks(svc.id, "shutdown")]
                if t.state == "running" and t.container_digest != svc.container_digest
            )
            text = f"{name}: {current}/{wanted} replicas updated, {old} older still running"
            if current >= wanted and not old:
                log(text)
                break
            if text != last:
                log(f"waiting: {text}")
                last = text
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"timed out after {timeout:.0f}s updating {text}: {diagnose(gw, name)}"
                )
            time.sleep(poll)


def with_routing(spec: ServiceSpec, mode: str) -> ServiceSpec:
    """Without IPVS (mode dnsrr): DNS round robin and host-mode ports instead of VIP and mesh."""
    if mode != "dnsrr":
        return spec
    return replace(
        spec, endpoint_mode="dnsrr", ports=tuple((p, t, "host") for p, t, _ in spec.ports)
    )


# -- releases: a new image for a running service ---------------------------------------------
FAILED_UPDATE = ("paused", "rollback_started", "rollback_paused", "rollback_completed")
MONITOR = 5  # seconds a new task must keep running before its update counts as good


@dataclass(frozen=True)
class Rollout:
    service: str
    image: str
    state: str  # Swarm's UpdateStatus.State, or "unchanged" when the image was already running
    seconds: float
    message: str = ""
    # How long, by the manager's clock, the last replica to start had been running when the
    # rollout was seen converged: Swarm's monitor period counts from that start, not from when
    # this tool noticed it.
    running_for: float = 0.0
    # When (time.monotonic()) it was seen so: a caller that reads the result later (after the
    # monitor period of a release of several) must not count `running_for` from its own now.
    seen_at: float = field(default_factory=time.monotonic)


def existing(gw: Gateway, name: str) -> Service:
    """The service; a release needs it to exist."""
    svc = gw.service(name)
    if svc is None:
        raise ServiceError(f"service {name} does not exist: create it with `inv services`")
    return svc


def current_image(gw: Gateway, name: str) -> str:
    return existing(gw, name).image


def update_image(
    gw: Gateway,
    name: str,
    image: str,
    before: Callable[[], None] = lambda: None,
    labels: Mapping[str, str] | None = None,
) -> bool:
    """`docker service update --image`: only the image (and these labels) change. False when
    it already runs. `before()` runs right before each attempt (a lock's check)."""
    existing(gw, name)
    return gw.update_image(name, image, before, labels)


def _running_for(gw: Gateway, tasks: Sequence[Task], image: str) -> float:
    started = [
        gateway.engine_time(t.timestamp) for t in tasks if t.state == "running" and t.image == image
    ]
    if not started:
        return 0.0
    return max(0.0, (gw.clock() - max(started)).total_seconds())


def wait_rollout(
    gw: Gateway,
    name: str,
    image: str,
    timeout: float,
    on_progress: Callable[[str], None],
    poll: float = 0.25,
    stable_until: float | None = None,
    node_client: Callable[[str], object] | None = None,
) -> Rollout:
    """Follow a rolling update through Swarm's own state until every replica runs the image
    (`converged`). `paused` and `rollback_*` are failures, although the CLI's `docker service
    update` exits 0 on them (but a rollback that brought back `image` is what was waited for).
    With `stable_until` (a time.monotonic() value) it also keeps watching until then: the
    monitor period, which callers overlap with their tests. A manager that dies meanwhile is
    the gateway's to replace; `node_client` (hostname -> client): a failure names the failing
    health check's output."""
    start = time.monotonic()
    last = ""
    while True:
        svc = existing(gw, name)
        running, wanted, tasks = running_tasks(gw, name)
        state = svc.update_state or "unchanged"
        if svc.image != image:
            if state.startswith("rollback"):  # Swarm's own failure action
                return Rollout(
                    name,
                    image,
                    state,
                    time.monotonic() - start,
                    f"Swarm rolled back to {svc.image}: {svc.update_message} "
                    f"({diagnose(gw, name, node_client)})",
                )
            return Rollout(
                name,
                image,
                "replaced",
                time.monotonic() - start,  # another release
                f"the service was updated to {svc.image} meanwhile",
            )
        on_new = sum(1 for t in tasks if t.state == "running" and t.image == image)
        text = f"{name}: {on_new}/{wanted} replicas on the new image ({state})"
        if text != last:
            on_progress(text)
            last = text
        elapsed = time.monotonic() - start
        # A rollback by Swarm towards `image` (the spec is `image` again) is what is waited for.
        if state in FAILED_UPDATE and state not in ("rollback_started", "rollback_completed"):
            return Rollout(
                name,
                image,
                state,
                elapsed,
                f"{svc.update_message} ({diagnose(gw, name, node_client)})",
            )
        # Every replica runs the new image only once the old ones stopped too: a task told to
        # shut down keeps answering (through the proxy) until its process exits.
        converged = on_new >= wanted and running >= wanted and not _stopping(gw, svc, image)
        if converged and time.monotonic() >= (stable_until or 0):
            # A rollback by Swarm that brought back `image` reached it: not the failure that
            # rollback_completed means when the spec runs another image (above).
            rolled = ("updating", "rollback_started", "rollback_completed")
            done = "converged" if state in rolled else state
            return Rollout(
                name, image, done, elapsed, svc.update_message, _running_for(gw, tasks, image)
            )
        if elapsed > timeout:
            return Rollout(
                name,
                image,
                "timeout",
                elapsed,
                f"{on_new}/{wanted} replicas on {image} after {timeout:.0f}s: "
                f"{diagnose(gw, name, node_client)}",
            )
        time.sleep(poll)


# -- logs ------------------------------------------------------------------------------------
def logs(
    gw: Gateway,
    name: str,
    *,
    since: int = 0,
    tail: int | None = None,
    follow: bool = False,
    tasks: Collection[str] | None = None,
    ordered: bool = False,
) -> Iterator[str]:
    """A service's log lines through a manager, as `docker service logs` prints them
    (`service.slot.task@node | line`); `since`: a Unix time, `tail`: lines per task, `tasks`:
    only the lines of these task IDs (the Engine API filters a service's logs by time only),
    `ordered` (not with `follow`): in the order the engines took them in, by their times
    (a task's stdout and stderr come as two streams: its last printed line and the error it
    exited with may come swapped)."""
    svc = existing(gw, name)
    nodes = hostnames(gw)
    names = {
        t.id: f"{name}.{t.slot or t.node_id}.{t.id[:12]}@{nodes.get(t.node_id, '?')}"
        for t in gw.tasks(svc.id)
    }
    stream = gw.service_logs(
        svc.id,
        details=True,  # each line then names its task: com.docker.swarm.task.id=...
        follow=follow,
        stdout=True,
        stderr=True,
        since=since,
        tail="all" if tail is None else tail,
        is_tty=svc.tty,
        timestamps=ordered,
    )
    texts = _texts(stream)
    if ordered:  # each line starts with its time, RFC 3339 with all nine digits: sortable
        stamped = sorted((text.partition(" ")[::2] for text in texts), key=lambda p: p[0])
        texts = iter([text for _, text in stamped])
    for text in texts:
        task, line = _log_line(text, names)
        if tasks is None or task in tasks:
            yield line


def _texts(stream: Iterable[bytes]) -> Iterator[str]:
    """A log stream's chunks as lines of text."""
    pending = b""
    for chunk in stream:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (raw.decode("utf-8", "replace") for raw in lines)
    if pending:
        yield pending.decode("utf-8", "replace")


def _log_line(text: str, names: Mapping[str, str]) -> tuple[str | None, str]:
    """(the task's ID, the line as printed) of one line of a log stream with details."""
    details, _, message = text.partition(" ")
    attrs = dict(p.partition("=")[::2] for p in details.split(",") if "=" in p)
    task = attrs.get("com.docker.swarm.task.id")
    if task is None:  # no details prefix: the whole text is the message
        return None, text
    return task, f"{names.get(task, task[:12])} | {message}"
