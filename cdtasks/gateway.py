"""The one module that talks to Swarm through the Docker SDK, and the only reader of the Engine
API's dictionaries.

`Gateway` is a session per cluster: it keeps a manager that answers (probed once, another one
after a transient error) and has the one retry policy. What the engine returns comes back as
frozen models (`Service`, `Task`, `Node`, `NodeInfo`, `Config`), its errors as the project's
own (`APIFailure`, `NotFound`, `Conflict`, and `Unreachable`, an `engine.EngineError`). The
module functions taking a `client` are the operations on one node's engine (swarm membership,
a pull, a container's health) that provision and rollouts need outside a session.

The retry policy is a small loop rather than a library (tenacity): between two attempts it
must forget the manager that failed and probe another, which is the session's own state.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shlex
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import docker.auth
import docker.errors
import requests
from docker import types

from .engine import EngineError, HostKeyChanged, UnknownHostKey

T = TypeVar("T")
NS = 1_000_000_000
MB = 1024 * 1024
RETRY_WITHIN = 60.0  # seconds a call keeps asking managers after transient errors
RETRY_PAUSE = 1.0  # seconds between two attempts (a leader election takes a few)


# -- errors -------------------------------------------------------------------------------------
class APIFailure(RuntimeError):
    """The engine answered a request with an error (`status`: its HTTP status, 0 unknown)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class NotFound(APIFailure):
    """The object (service, config, image, container...) does not exist."""


class Conflict(APIFailure):
    """A name already taken (HTTP 409)."""


class Unreachable(EngineError):
    """No engine answered the request (refused, reset, timed out), or no manager answers."""


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0][:200] if text else ""


def translate(exc: BaseException) -> BaseException:
    """The project's error for an SDK or transport error; anything else unchanged."""
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        text = str(exc.explanation or exc)
        if isinstance(exc, docker.errors.NotFound) or status == 404:
            return NotFound(text, 404)
        return (Conflict if status == 409 else APIFailure)(text, status)
    if isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError)):
        return Unreachable(
            f"the engine did not answer: {_first_line(str(exc)) or type(exc).__name__}"
        )
    if isinstance(exc, docker.errors.DockerException):
        # docker-py wraps some transport errors in its own DockerException
        text = str(exc)
        if any(w in text.lower() for w in ("connection", "timed out")):
            return Unreachable(f"the engine did not answer: {_first_line(text)}")
        return APIFailure(text)
    return exc


@contextmanager
def translated() -> Iterator[None]:
    """SDK and transport errors raised inside become the project's own."""
    try:
        yield
    except (
        docker.errors.DockerException,
        requests.RequestException,
        ConnectionError,
        TimeoutError,
    ) as exc:
        raise translate(exc) from None


def transient(exc: BaseException) -> bool:
    """An error worth one more try on another manager: the engine did not answer, or the
    control plane was busy (5xx, a leader election's "rpc error ... deadline exceeded", "does
    not have a leader")."""
    exc = translate(exc)
    if isinstance(exc, Unreachable):
        return True
    if isinstance(exc, APIFailure):
        text = str(exc).lower()
        return exc.status >= 500 or "deadline exceeded" in text or "does not have a leader" in text
    return False


