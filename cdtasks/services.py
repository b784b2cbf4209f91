"""Swarm services as data: a spec, the difference to what runs, converge, wait and diagnose.

`ServiceSpec` is what the tool wants; `actual()` reads the same fields back from a running
service, so a diff is a comparison of two plain values and changes touch only what differs.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime

from docker import types
from docker.errors import APIError, DockerException, NotFound

from .config import pinned_image
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

    # -- to the Engine API ---------------------------------------------------------------------
    def api_kwargs(
        self,
        network_ids: Mapping[str, str],
        config_ids: Mapping[str, str],
        secret_ids: Mapping[str, str] | None = None,
    ) -> dict:
        mounts = [types.Mount.parse_mount_string(_cli_mount(m)) for m in self.mounts]
        configs = [
            types.ConfigReference(config_ids[name], name, filename=target, mode=0o444)
            for name, target in self.configs
        ]
        secrets = [
            types.SecretReference((secret_ids or {})[name], name, filename=target, mode=0o400)
            for name, target in self.secrets
        ]
        container = types.ContainerSpec(
            self.image,
            args=list(self.args) or None,
            env=list(self.env) or None,
            mounts=mounts or None,
            stop_grace_period=self.stop_grace * NS,
            configs=configs or None,
            secrets=secrets or None,
        )
        resources = (
            types.Resources(mem_reservation=self.reserve_mb * MB) if self.reserve_mb else None
        )
        template = types.TaskTemplate(
            container,
            resources=resources,
            placement=types.Placement(constraints=list(self.constraints)),
            networks=[{"Target": network_ids[n]} for n in self.networks] or None,
        )
        mode = (
            types.ServiceMode("global")
            if self.replicas is None
            else types.ServiceMode("replicated", replicas=self.replicas)
        )
        ports = [
            {"PublishedPort": p, "TargetPort": t, "Protocol": "tcp", "PublishMode": m}
            for p, t, m in self.ports
        ]
        endpoint = types.EndpointSpec(mode=self.endpoint_mode, ports=None)
        endpoint["Ports"] = ports
        update = types.UpdateConfig(
            parallelism=1,
            delay=self.update_delay * NS,
            failure_action=self.update_failure,
            order=self.update_order,
            monitor=MONITOR * NS,
        )
        return dict(
            task_template=template,
            name=self.name,
            mode=mode,
            endpoint_spec=endpoint,
            update_config=update,
            labels=dict(self.labels),
        )


def _cli_mount(m: str) -> str:
    """`type=bind,source=A,target=B[,readonly]` -> the SDK's `A:B[:ro]` form."""
    parts = {k: v if sep else "1" for k, sep, v in (p.partition("=") for p in m.split(","))}
    return f"{parts['source']}:{parts['target']}" + (":ro" if "readonly" in parts else "")


