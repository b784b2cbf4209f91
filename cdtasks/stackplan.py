"""A stack model (stackfile.Stack) on a cluster: the Swarm objects it wants, the difference to
what runs as a Plan (data), and the calls that carry the plan out.

Names and labels are `docker stack deploy`'s (`NAME_service`, `com.docker.stack.namespace`,
`com.docker.stack.image`), so `docker stack services NAME` and `docker stack ps NAME` show what
this made. A service spec is compared field by field with the running one after dropping empty
values on both sides (Swarm omits zero values when it stores a spec), so a second run of an
unchanged file finds nothing to do. A config or secret is named by its content (stackfile.Blob):
a changed file is a new object that the services using it are updated to, and the stack's
objects other than the file's current ones (older generations, keys removed from the file) that
neither a service nor its previous spec use any more are retired.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from docker import types

from . import gateway, release
from .stackfile import NS, Service, Stack

NAMESPACE = "com.docker.stack.namespace"
IMAGE = "com.docker.stack.image"
# a config's or secret's name without its content hash: the generations of one file
BASE = "io.cdtasks.stack.base"


class StackError(ValueError):
    """The stack names something the cluster lacks (an image, an external network...)."""


# -- what the stack wants ----------------------------------------------------------------------
def adapt(stack: Stack, routing: str) -> tuple[Stack, tuple[str, ...]]:
    """Without IPVS (routing dnsrr): every service gets DNS round robin and host-mode ports
    instead of a VIP and the routing mesh. Returns the stack and the services it changed."""
    if routing != "dnsrr":
        return stack, ()
    changed, services = [], []
    for s in stack.services:
        new = replace(
            s,
            ports=tuple(replace(p, mode="host") for p in s.ports),
            deploy=replace(s.deploy, endpoint_mode="dnsrr"),
        )
        if new != s:
            changed.append(s.name)
        services.append(new)
    return replace(stack, services=tuple(services)), tuple(changed)


def _dropped(d: Mapping) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _policy(p) -> dict | None:
    if p is None:
        return None
    return _dropped(
        {
            # docker stack deploy's default parallelism is 1 (Swarm's API default is 0: all)
            "Parallelism": 1 if p.parallelism is None else p.parallelism,
            "Delay": p.delay,
            "FailureAction": p.failure_action or "pause",  # Swarm's default, stored
            "Monitor": p.monitor,
            "MaxFailureRatio": p.max_failure_ratio,
            "Order": p.order,
        }
    )


def _mode(s: Service) -> dict:
    """Written as the engine stores it (the SDK's ServiceMode writes "replicated", which the
    engine reads but returns as "Replicated")."""
    d = s.deploy
    n = 1 if d.replicas is None else d.replicas
    modes: dict[str, dict] = {
        "replicated": {"Replicated": {"Replicas": n}},
        "replicated-job": {"ReplicatedJob": {"MaxConcurrent": n, "TotalCompletions": n}},
        "global": {"Global": {}},
        "global-job": {"GlobalJob": {}},
    }
    return modes[d.mode]


def service_spec(
    stack: Stack,
    s: Service,
    network_ids: Mapping[str, str],
    config_ids: Mapping[str, str],
    secret_ids: Mapping[str, str],
) -> dict[str, Any]:
    """The Engine API ServiceSpec of one stack service (docker SDK types, which are dicts);
    objects not created yet are named by their Swarm name instead of an ID."""
    ns = {NAMESPACE: stack.name}
    by_key = {n.key: n.name for n in stack.networks}
    cfgs = {c.key: c.name for c in stack.configs}
    secs = {c.key: c.name for c in stack.secrets}
    vols = {v.key: v for v in stack.volumes}

    def ref(kind, ids: Mapping[str, str], names: Mapping[str, str], f):
        name = names[f.source]
        return kind(ids.get(name, name), name, filename=f.target, uid=f.uid, gid=f.gid, mode=f.mode)

    mounts = []
    for v in s.volumes:
        if v.type == "volume" and v.source:
            vol = vols[v.source]
            mounts.append(
                types.Mount(
                    v.target,
                    vol.name,
                    type="volume",
                    read_only=v.read_only,
                    labels=None if vol.external else {**dict(vol.labels), **ns},
                    driver_config=types.DriverConfig(vol.driver, dict(vol.driver_opts) or None)
                    if vol.driver
                    else None,
                )
            )
        else:
            mounts.append(
                types.Mount(v.target, v.source or None, type=v.type, read_only=v.read_only)
            )
    hc = s.healthcheck
    container = types.ContainerSpec(
        s.image,
        command=list(s.entrypoint) if s.entrypoint is not None else None,
        args=list(s.command) if s.command is not None else None,
        hostname=s.hostname,
        env=[f"{k}={v}" for k, v in s.environment] or None,
        workdir=s.working_dir,
        user=s.user,
        labels={**dict(s.labels), **ns},
        mounts=mounts or None,
        stop_grace_period=s.stop_grace_period,
        configs=[ref(types.ConfigReference, config_ids, cfgs, f) for f in s.configs] or None,
        secrets=[ref(types.SecretReference, secret_ids, secs, f) for f in s.secrets] or None,
        # the model's fields are the SDK's argument names
        healthcheck=types.Healthcheck(**{**asdict(hc), "test": list(hc.test)}) if hc else None,
    )
    d = s.deploy
    res = d.resources
    restart = d.restart_policy
    template = types.TaskTemplate(
        container,
        resources=types.Resources(**asdict(res)) if res else None,
        restart_policy=_dropped(
            {
                # compose's default condition is `any`, as Swarm's
                "Condition": restart.condition or "any",
                "Delay": restart.delay,
                "MaxAttempts": restart.max_attempts,
                "Window": restart.window,
            }
        )
        if restart
        else None,
        placement=types.Placement(
            constraints=list(d.constraints) or None,
            preferences=[("spread", p) for p in d.preferences] or None,
            maxreplicas=d.max_replicas_per_node,
        ),
        networks=[
            {
                "Target": network_ids.get(by_key[key], by_key[key]),
                # as docker stack deploy: the service's own name resolves on each network
                "Aliases": [s.name, *aliases],
            }
            for key, aliases in s.networks
        ]
        or None,
    )
    endpoint = types.EndpointSpec(mode=d.endpoint_mode)
    if s.ports:
        endpoint["Ports"] = [
            _dropped(
                {
                    "Protocol": p.protocol,
                    "TargetPort": p.target,
                    "PublishedPort": p.published,
                    "PublishMode": p.mode,
                }
            )
            for p in s.ports
        ]
    return _dropped(
        {
            "Name": stack.scoped(s.name),
            "Labels": {**dict(d.labels), **ns, IMAGE: s.image},
            "TaskTemplate": template,
            "Mode": _mode(s),
            "UpdateConfig": _policy(d.update_config),
            "RollbackConfig": _policy(d.rollback_config),
            "EndpointSpec": endpoint,
        }
    )


# -- the difference --------------------------------------------------------------------------
# What `inv services` compares, by the names the stack file gives them.
IMAGE_AT = ("TaskTemplate", "ContainerSpec", "Image")
FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("image", IMAGE_AT),
    ("entrypoint", ("TaskTemplate", "ContainerSpec", "Command")),
    ("command", ("TaskTemplate", "ContainerSpec", "Args")),
    ("environment", ("TaskTemplate", "ContainerSpec", "Env")),
    ("hostname", ("TaskTemplate", "ContainerSpec", "Hostname")),
    ("labels", ("TaskTemplate", "ContainerSpec", "Labels")),
    ("user", ("TaskTemplate", "ContainerSpec", "User")),
    ("working_dir", ("TaskTemplate", "ContainerSpec", "Dir")),
    ("healthcheck", ("TaskTemplate", "ContainerSpec", "Healthcheck")),
    ("volumes", ("TaskTemplate", "ContainerSpec", "Mounts")),
    ("configs", ("TaskTemplate", "ContainerSpec", "Configs")),
    ("secrets", ("TaskTemplate", "ContainerSpec", "Secrets")),
    ("stop_grace_period", ("TaskTemplate", "ContainerSpec", "StopGracePeriod")),
    ("networks", ("TaskTemplate", "Networks")),
    ("deploy.mode", ("Mode",)),
    ("deploy.resources", ("TaskTemplate", "Resources")),
    ("deploy.restart_policy", ("TaskTemplate", "RestartPolicy")),
    ("deploy.placement", ("TaskTemplate", "Placement")),
    ("deploy.update_config", ("UpdateConfig",)),
    ("deploy.rollback_config", ("RollbackConfig",)),
    ("deploy.labels", ("Labels",)),
    ("deploy.endpoint_mode", ("EndpointSpec", "Mode")),
    ("ports", ("EndpointSpec", "Ports")),
)
UNORDERED = ("environment", "volumes", "configs", "secrets", "networks", "ports")


EMPTY: tuple[Any, ...] = (None, "", 0, False, {}, [])


def normal(value: Any) -> Any:
    """Empty values dropped (None, "", 0, False, {}, []), recursively: Swarm stores a spec
    without them."""
    if isinstance(value, Mapping):
        out = {k: normal(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in EMPTY}
    if isinstance(value, list | tuple):
        return [normal(v) for v in value]
    return value


def _at(spec: Mapping, path: Sequence[str]) -> Any:
    for k in path:
        spec = (spec or {}).get(k) if isinstance(spec, Mapping) else None  # type: ignore[assignment]
    return spec


# What the engine writes into a service's spec at its first update where the spec has none
# (seen on Engine 20.10: a release's `--image` update gave a worker with no `deploy:` these
# policies): the same service with or without them is no difference.
POLICY = {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5 * NS, "Order": "stop-first"}
DEFAULTS: dict[str, Any] = {
    "deploy.update_config": POLICY,
    "deploy.rollback_config": POLICY,
    "deploy.restart_policy": {"Condition": "any", "Delay": 5 * NS},
    "stop_grace_period": 10 * NS,
}


def defaulted(name: str, value: Any) -> Any:
    """`value` of the key `name` with the engine's defaults filled in: a whole policy where
    there is none, the monitor period and the restart delay where a policy omits them."""
    default = DEFAULTS.get(name)
    if default is None or value is None:
        return default if value is None else value
    if name == "deploy.restart_policy":
        return {"Delay": default["Delay"], **value} if value.get("Delay") is None else value
    if isinstance(default, dict):
        return {**value, "Monitor": value.get("Monitor") or default["Monitor"]}
    return value


def differences(want: Mapping, have: Mapping) -> list[tuple[str, str, str]]:
    """[(stack file key, wanted, running)] of a service spec against the running one."""
    out = []
    for name, path in FIELDS:
        # A key absent on one side and empty on the other (`docker stack deploy` writes
        # `Resources: {Limits: {}, Reservations: {}}`) is no difference.
        w, h = (
            None if v in EMPTY else v
            for v in (normal(defaulted(name, _at(s, path))) for s in (want, have))
        )
        if name == "deploy.mode":  # {"Global": {}} is a mode, not an empty value
            w, h = _at(want, path), _at(have, path)
        if name == "image" and isinstance(h, str) and "@sha256:" not in (w or ""):
            h = h.split("@sha256:")[0]  # a digest the CLI resolved; the file pins a tag
        if name in UNORDERED and isinstance(w, list) and isinstance(h, list):
            w, h = sorted(w, key=repr), sorted(h, key=repr)
        if w != h:
            shown = (_ref_names(w), _ref_names(h)) if name in REFS else (_show(w), _show(h))
            out.append(_replicas(w, h) or (name, *shown))
    return out


REFS = {"configs": "ConfigName", "secrets": "SecretName"}


def _ref_names(refs: Any) -> str:
    """Configs and secrets by their names: a new generation shows as a new hash."""
    names = sorted(r.get("ConfigName") or r.get("SecretName") or "?" for r in refs or [])
    return ", ".join(names) or "(none)"


def _replicas(w: Any, h: Any) -> tuple[str, str, str] | None:
    """A replicated service whose only change is its replicas: said as such."""
    if isinstance(w, Mapping) and isinstance(h, Mapping) and list(w) == list(h) == ["Replicated"]:
        return (
            "deploy.replicas",
            str(w["Replicated"].get("Replicas")),
            str(h["Replicated"].get("Replicas")),
        )
    return None


def _show(value: Any) -> str:
    if value in (None, {}, []):
        return "(none)"
    return value if isinstance(value, str) else repr(value)[:160]


# -- the plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    kind: str  # network | config | secret | service
    name: str  # the Swarm name
    # create | update | extra (a service the file lacks: left) | retire (a config or secret of
    # the stack, an older generation or one the file no longer declares, that no service nor
    # its previous spec uses once the plan is done)
    action: str
    keys: tuple[tuple[str, str, str], ...] = ()  # (key, wanted, running) of an update
    spec: Mapping[str, Any] | None = None  # a service's, to create or update with


@dataclass(frozen=True)
class Plan:
    stack: str
    routing: str
    adapted: tuple[str, ...]  # services given dnsrr and host-mode ports (no IPVS)
    changes: tuple[Change, ...]

    @property
    def drift(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action != "create")


@dataclass(frozen=True)
class Actual:
    """What the cluster runs of the stack: by Swarm name."""

    services: Mapping[str, Mapping]  # name -> running ServiceSpec, of this namespace
    networks: Mapping[str, str]  # name -> ID (every network of the cluster)
    configs: Mapping[str, tuple[str, Mapping[str, str]]]  # name -> (ID, labels)
    secrets: Mapping[str, tuple[str, Mapping[str, str]]]  # name -> (ID, labels)
    # every service of the cluster -> the ("config" | "secret", name) its spec uses, and those
    # its previous spec uses (what Swarm's rollback goes back to)
    uses: Mapping[str, tuple[frozenset[tuple[str, str]], frozenset[tuple[str, str]]]] = field(
        default_factory=dict
    )


def missing_external(stack: Stack, actual: Actual) -> list[str]:
    return [
        f"{kind} {obj.name} (external)"
        for kind, objs, have in (
            ("network", stack.networks, actual.networks),
            ("config", stack.configs, actual.configs),
            ("secret", stack.secrets, actual.secrets),
        )
        for obj in objs
        if obj.external and obj.name not in have
    ]


# Set on a stack service by a release (rollout.update), to the image it released: from then
# on that image, not the file's tag, is the wanted one.
RELEASED = "io.cdtasks.released"


def released(spec: dict[str, Any], running: Mapping) -> dict[str, Any]:
    """The file's spec, but wanting the image a release set while the file still names the
    same image (registry and tag aside): `inv services` must not put the file's 1.0 back over
    a release's 1.1 digest, and puts that digest back over an image changed by hand. A file
    that names another image wins."""
    mark = (running.get("Labels") or {}).get(RELEASED)
    if not mark or release.image_name(mark) != release.image_name(_at(spec, IMAGE_AT)):
        return spec
    labels = {**(spec.get("Labels") or {}), RELEASED: mark}
    return {**gateway.spec_with_image(spec, mark), "Labels": labels}


def plan(stack: Stack, actual: Actual, routing: str) -> Plan:
    """The changes that bring the cluster to the stack file, as data."""
    stack, adapted = adapt(stack, routing)
    changes = [
        Change("network", n.name, "create")
        for n in stack.networks
        if not n.external and n.name not in actual.networks
    ]
    blobs = (("config", stack.configs, actual.configs), ("secret", stack.secrets, actual.secrets))
    changes += [
        Change(kind, b.name, "create")
        for kind, objs, have in blobs
        for b in objs
        if not b.external and b.name not in have
    ]
    config_ids = {n: i for n, (i, _) in actual.configs.items()}
    secret_ids = {n: i for n, (i, _) in actual.secrets.items()}
    for s in stack.services:
        spec = service_spec(stack, s, actual.networks, config_ids, secret_ids)
        running = actual.services.get(spec["Name"])
        if running is None:
            changes.append(Change("service", spec["Name"], "create", spec=spec))
            continue
        spec = released(spec, running)
        keys = differences(spec, running)
        if keys:
            changes.append(Change("service", spec["Name"], "update", tuple(keys), spec))
    wanted = {stack.scoped(s.name) for s in stack.services}
    changes += [
        Change("service", name, "extra", (("service", "(not in the file)", "running"),))
        for name in sorted(actual.services)
        if name not in wanted
    ]
    kept = _kept(actual, changes)
    named = {(kind, b.name) for kind, objs, _ in blobs for b in objs}
    changes += [
        Change(kind, name, "retire")
        for kind, _, have in blobs
        for name in sorted(owned(stack.name, have))
        if (kind, name) not in named and (kind, name) not in kept
    ]
    return Plan(stack.name, routing, adapted, tuple(changes))


def owned(stack: str, have: Mapping[str, tuple[str, Mapping[str, str]]]) -> list[str]:
    """The stack's configs or secrets on the cluster (its namespace label): the hashed
    generations this module made, the plain names of a stack deployed before (or by `docker
    stack deploy`), and those of keys the file no longer declares, which would otherwise stay
    in the cluster for good."""
    return [name for name, (_, labels) in have.items() if labels.get(NAMESPACE) == stack]


def _kept(actual: Actual, changes: Sequence[Change]) -> set[tuple[str, str]]:
    """The configs and secrets that services and their previous specs use once the plan is
    done: an updated service's previous spec is the one it runs now (what a planned spec
    names is the file's current generation, never retired)."""
    updated = {c.name for c in changes if c.kind == "service" and c.action == "update"}
    kept: set[tuple[str, str]] = set()
    for name, (now, before) in actual.uses.items():
        kept |= now if name in updated else now | before
    return kept