# -- models -------------------------------------------------------------------------------------
def engine_time(text: str) -> datetime:
    """An Engine API timestamp (RFC 3339, nanoseconds) as an aware datetime."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    type: str = "bind"
    readonly: bool = False


@dataclass(frozen=True)
class Service:
    """A service as a manager has it: the fields the tool reads, the spec's and Swarm's."""

    id: str
    name: str
    version: int  # the index an update must name
    image: str
    replicas: int | None  # None: global mode (a job: how many complete, None: one per node)
    constraints: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    endpoint_mode: str = "vip"
    update_state: str = ""  # Swarm's UpdateStatus.State, "" when never updated
    update_message: str = ""
    previous_image: str = ""  # of Swarm's PreviousSpec, "" when there is none
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    ports: tuple[tuple[int, int, str], ...] = ()  # (published, target, ingress|host)
    network_ids: tuple[str, ...] = ()
    reserve_bytes: int = 0
    update_delay: int = 0  # seconds
    update_order: str = "stop-first"
    update_failure: str = "pause"
    stop_grace: int = 10  # seconds
    configs: tuple[tuple[str, str, str], ...] = ()  # (config ID, config name, target file)
    secrets: tuple[tuple[str, str, str], ...] = ()  # (secret ID, secret name, file name)
    job: bool = False  # replicated-job or global-job: its tasks run to completion
    tty: bool = False
    # names of the configs and secrets that Swarm's PreviousSpec uses (a rollback needs them)
    previous_configs: tuple[str, ...] = ()
    previous_secrets: tuple[str, ...] = ()
    container_digest: str = ""  # of the spec's ContainerSpec: which tasks run the current one
    job_iteration: int | None = None  # a job's run: Swarm starts a new one at each spec change
    restart_condition: str = "any"  # the task template's RestartPolicy: none, on-failure, any
    max_attempts: int = 0  # restarts of a failed task before Swarm gives up (0: no limit)

    @property
    def mode(self) -> str:
        """replicated, global, replicated-job or global-job, as the CLI names them."""
        return ("global" if self.replicas is None else "replicated") + ("-job" if self.job else "")


def service_of(attrs: Mapping) -> Service:
    spec = attrs["Spec"]
    tt = spec.get("TaskTemplate") or {}
    cs = tt.get("ContainerSpec") or {}
    mode = spec.get("Mode") or {}
    upd, ep = spec.get("UpdateConfig") or {}, spec.get("EndpointSpec") or {}
    status = attrs.get("UpdateStatus") or {}
    previous = ((attrs.get("PreviousSpec") or {}).get("TaskTemplate") or {}).get(
        "ContainerSpec"
    ) or {}
    return Service(
        id=attrs.get("ID", ""),
        name=spec["Name"],
        version=(attrs.get("Version") or {}).get("Index", 0),
        image=cs.get("Image", ""),
        replicas=(
            None
            if "Global" in mode or "GlobalJob" in mode
            else (mode.get("ReplicatedJob") or {}).get("TotalCompletions", 1)
            if "ReplicatedJob" in mode
            else (mode.get("Replicated") or {}).get("Replicas", 1)
        ),
        constraints=tuple((tt.get("Placement") or {}).get("Constraints") or ()),
        labels=dict(spec.get("Labels") or {}),
        endpoint_mode=ep.get("Mode", "vip"),
        update_state=status.get("State", ""),
        update_message=status.get("Message", ""),
        previous_image=previous.get("Image", ""),
        args=tuple(cs.get("Args") or ()),
        env=tuple(cs.get("Env") or ()),
        mounts=tuple(
            Mount(m["Source"], m["Target"], m.get("Type", "bind"), bool(m.get("ReadOnly")))
            for m in cs.get("Mounts") or []
        ),
        ports=tuple(
            (p["PublishedPort"], p["TargetPort"], p.get("PublishMode", "ingress"))
            for p in ep.get("Ports") or []
        ),
        network_ids=tuple(n["Target"] for n in tt.get("Networks") or spec.get("Networks") or []),
        reserve_bytes=((tt.get("Resources") or {}).get("Reservations") or {}).get("MemoryBytes", 0),
        update_delay=upd.get("Delay", 0) // NS,
        update_order=upd.get("Order", "stop-first"),
        update_failure=upd.get("FailureAction", "pause"),
        stop_grace=cs.get("StopGracePeriod", 10 * NS) // NS,
        configs=tuple(
            (c["ConfigID"], c["ConfigName"], c["File"]["Name"]) for c in cs.get("Configs") or []
        ),
        secrets=tuple(
            (c["SecretID"], c["SecretName"], c["File"]["Name"]) for c in cs.get("Secrets") or []
        ),
        job="ReplicatedJob" in mode or "GlobalJob" in mode,
        tty=bool(cs.get("TTY")),
        previous_configs=tuple(c["ConfigName"] for c in previous.get("Configs") or []),
        previous_secrets=tuple(c["SecretName"] for c in previous.get("Secrets") or []),
        container_digest=_digest(cs),
        job_iteration=((attrs.get("JobStatus") or {}).get("JobIteration") or {}).get("Index"),
        restart_condition=(tt.get("RestartPolicy") or {}).get("Condition", "any"),
        max_attempts=(tt.get("RestartPolicy") or {}).get("MaxAttempts", 0),
    )


def _update_job(api, svc: Mapping, labels: Mapping[str, str]) -> None:
    """POST /services/{id}/update of a job with its spec as read (its new image in it) and
    `labels`: the SDK's update_service sends UpdateConfig and RollbackConfig whatever the mode,
    and Swarm refuses them for a job ("Jobs may not have an update config")."""
    spec = {k: v for k, v in svc["Spec"].items() if k not in ("UpdateConfig", "RollbackConfig")}
    registry, _ = docker.auth.resolve_repository_name(
        spec["TaskTemplate"]["ContainerSpec"]["Image"]
    )
    header = docker.auth.get_config_header(api, registry)
    res = api._post_json(
        api._url("/services/{0}/update", svc["ID"]),
        params={"version": svc["Version"]["Index"]},
        data={**spec, "Labels": dict(labels)},
        headers={"X-Registry-Auth": header} if header else {},
    )
    api._raise_for_status(res)


def _digest(container_spec: Mapping) -> str:
    """A fingerprint of a ContainerSpec: a task is created with a copy of its service's, so
    equal fingerprints tell the tasks that run the service's current spec."""
    return hashlib.sha256(json.dumps(container_spec, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Task:
    """One task of a service: where it runs, what, and how it ended."""

    id: str
    service_id: str
    node_id: str
    state: str  # Swarm's task state: new ... running, complete, failed, shutdown, rejected
    desired_state: str
    image: str
    error: str = ""
    message: str = ""
    slot: int | None = None  # None in global mode
    container_id: str = ""
    exit_code: int | None = None
    timestamp: str = ""  # when it reached its state (Engine API text; `engine_time` reads it)
    created_at: str = ""
    updated_at: str = ""
    container_digest: str = ""  # as Service.container_digest, of the spec it was created with
    job_iteration: int | None = None  # a job's task: the run (Service.job_iteration) it belongs to


def task_of(attrs: Mapping) -> Task:
    status = attrs.get("Status") or {}
    container = status.get("ContainerStatus") or {}
    cs = (attrs.get("Spec") or {}).get("ContainerSpec") or {}
    return Task(
        id=attrs.get("ID", ""),
        service_id=attrs.get("ServiceID", ""),
        node_id=attrs.get("NodeID", ""),
        state=status.get("State", ""),
        desired_state=attrs.get("DesiredState", ""),
        image=cs.get("Image", ""),
        error=status.get("Err", ""),
        message=status.get("Message", ""),
        slot=attrs.get("Slot"),
        container_id=container.get("ContainerID", ""),
        exit_code=container.get("ExitCode"),
        timestamp=status.get("Timestamp", ""),
        created_at=attrs.get("CreatedAt", ""),
        updated_at=attrs.get("UpdatedAt", ""),
        container_digest=_digest(cs),
        job_iteration=(attrs.get("JobIteration") or {}).get("Index"),
    )


@dataclass(frozen=True)
class Node:
    """One entry of the swarm's node list, as a manager sees it."""

    id: str
    hostname: str
    role: str  # manager | worker
    status: str  # ready | down | unknown | disconnected
    availability: str = "active"
    labels: Mapping[str, str] = field(default_factory=dict)
    leader: bool = False
    reachability: str = ""  # a manager's: reachable | unreachable
    addr: str = ""
    os: str = ""
    arch: str = ""
    engine_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def schedulable(self) -> bool:
        """A node the scheduler places new tasks on: ready, and not paused or drained."""
        return self.status == "ready" and self.availability == "active"


def node_of(attrs: Mapping) -> Node:
    spec, status = attrs.get("Spec") or {}, attrs.get("Status") or {}
    desc = attrs.get("Description") or {}
    ms = attrs.get("ManagerStatus") or {}
    platform = desc.get("Platform") or {}
    return Node(
        id=attrs["ID"],
        hostname=desc.get("Hostname", attrs["ID"][:12]),
        role=spec.get("Role", "worker"),
        status=status.get("State", "unknown"),
        availability=spec.get("Availability", "active"),
        labels=dict(spec.get("Labels") or {}),
        leader=bool(ms.get("Leader")),
        reachability=ms.get("Reachability", ""),
        addr=status.get("Addr", ""),
        os=platform.get("OS", ""),
        arch=platform.get("Architecture", ""),
        engine_labels=dict((desc.get("Engine") or {}).get("Labels") or {}),
    )


@dataclass(frozen=True)
class NodeInfo:
    """What a node's own engine says about its swarm membership (`docker info`)."""

    name: str
    address: str
    state: str  # inactive | pending | active | error | locked
    node_id: str = ""
    cluster_id: str = ""
    manager: bool = False
    node_addr: str = ""  # the address Swarm knows it by

    @property
    def controls(self) -> bool:
        """An active manager that has the swarm's control plane (can answer swarm requests)."""
        return self.state == "active" and self.manager


def info_of(name: str, address: str, engine_info: Mapping) -> NodeInfo:
    sw = engine_info.get("Swarm") or {}
    return NodeInfo(
        name=name,
        address=address,
        state=sw.get("LocalNodeState", "inactive"),
        node_id=sw.get("NodeID", ""),
        cluster_id=(sw.get("Cluster") or {}).get("ID", ""),
        manager=bool(sw.get("ControlAvailable")),
        node_addr=sw.get("NodeAddr", ""),
    )


@dataclass(frozen=True)
class Config:
    """A Swarm config (the records' store): `data` only when read one by one."""

    id: str
    name: str
    version: int
    labels: Mapping[str, str] = field(default_factory=dict)
    data: bytes = b""


@dataclass(frozen=True)
class Secret:
    """A Swarm secret as listed: never its data (the engine does not give it)."""

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def config_of(attrs: Mapping) -> Config:
    spec = attrs["Spec"]
    return Config(
        attrs["ID"],
        spec["Name"],
        attrs["Version"]["Index"],
        dict(spec.get("Labels") or {}),
        base64.b64decode(spec.get("Data") or b""),
    )


# -- to the engine ---------------------------------------------------------------------------
def aliased(networks: Sequence[Mapping] | None, suffix: str) -> list[dict] | None:
    """Network attachments with each alias A as A+`suffix`: a copy of a stack service that
    kept `api` would answer as `api` too and take the running service's traffic."""
    if networks is None:
        return None
    return [
        {**n, "Aliases": [a + suffix for a in n["Aliases"]]} if n.get("Aliases") else dict(n)
        for n in networks
    ]


def template_beside(
    template: Mapping[str, Any], image: str, suffix: str, foreign: Collection[str] = ()
) -> dict[str, Any]:
    """A TaskTemplate for a service beside the one it is copied from: `image`, its network
    aliases suffixed (`aliased`), its containers without the labels in `foreign` (a stack's
    namespace: the copy is no member of the stack), no ForceUpdate counter."""
    out = copy.deepcopy(dict(template))
    out.pop("ForceUpdate", None)
    container = out["ContainerSpec"]
    container["Image"] = image
    if container.get("Labels"):
        container["Labels"] = {k: v for k, v in container["Labels"].items() if k not in foreign}
    if out.get("Networks"):
        out["Networks"] = aliased(out["Networks"], suffix)
    return out


def spec_with_image(spec: Mapping[str, Any], image: str) -> dict[str, Any]:
    """A full ServiceSpec (as `stackplan` writes one) that wants `image` instead."""
    template = dict(spec["TaskTemplate"])
    template["ContainerSpec"] = {**template["ContainerSpec"], "Image": image}
    return {**spec, "TaskTemplate": template}


def spec_request(spec: Mapping[str, Any], ids: Mapping[str, str]) -> dict:
    """The SDK's create/update arguments for a full ServiceSpec (as `stackplan` writes one),
    the networks, configs and secrets it names by name replaced by the IDs in `ids` (they were
    created after it was planned: the plan shown is the plan carried out)."""
    tt = dict(spec["TaskTemplate"])
    cs = dict(tt["ContainerSpec"])
    for key, ref in (("Configs", "ConfigID"), ("Secrets", "SecretID")):
        if cs.get(key):
            cs[key] = [{**r, ref: ids.get(r[ref], r[ref])} for r in cs[key]]
    if tt.get("Networks"):
        tt["Networks"] = [
            {**n, "Target": ids.get(n["Target"], n["Target"])} for n in tt["Networks"]
        ]
    return dict(
        name=spec["Name"],
        labels=spec.get("Labels"),
        task_template={**tt, "ContainerSpec": cs},
        mode=spec.get("Mode"),
        update_config=spec.get("UpdateConfig"),
        rollback_config=spec.get("RollbackConfig"),
        endpoint_spec=spec.get("EndpointSpec"),
    )


def service_request(
    spec,
    network_ids: Mapping[str, str],
    config_ids: Mapping[str, str],
    secret_ids: Mapping[str, str],
    monitor: int,
) -> dict:
    """The SDK's create/update arguments for a `services.ServiceSpec` (networks, configs and
    secrets by the IDs given; `monitor`: seconds of Swarm's update monitor period)."""
    mounts = [types.Mount.parse_mount_string(_cli_mount(m)) for m in spec.mounts]
    configs = [
        types.ConfigReference(config_ids[name], name, filename=target, mode=0o444)
        for name, target in spec.configs
    ]
    secrets = [
        types.SecretReference(secret_ids[name], name, filename=target, mode=0o400)
        for name, target in spec.secrets
    ]
    container = types.ContainerSpec(
        spec.image,
        args=list(spec.args) or None,
        env=list(spec.env) or None,
        mounts=mounts or None,
        stop_grace_period=spec.stop_grace * NS,
        configs=configs or None,
        secrets=secrets or None,
    )
    resources = types.Resources(mem_reservation=spec.reserve_mb * MB) if spec.reserve_mb else None
    template = types.TaskTemplate(
        container,
        resources=resources,
        placement=types.Placement(constraints=list(spec.constraints)),
        networks=[{"Target": network_ids[n]} for n in spec.networks] or None,
    )
    mode = (
        types.ServiceMode("global")
        if spec.replicas is None
        else types.ServiceMode("replicated", replicas=spec.replicas)
    )
    ports = [
        {"PublishedPort": p, "TargetPort": t, "Protocol": "tcp", "PublishMode": m}
        for p, t, m in spec.ports
    ]
    endpoint = types.EndpointSpec(mode=spec.endpoint_mode, ports=None)
    endpoint["Ports"] = ports
    update = types.UpdateConfig(
        parallelism=1,
        delay=spec.update_delay * NS,
        failure_action=spec.update_failure,
        order=spec.update_order,
        monitor=monitor * NS,
    )
    return dict(
        task_template=template,
        name=spec.name,
        mode=mode,
        endpoint_spec=endpoint,
        update_config=update,
        labels=dict(spec.labels),
    )


def _cli_mount(m: str) -> str:
    """`type=bind,source=A,target=B[,readonly]` -> the SDK's `A:B[:ro]` form."""
    parts = {k: v if sep else "1" for k, sep, v in (p.partition("=") for p in m.split(","))}
    return f"{parts['source']}:{parts['target']}" + (":ro" if "readonly" in parts else "")


# -- one node's engine ------------------------------------------------------------------------
def node_info(client, name: str, address: str = "") -> NodeInfo:
    with translated():
        return info_of(name, address, client.info())


def nodes(client) -> list[Node]:
    """The swarm's node list, asked to one manager's engine."""
    with translated():
        return [node_of(n) for n in client.api.nodes()]


def swarm_init(client, advertise_addr: str, port: int) -> None:
    with translated():
        client.swarm.init(advertise_addr=advertise_addr, listen_addr=f"0.0.0.0:{port}")


def swarm_join(client, manager, role: str, advertise_addr: str, port: int) -> None:
    """Join `client`'s node to the swarm of `manager` (a client of a manager that answers)."""
    with translated():
        tokens = manager.swarm.attrs["JoinTokens"]
        # The manager we talk to is alive; RemoteManagers may list a dead one first.
        remote = f"{manager.info()['Swarm']['NodeAddr']}:{port}"
        client.swarm.join(
            remote_addrs=[remote],
            join_token=tokens[role.capitalize()],
            advertise_addr=advertise_addr,
            listen_addr=f"0.0.0.0:{port}",
        )


def update_node(manager, node_id: str, **changes) -> None:
    """Change fields of a node's spec (Role, Labels...), at the version just read."""
    with translated():
        node = manager.nodes.get(node_id)
        node.update(dict(node.attrs["Spec"], **changes))


def set_node_label(manager, node_id: str, key: str, value: str) -> None:
    with translated():
        node = manager.nodes.get(node_id)
        labels = dict(node.attrs["Spec"].get("Labels") or {}, **{key: value})
        node.update(dict(node.attrs["Spec"], Labels=labels))


def remove_node(manager, node_id: str, role: str) -> None:
    if role == "manager":
        update_node(manager, node_id, Role="worker")  # a manager entry cannot be removed directly
    with translated():
        manager.nodes.get(node_id).remove(force=True)


def leave_swarm(client) -> None:
    """Straight to the API: docker-py's `client.swarm` inspects the swarm first, which a manager
    whose cluster lost quorum (its peers left first) cannot answer; a forced leave still works."""
    with translated():
        client.api.leave_swarm(force=True)


def registry_digest(client, ref: str) -> str:
    """The digest a registry has for `ref`, asked through a node's engine (NotFound, or the
    registry's own error as APIFailure, when it has none)."""
    with translated():
        return client.images.get_registry_data(ref).id


def image_tags(client) -> set[tuple[str, str]]:
    """(tag, image ID) of every tagged image of an engine, from one list call (the SDK's
    `images.list()` inspects each image after listing them)."""
    with translated():
        return {(tag, i["Id"]) for i in client.api.images() for tag in i.get("RepoTags") or ()}


def login(client, user: str, password: str, registry: str) -> None:
    """A node's engine logs in to a registry (proving its address, CA and the password)."""
    with translated():
        client.login(user, password, registry=registry, reauth=True)


def pull(client, image: str) -> None:
    """Pull `image` (NAME:TAG, NAME@DIGEST or NAME:TAG@DIGEST) into a node's engine."""
    repo, _, digest = image.partition("@")
    with translated():
        client.api.pull(repo.rsplit(":", 1)[0], tag=digest or repo.rsplit(":", 1)[1])


def exec_in(client, container_id: str, argv: Sequence[str]) -> tuple[int | None, str]:
    """(exit code, output) of a command run in a container on a node's engine (docker exec)."""
    with translated():
        exec_id = client.api.exec_create(container_id, list(argv))["Id"]
        out = client.api.exec_start(exec_id).decode(errors="replace")
        return client.api.exec_inspect(exec_id).get("ExitCode"), out


KILLED_PROBE = 137  # a health probe's exit code when SIGKILL ended it (its container stopping)


def health_output(container: Mapping) -> str:
    """The last failing health check of a container (its inspect data) in a few words: its
    output, the command, its exit code and how many probes failed in a row; '' if none failed.
    A check that prints nothing (`HEALTHCHECK CMD false`) is still named by the rest."""
    health = (container.get("State") or {}).get("Health") or {}
    failed = [h for h in health.get("Log") or [] if h.get("ExitCode") != 0]
    if not failed:
        return ""
    # The last probe that said something, else the last one not cut short: a probe killed as
    # the container stops prints nothing and exits 137 (CI named `false` by that 137).
    probe = next((h for h in reversed(failed) if (h.get("Output") or "").strip()), None) or next(
        (h for h in reversed(failed) if h.get("ExitCode") != KILLED_PROBE), failed[-1]
    )
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


def container_health(client, container_id: str) -> str:
    """The failing health check of a container on a node's engine ('' when it passes)."""
    with translated():
        return health_output(client.api.inspect_container(container_id))


def _end(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left(end: float | None) -> dict[str, float]:
    """A request's `timeout` argument: what is left until `end` (none: the client's own)."""
    return {} if end is None else {"timeout": max(0.1, end - time.monotonic())}


# -- a session with a cluster's managers --------------------------------------------------------
class Gateway:
    """A cluster's managers as one: every call goes to the manager found by the last probe;
    a transient error forgets it and, within RETRY_WITHIN seconds, probes again and retries
    (unless the call says `retry=False`: a create that may have gone through). `client_of(node)`
    gives a node's client (a cached one; `forget(node)` drops it from that cache)."""

    def __init__(
        self,
        env: str,
        managers: Sequence[str],
        client_of: Callable[[str], Any],
        forget: Callable[[str], None] = lambda node: None,
        log: Callable[[str], None] = lambda line: None,
        within: float = RETRY_WITHIN,
    ):
        self.env, self.managers, self.log, self.within = env, tuple(managers), log, within
        self._client_of, self._forget = client_of, forget
        self._name: str | None = None
        self._mutex = threading.Lock()

    @classmethod
    def of_client(cls, client, name: str = "manager") -> Gateway:
        """A session with one engine (a single-node swarm, or a test's stand-in)."""
        return cls(name, [name], lambda node: client)

    # the manager that answers
    def _manager(self) -> tuple[str, Any]:
        with self._mutex:
            if self._name is None:
                self._name = self._probe()
            return self._name, self._client_of(self._name)

    def _probe(self) -> str:
        for node in self.managers:
            try:
                info = node_info(self._client_of(node), node)
            except (UnknownHostKey, HostKeyChanged):
                raise  # not "no manager answers": the user must decide about the key
            except Exception:  # EngineError, or a cached client whose engine went away
                self._forget(node)
                continue
            if info.controls:
                return node
        raise Unreachable(f"no manager of {self.env} answers: run `inv provision --env {self.env}`")

    def _drop(self, name: str | None) -> None:
        with self._mutex:
            if name is not None and self._name == name:
                self._name = None
                self._forget(name)

    def manager_name(self) -> str:
        """The node that answers for the cluster now (probed if none did yet)."""
        return self._manager()[0]

    def call(self, op: Callable[[Any], T], retry: bool = True, within: float | None = None) -> T:
        """`op(client)` on the manager that answers, errors translated: the one retry policy
        (`within`: seconds to keep trying, the session's by default)."""
        deadline = time.monotonic() + (self.within if within is None else within)
        failed_over = False
        while True:
            name = None
            try:
                name, client = self._manager()
                with translated():
                    return op(client)
            except (APIFailure, Unreachable) as exc:
                # No manager at all answers a first probe: a cluster that is down, said at once.
                if not transient(exc) or (name is None and not failed_over):
                    raise
                self._drop(name)
                if not retry or time.monotonic() > deadline:
                    raise
                failed_over = True
                self.log(
                    f"{self.env}: manager {name or '-'} did not answer "
                    f"({_first_line(str(exc))}); asking another one"
                )
                time.sleep(RETRY_PAUSE)

    # services and tasks
    def services(self) -> list[Service]:
        return self.call(lambda c: [service_of(s) for s in c.api.services()])

    def service(self, name: str) -> Service | None:
        try:
            return self.call(lambda c: service_of(c.api.inspect_service(name)))
        except NotFound:
            return None

    def create_service(self, **kwargs) -> None:
        """A service from `docker.types` arguments (services.ServiceSpec.api_kwargs). Not
        retried: a create whose answer was lost would then fail on its own name."""
        self.call(lambda c: c.api.create_service(**kwargs), retry=False)

    def update_service(self, name: str, /, **kwargs) -> None:
        """Replace a service's spec by these arguments (the SDK's update_service ones, `name`
        among them where a full spec is given), at the version read just before."""

        def update(c) -> None:
            current = c.api.inspect_service(name)
            c.api.update_service(current["ID"], current["Version"]["Index"], **kwargs)

        self.call(update)

    def update_image(
        self,
        name: str,
        image: str,
        before: Callable[[], None] = lambda: None,
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """`docker service update --image [--label-add]`: only the image (and these service
        labels) change. False when it already runs (labels untouched). `before()` runs right
        before each attempt (a lock's check: it may raise)."""

        def update(c) -> bool:
            before()
            svc = c.api.inspect_service(name)
            template = svc["Spec"]["TaskTemplate"]
            if template["ContainerSpec"]["Image"] == image:
                return False
            have = dict(svc["Spec"].get("Labels") or {})
            template["ContainerSpec"]["Image"] = image
            if {"ReplicatedJob", "GlobalJob"} & set(svc["Spec"].get("Mode") or {}):
                _update_job(c.api, svc, {**have, **(labels or {})})
                return True
            c.api.update_service(
                svc["ID"],
                svc["Version"]["Index"],
                task_template=template,
                labels={**have, **labels} if labels else None,
                fetch_current_spec=True,
            )
            return True

        return self.call(update)

    def create_beside(
        self,
        model: str,
        name: str,
        image: str,
        replicas: int,
        labels: Mapping[str, str],
        suffix: str,
        foreign: Collection[str] = (),
    ) -> None:
        """A service with `model`'s task template, networks and endpoint under another name,
        image, replica count and labels (a canary beside the running service): see
        `template_beside` for `suffix` and `foreign`. Not retried: a create whose answer was
        lost would then fail on its own name."""

        def create(c) -> None:
            spec = c.api.inspect_service(model)["Spec"]
            c.api.create_service(
                template_beside(spec["TaskTemplate"], image, suffix, foreign),
                name=name,
                labels=dict(labels),
                mode={"Replicated": {"Replicas": replicas}},
                networks=aliased(spec.get("Networks"), suffix),
                endpoint_spec=spec.get("EndpointSpec"),
            )

        self.call(create, retry=False)

    def _remove(self, fn: Callable[[Any], Any], **kw) -> bool:
        """`fn` (a removal) through a manager: False when the object was already gone."""
        try:
            self.call(fn, **kw)
            return True
        except NotFound:
            return False

    def remove_service(self, name: str) -> bool:
        """False when there was none."""
        return self._remove(lambda c: c.api.remove_service(name))

    def service_specs(self, labels: Mapping[str, str]) -> dict[str, Mapping[str, Any]]:
        """name -> Engine API ServiceSpec of the services with these labels: for the stack
        planner, which writes specs as `docker stack deploy` does and compares spec to spec."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        return self.call(
            lambda c: {x["Spec"]["Name"]: x["Spec"] for x in c.api.services(filters=filters)}
        )

    def service_logs(self, service_id: str, **kwargs) -> Iterator[bytes]:
        """A service's log stream (the SDK's service_logs arguments), errors translated also
        while it streams."""
        stream = self.call(lambda c: c.api.service_logs(service_id, **kwargs))
        with translated():
            yield from stream

    def tasks(self, service: str | None, desired_state: str | None = None) -> list[Task]:
        """The tasks of a service (its name or ID; None: of every service), optionally only
        those of a desired state."""
        filters = {
            **({"service": service} if service else {}),
            **({"desired-state": desired_state} if desired_state else {}),
        }
        return self.call(lambda c: [task_of(t) for t in c.api.tasks(filters=filters)])

    def nodes(self) -> list[Node]:
        return self.call(nodes)

    def clock(self) -> datetime:
        """The manager's clock (task timestamps are by it)."""
        return self.call(lambda c: engine_time(c.info()["SystemTime"]))

    def registry_digest(self, ref: str) -> str:
        return self.call(lambda c: registry_digest(c, ref))

    # networks, secrets, configs
    def networks(self) -> dict[str, str]:
        """name -> ID."""
        return self.call(lambda c: {n["Name"]: n["Id"] for n in c.api.networks()})

    def create_network(
        self,
        name: str,
        labels: Mapping[str, str],
        driver: str = "overlay",
        attachable: bool = True,
        **more,
    ) -> str:
        """Its ID. `more`: the SDK's other create_network arguments (scope, internal, options)."""
        return self.call(
            lambda c: c.api.create_network(
                name, driver=driver, attachable=attachable, labels=dict(labels), **more
            )["Id"],
            retry=False,
        )

    def secrets(self) -> dict[str, str]:
        """name -> ID."""
        return self.call(lambda c: {s["Spec"]["Name"]: s["ID"] for s in c.api.secrets()})

    def secret_list(self) -> list[Secret]:
        return self.call(
            lambda c: [
                Secret(s["ID"], s["Spec"]["Name"], dict(s["Spec"].get("Labels") or {}))
                for s in c.api.secrets()
            ]
        )

    def remove_secret(self, secret_id: str) -> bool:
        """False when it was already gone."""
        return self._remove(lambda c: c.api.remove_secret(secret_id))

    def create_secret(self, name: str, data: bytes, labels: Mapping[str, str]) -> str:
        """Its ID."""
        return self.call(
            lambda c: c.api.create_secret(name, data, labels=dict(labels))["ID"], retry=False
        )

    def configs(
        self, name: str | None = None, labels: Mapping[str, str] | None = None, data: bool = False
    ) -> list[Config]:
        """Configs by name or labels; their data only with `data` (one list call where the
        engine's list carries it; each one read where it does not)."""
        filters = {
            **({"name": name} if name else {}),
            **({"label": [f"{k}={v}" for k, v in labels.items()]} if labels else {}),
        }

        def read(c) -> list[Config]:
            out = []
            for x in c.api.configs(filters=filters or None):
                if name and x["Spec"]["Name"] != name:
                    continue
                if not data:
                    x = {**x, "Spec": {**x["Spec"], "Data": ""}}
                elif x["Spec"].get("Data") is None:
                    x = c.api.inspect_config(x["ID"])
                out.append(config_of(x))
            return out

        return self.call(read)

    def config(self, ref: str, timeout: float | None = None) -> Config:
        """One config with its data, by ID or name (NotFound); `timeout`: seconds it may take
        in all, retries included (docker-py's inspect_config takes none)."""
        end = _end(timeout)

        def read(c) -> Config:
            api = c.api
            res = api._get(api._url("/configs/{0}", ref), **_left(end))
            return config_of(api._result(res, True))

        return self.call(read, within=timeout)

    def create_config(
        self, name: str, data: bytes, labels: Mapping[str, str], retry: bool = True
    ) -> str:
        """Its ID; Conflict when the name is taken (`retry=False` where a create whose answer
        was lost must not be taken for someone else's)."""
        return self.call(
            lambda c: c.api.create_config(name, data, labels=dict(labels))["ID"], retry=retry
        )

    def update_config_labels(
        self, config: Config, labels: Mapping[str, str], timeout: float | None = None
    ) -> None:
        """POST /configs/{id}/update at the version read (docker-py 7.1 has no update_config).
        Swarm refuses it when the config changed since (APIFailure) or is gone (NotFound): the
        caller reads again, so it is not retried. `timeout`: seconds it may take."""

        def update(c) -> None:
            api = c.api
            res = api._post_json(
                api._url("/configs/{0}/update", config.id),
                params={"version": config.version},
                data={"Name": config.name, "Labels": dict(labels)},
                **({} if timeout is None else {"timeout": timeout}),
            )
            api._raise_for_status(res)

        self.call(update, retry=False)

    def remove_config(self, config_id: str, timeout: float | None = None) -> bool:
        """False when it was already gone; `timeout`: seconds it may take in all."""
        end = _end(timeout)

        def remove(c) -> None:
            api = c.api
            api._raise_for_status(api._delete(api._url("/configs/{0}", config_id), **_left(end)))

        return self._remove(remove, within=timeout)