def actual(
    inspect: Mapping,
    network_names: Mapping[str, str],
    config_names: Mapping[str, str],
    secret_names: Mapping[str, str] | None = None,
) -> ServiceSpec:
    """The fields of a running service's spec (from `inspect_service`) as a ServiceSpec."""
    spec = inspect["Spec"]
    tt, cs = spec["TaskTemplate"], spec["TaskTemplate"]["ContainerSpec"]
    mode = spec.get("Mode", {})
    upd = spec.get("UpdateConfig") or {}
    ep = spec.get("EndpointSpec") or {}
    mounts = tuple(
        f"type={m.get('Type', 'bind')},source={m['Source']},target={m['Target']}"
        + (",readonly" if m.get("ReadOnly") else "")
        for m in cs.get("Mounts") or []
    )
    nets = tt.get("Networks") or spec.get("Networks") or []
    return ServiceSpec(
        name=spec["Name"],
        image=cs["Image"],
        replicas=None if "Global" in mode else mode.get("Replicated", {}).get("Replicas", 1),
        args=tuple(cs.get("Args") or ()),
        env=tuple(cs.get("Env") or ()),
        constraints=tuple((tt.get("Placement") or {}).get("Constraints") or ()),
        reserve_mb=((tt.get("Resources") or {}).get("Reservations") or {}).get("MemoryBytes", 0)
        // MB,
        mounts=mounts,
        ports=tuple(
            (p["PublishedPort"], p["TargetPort"], p.get("PublishMode", "ingress"))
            for p in ep.get("Ports") or []
        ),
        networks=tuple(network_names.get(n["Target"], n["Target"]) for n in nets),
        endpoint_mode=ep.get("Mode", "vip"),
        update_delay=upd.get("Delay", 0) // NS,
        update_order=upd.get("Order", "stop-first"),
        update_failure=upd.get("FailureAction", "pause"),
        stop_grace=cs.get("StopGracePeriod", 10 * NS) // NS,
        configs=tuple(
            (config_names.get(c["ConfigID"], c["ConfigName"]), c["File"]["Name"])
            for c in cs.get("Configs") or []
        ),
        secrets=tuple(
            ((secret_names or {}).get(c["SecretID"], c["SecretName"]), c["File"]["Name"])
            for c in cs.get("Secrets") or []
        ),
        labels=tuple(sorted((spec.get("Labels") or {}).items())),
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
def _lookup(client) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """name -> ID of the cluster's networks, configs and secrets."""
    return (
        {n["Name"]: n["Id"] for n in client.api.networks()},
        {c["Spec"]["Name"]: c["ID"] for c in client.api.configs()},
        {c["Spec"]["Name"]: c["ID"] for c in client.api.secrets()},
    )


def _names(ids: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in ids.items()}


def inspect(client, name: str) -> Mapping | None:
    try:
        return client.api.inspect_service(name)
    except NotFound:
        return None


def plan(client, specs: Sequence[ServiceSpec]) -> list[tuple[ServiceSpec, dict[str, tuple]]]:
    """[(spec, differences)] for the services that are missing or differ from their spec."""
    nets, confs, secrets = _lookup(client)
    out = []
    for spec in specs:
        running = inspect(client, spec.name)
        have = actual(running, _names(nets), _names(confs), _names(secrets)) if running else None
        d = diff(spec.validated(), have)
        if d:
            out.append((spec, d if have else {}))
    return out


def converge(client, specs: Sequence[ServiceSpec], log: Log, update: bool = True) -> list[str]:
    """Create what is missing; with `update`, update what differs. Returns what was done."""
    nets, confs, secrets = _lookup(client)
    done = []
    for spec, d in plan(client, specs):
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
            client.api.create_service(**kwargs)
            done.append(f"created {spec.name}")
        elif update:
            log(f"updating service {spec.name}: {', '.join(d)}")
            current = client.api.inspect_service(spec.name)
            client.api.update_service(current["ID"], current["Version"]["Index"], **kwargs)
            done.append(f"updated {spec.name} ({', '.join(d)})")
    return done


def _replicas_wanted(client, spec: Mapping, service_id: str) -> int:
    if "Global" not in spec["Mode"]:
        return spec["Mode"].get("Replicated", {}).get("Replicas", 1)
    if (spec["TaskTemplate"].get("Placement") or {}).get("Constraints"):
        # Which nodes satisfy the constraints is the scheduler's call: count what it placed.
        tasks = client.api.tasks(filters={"service": service_id, "desired-state": "running"})
        return max(1, len({t.get("NodeID") for t in tasks}))
    return sum(1 for n in client.api.nodes() if _schedulable(n))


def _schedulable(node: Mapping) -> bool:
    """A node the scheduler places new tasks on: ready, and not paused or drained."""
    return node["Status"]["State"] == "ready" and node["Spec"].get("Availability") == "active"


def constraint_matches(node: Mapping, constraint: str) -> bool | None:
    """Swarm's placement rule for one node: `attr == value` or `attr != value`, values
    compared without case as swarmkit does; None when the attribute is not one it reads here."""
    m = re.fullmatch(r"\s*([\w.-]+)\s*(==|!=)\s*(.*?)\s*", constraint)
    if not m:
        return None
    attr, op, value = m.groups()
    desc, spec = node.get("Description") or {}, node.get("Spec") or {}
    known = {
        "node.id": node.get("ID"),
        "node.hostname": desc.get("Hostname"),
        "node.role": spec.get("Role"),
        "node.platform.os": (desc.get("Platform") or {}).get("OS"),
        "node.platform.arch": (desc.get("Platform") or {}).get("Architecture"),
    }
    for prefix, labels in (
        ("node.labels.", spec.get("Labels")),
        ("engine.labels.", (desc.get("Engine") or {}).get("Labels")),
    ):
        if attr.startswith(prefix):
            known[attr] = (labels or {}).get(attr[len(prefix) :])
    if attr not in known:
        return None
    equal = known[attr] is not None and str(known[attr]).lower() == value.lower()
    return equal if op == "==" else not equal


def eligible_nodes(client, spec: Mapping) -> list[str]:
    """Hostnames of the ready, active nodes a service's tasks may be placed on (a constraint
    this module cannot read counts as met: the caller gets more nodes, never fewer)."""
    constraints = (spec["TaskTemplate"].get("Placement") or {}).get("Constraints") or []
    return sorted(
        n["Description"]["Hostname"]
        for n in client.api.nodes()
        if _schedulable(n) and all(constraint_matches(n, c) is not False for c in constraints)
    )


def _stopping(client, svc: Mapping, image: str) -> int:
    """Tasks of another image that Swarm told to shut down and that still run (a manager that
    does not answer now counts as one: the next look decides)."""
    try:
        tasks = client.api.tasks(filters={"service": svc["ID"], "desired-state": "shutdown"})
    except Exception:
        return 1
    return sum(
        1
        for t in tasks
        if t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] != image
    )