# -- carrying it out ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Calls:
    """The Swarm operations a plan needs, given by the caller (the cluster's manager); the
    create calls return the new object's ID."""

    create_network: Callable[..., str]
    create_config: Callable[[str, bytes, Mapping[str, str]], str]
    create_secret: Callable[[str, bytes, Mapping[str, str]], str]
    remove_config: Callable[[str], object]  # by ID
    remove_secret: Callable[[str], object]
    # what every service's spec and previous spec use, read now: ("config" | "secret", name)
    in_use: Callable[[], set[tuple[str, str]]]
    # a planned ServiceSpec and the IDs of the objects it names (created after it was planned)
    create_service: Callable[[Mapping[str, Any], Mapping[str, str]], None]
    update_service: Callable[[str, Mapping[str, Any], Mapping[str, str]], None]


def apply(
    stack: Stack, p: Plan, calls: Calls, log: Callable[[str], None], update: bool
) -> list[str]:
    """Carry out the plan: create its networks, configs and secrets, then its services; with
    `update`, update the services that differ too."""
    done = []
    ids: dict[str, str] = {}
    ns = {NAMESPACE: stack.name}
    nets = {n.name: n for n in stack.networks}
    blobs = {b.name: b for b in stack.configs} | {b.name: b for b in stack.secrets}
    for c in p.changes:
        if c.action != "create" or c.kind == "service":
            continue
        log(f"creating {c.kind} {c.name}")
        if c.kind == "network":
            n = nets[c.name]
            ids[c.name] = calls.create_network(
                c.name,
                driver=n.driver,
                options=dict(n.driver_opts) or None,
                attachable=n.attachable,
                internal=n.internal,
                labels={**dict(n.labels), **ns},
            )
        else:
            b = blobs[c.name]
            create = calls.create_config if c.kind == "config" else calls.create_secret
            ids[c.name] = create(c.name, b.data, {**dict(b.labels), **ns, BASE: b.base})
        done.append(f"created {c.kind} {c.name}")
    for c in p.changes:
        if c.kind != "service" or c.spec is None:
            continue
        if c.action == "create":
            log(f"creating service {c.name} ({c.spec['Labels'][IMAGE]})")
            calls.create_service(c.spec, ids)
            done.append(f"created service {c.name}")
        elif c.action == "update" and update:
            keys = ", ".join(k for k, _, _ in c.keys)
            log(f"updating service {c.name}: {keys}")
            calls.update_service(c.name, c.spec, ids)
            done.append(f"updated service {c.name} ({keys})")
    return done


def retire(p: Plan, actual: Actual, calls: Calls, log: Callable[[str], None]) -> list[str]:
    """Remove the older generations the plan retires, once its services converged; one that a
    service or its previous spec uses by now (a rollback, someone's update) is left."""
    if not any(c.action == "retire" for c in p.changes):
        return []
    used = calls.in_use()
    done = []
    for c in p.changes:
        if c.action != "retire":
            continue
        if (c.kind, c.name) in used:
            log(f"keeping {c.kind} {c.name}: a service uses it again")
            continue
        log(f"removing {c.kind} {c.name}: the stack file no longer names it")
        if c.kind == "config":
            calls.remove_config(actual.configs[c.name][0])
        else:
            calls.remove_secret(actual.secrets[c.name][0])
        done.append(f"retired {c.kind} {c.name}")
    return done