def running_tasks(client, name: str) -> tuple[int, int, list[Mapping]]:
    """(running, wanted, tasks that should run) for one service."""
    svc = client.api.inspect_service(name)
    tasks = client.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
    running = sum(1 for t in tasks if t["Status"]["State"] == "running")
    return running, _replicas_wanted(client, svc["Spec"], svc["ID"]), tasks


def hostnames(client) -> dict[str, str]:
    """Node ID -> hostname, for the nodes of the swarm."""
    return {n["ID"]: n["Description"]["Hostname"] for n in client.api.nodes()}


def replica_images(client, name: str) -> list[tuple[str, str]]:
    """(node, image) of every task of the service that runs now, sorted: what really serves."""
    _, _, tasks = running_tasks(client, name)
    nodes = hostnames(client)
    return sorted(
        (nodes.get(t.get("NodeID", ""), t.get("NodeID", "?")), t["Spec"]["ContainerSpec"]["Image"])
        for t in tasks
        if t["Status"]["State"] == "running"
    )


def health_output(container: Mapping) -> str:
    """The last failing health check of a container (its inspect data) in a few words: its
    output, the command, its exit code and how many probes failed in a row; '' if none failed.
    A check that prints nothing (`HEALTHCHECK CMD false`) is still named by the rest."""
    health = (container.get("State") or {}).get("Health") or {}
    failed = [h for h in health.get("Log") or [] if h.get("ExitCode") != 0]
    if not failed:
        return ""
    # The last probe that said something: a probe cut short as the container stops prints
    # nothing (exit 137).
    probe = next((h for h in reversed(failed) if (h.get("Output") or "").strip()), failed[-1])
    output = " ".join((probe.get("Output") or "").split())[:300] or "no output"
    test = list(((container.get("Config") or {}).get("Healthcheck") or {}).get("Test") or ())
    command = (
        test[1]
        if test[:1] == ["CMD-SHELL"] and len(test) > 1
        else shlex.join(test[1:])
        if test[:1] == ["CMD"]
        else ""
    )
    facts = [f"exit code {probe.get('ExitCode')}"]
    streak = health.get("FailingStreak") or 0
    if streak:
        facts.append(f"{streak} failed probe{'s' if streak > 1 else ''} in a row")
    return f"{output} ({f'`{command[:200]}`: ' if command else ''}{', '.join(facts)})"


def _health_of(t: Mapping, nodes: Mapping[str, str], node_client) -> str:
    """The failing health check of a task's container, read on the node that ran it."""
    container = (t["Status"].get("ContainerStatus") or {}).get("ContainerID")
    host = nodes.get(t.get("NodeID", ""))
    if not container or not host:
        return ""
    try:
        return health_output(node_client(host).api.inspect_container(container))
    except Exception:  # node gone, container removed: the task's own words still tell
        return ""


def diagnose(client, name: str, node_client: Callable[[str], object] | None = None) -> str:
    """Why tasks don't run, in the tasks' own words (latest error per distinct message); with
    `node_client` (hostname -> client) also the last output of a failing health check, read
    from the container on the node that ran it."""
    svc = client.api.inspect_service(name)
    tasks = sorted(
        client.api.tasks(filters={"service": svc["ID"]}),
        key=lambda t: t.get("UpdatedAt", ""),
        reverse=True,
    )
    reasons = []
    nodes = hostnames(client) if node_client else {}
    looked = 0
    for t in tasks:
        st = t["Status"]
        msg = st.get("Err") or (
            st["Message"] if st["State"] in ("pending", "rejected", "failed") else ""
        )
        if (
            node_client
            and looked < 3
            and st["State"] not in ("new", "pending", "assigned", "running")
        ):
            looked += 1
            health = _health_of(t, nodes, node_client)
            if health:
                msg = f"{msg + ': ' if msg else ''}health check failed: {health}"
        if msg and msg not in reasons:
            reasons.append(msg)
    return "; ".join(reasons[:3]) or "no task reported an error"


def wait_running(client, names: Sequence[str], timeout: float, log: Log, poll: float = 0.5) -> None:
    """Wait until every service has all its replicas running; on timeout say why."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        states = {n: running_tasks(client, n)[:2] for n in names}
        text = ", ".join(f"{n} {r}/{w}" for n, (r, w) in states.items())
        if all(r >= w for r, w in states.values()):
            log(f"running: {text}")
            return
        if text != last:
            log(f"waiting: {text}")
            last = text
        if time.monotonic() > deadline:
            stuck = [n for n, (r, w) in states.items() if r < w]
            why = "; ".join(f"{n}: {diagnose(client, n)}" for n in stuck)
            raise ServiceError(
                f"timed out after {timeout:.0f}s waiting for {', '.join(stuck)}: {why}"
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


def existing(client, name: str) -> Mapping:
    """The service's inspect data; a release needs it to exist."""
    svc = inspect(client, name)
    if svc is None:
        raise ServiceError(f"service {name} does not exist: create it with `inv services`")
    return svc


def current_image(client, name: str) -> str:
    return existing(client, name)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]


def update_image(client, name: str, image: str) -> bool:
    """`docker service update --image`: only the image changes. False when it already runs."""
    svc = existing(client, name)
    template = svc["Spec"]["TaskTemplate"]
    if template["ContainerSpec"]["Image"] == image:
        return False
    template["ContainerSpec"]["Image"] = image
    client.api.update_service(
        svc["ID"], svc["Version"]["Index"], task_template=template, fetch_current_spec=True
    )
    return True


def engine_time(text: str) -> datetime:
    """An Engine API timestamp (RFC 3339, nanoseconds) as an aware datetime."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def _running_for(client, tasks: Sequence[Mapping], image: str) -> float:
    started = [
        engine_time(t["Status"]["Timestamp"])
        for t in tasks
        if t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == image
    ]
    if not started:
        return 0.0
    now = engine_time(client.info()["SystemTime"])
    return max(0.0, (now - max(started)).total_seconds())


def transient(exc: BaseException) -> bool:
    """An API error worth one more try on another manager: the engine did not answer
    (connection refused or reset, timeout), or the control plane was busy (5xx, a leader
    election's "rpc error ... deadline exceeded", "does not have a leader")."""
    if isinstance(exc, APIError):  # before OSError: requests' errors subclass it
        text = str(exc.explanation or exc).lower()
        return (
            (exc.status_code or 0) >= 500
            or "deadline exceeded" in text
            or "does not have a leader" in text
        )
    if isinstance(exc, OSError):  # refused, reset, timed out; requests' connection errors
        return True
    # docker-py wraps some transport errors in its own DockerException
    return isinstance(exc, DockerException) and any(
        w in str(exc).lower() for w in ("connection", "timed out")
    )


def wait_rollout(
    client,
    name: str,
    image: str,
    timeout: float,
    on_progress: Callable[[str], None],
    poll: float = 0.25,
    stable_until: float | None = None,
    cluster=None,
) -> Rollout:
    """Follow a rolling update through Swarm's own state until every replica runs the image
    (`converged`). `paused` and `rollback_*` are failures, although the CLI's `docker service
    update` exits 0 on them (but a rollback that brought back `image` is what was waited for).
    With `stable_until` (a time.monotonic() value) it also keeps watching until then: the
    monitor period, which callers overlap with their tests. `cluster` (anything with
    `manager()` and `client(hostname)`): a transient API error (a manager died, a leader
    election) is retried on a manager that answers until the timeout, and a failure names
    the failing health check's output."""
    start = time.monotonic()
    last = ""
    node_client = cluster.client if cluster is not None else None
    while True:
        try:
            svc = client.api.inspect_service(name)
            running, wanted, tasks = running_tasks(client, name)
        except Exception as exc:
            if cluster is None or not transient(exc) or time.monotonic() - start > timeout:
                raise
            on_progress(
                f"{name}: the manager did not answer ({str(exc).splitlines()[0][:120]}); "
                f"asking another one"
            )
            time.sleep(1.0)
            client = cluster.manager()
            continue
        status = svc.get("UpdateStatus") or {}
        state = status.get("State", "unchanged")
        now_wanted = svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        if now_wanted != image:
            if state.startswith("rollback"):  # Swarm's own failure action
                return Rollout(
                    name,
                    image,
                    state,
                    time.monotonic() - start,
                    f"Swarm rolled back to {now_wanted}: {status.get('Message', '')} "
                    f"({diagnose(client, name, node_client)})",
                )
            return Rollout(
                name,
                image,
                "replaced",
                time.monotonic() - start,  # another release
                f"the service was updated to {now_wanted} meanwhile",
            )
        on_new = sum(
            1
            for t in tasks
            if t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == image
        )
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
                f"{status.get('Message', '')} ({diagnose(client, name, node_client)})",
            )
        # Every replica runs the new image only once the old ones stopped too: a task told to
        # shut down keeps answering (through the proxy) until its process exits.
        converged = on_new >= wanted and running >= wanted and not _stopping(client, svc, image)
        if converged and time.monotonic() >= (stable_until or 0):
            done = "converged" if state in ("updating", "rollback_started") else state
            return Rollout(
                name,
                image,
                done,
                elapsed,
                status.get("Message", ""),
                _running_for(client, tasks, image),
            )
        if elapsed > timeout:
            return Rollout(
                name,
                image,
                "timeout",
                elapsed,
                f"{on_new}/{wanted} replicas on {image} after {timeout:.0f}s: "
                f"{diagnose(client, name, node_client)}",
            )
        time.sleep(poll)
