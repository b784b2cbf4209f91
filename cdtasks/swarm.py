"""Swarm membership and node labels: read the state, plan the difference, apply only that.

Plans are plain data (tuples of actions), so the logic is tested without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import gateway
from .config import ClusterSettings
from .gateway import Node, NodeInfo
from .log import Log

SWARM_PORT = 2377


class SwarmError(RuntimeError):
    """The cluster cannot be brought to the wanted state; the message names the node."""


@dataclass(frozen=True)
class Action:
    kind: str  # init | join | remove | promote | demote | label
    node: str  # node name (hostname)
    detail: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.kind} {self.node}" + (f" ({extra})" if extra else "")


def plan_membership(
    cluster: ClusterSettings, infos: Mapping[str, NodeInfo], members: Sequence[Node]
) -> tuple[Action, ...]:
    """Init, joins, role changes and removal of stale entries that make the swarm match NODES."""
    want_role = {n: ("worker" if n in cluster.workers else "manager") for n in cluster.nodes}
    anchor = next((infos[n] for n in cluster.managers if n in infos and infos[n].controls), None)
    actions: list[Action] = []
    if anchor is None:
        first = cluster.leader
        if infos[first].state != "inactive":
            raise SwarmError(
                f"node {first} is in swarm state {infos[first].state!r}, "
                f"not part of a healthy cluster; destroy and provision it again"
            )
        actions.append(Action("init", first))
    # Membership is decided by the node's ID in our manager's node list: `docker info` gives
    # the cluster ID to managers only, so a worker's own view cannot tell.
    ours = {m.id for m in members}
    by_host: dict[str, list[Node]] = {}
    for m in members:
        by_host.setdefault(m.hostname, []).append(m)
    for name in cluster.nodes:
        info = infos[name]
        # Entries for this hostname that are not the node running now: left by a machine
        # that was removed and recreated. Remove them so `docker node ls` tells the truth.
        # A new machine (inactive) makes every entry of its hostname stale, even one that Swarm
        # still shows Ready: a lost manager stays Ready/Unreachable for some seconds.
        for m in by_host.get(name, []):
            if m.id != info.node_id and (
                info.state == "inactive" or m.status != "ready" or m.reachability == "unreachable"
            ):
                actions.append(Action("remove", name, {"id": m.id, "role": m.role}))
        if anchor is None and name == cluster.leader:
            continue
        if info.state == "inactive":
            actions.append(Action("join", name, {"role": want_role[name]}))
        elif info.state == "active" and info.node_id not in ours:
            other = f" ({info.cluster_id[:12]})" if info.cluster_id else ""
            raise SwarmError(
                f"node {name} belongs to another swarm{other}; make it leave "
                f"(docker swarm leave --force) or destroy it"
            )
        elif info.state != "active":
            raise SwarmError(
                f"node {name} is in swarm state {info.state!r}; destroy and provision it again"
            )
        else:
            current = next((m.role for m in by_host.get(name, []) if m.id == info.node_id), None)
            if current and current != want_role[name]:
                actions.append(
                    Action("promote" if want_role[name] == "manager" else "demote", name)
                )
    return tuple(actions)


def plan_labels(cluster: ClusterSettings, members: Sequence[Node]) -> tuple[Action, ...]:
    """Labels to set so every node carries the labels NODE_LABELS gives it."""
    actions = []
    ready = {m.hostname: m for m in members if m.status == "ready"}
    for name in cluster.nodes:
        m = ready.get(name)
        if m is None:
            continue
        for key, value in sorted(cluster.labels_of(name).items()):
            if m.labels.get(key) != value:
                actions.append(Action("label", name, {"id": m.id, "key": key, "value": value}))
    return tuple(actions)


# -- reading and applying (the engine side) ---------------------------------------------------
def read(clients: Mapping, addresses: Mapping[str, str]) -> tuple[dict[str, NodeInfo], list[Node]]:
    infos = {n: gateway.node_info(c, n, addresses[n]) for n, c in clients.items()}
    manager = next((clients[n] for n, i in infos.items() if i.controls), None)
    return infos, gateway.nodes(manager) if manager else []


def _manager_client(clients: Mapping, cluster: ClusterSettings, env: str):
    for name in cluster.managers:
        if gateway.node_info(clients[name], name).controls:
            return clients[name]
    raise SwarmError(f"no manager of {env} answers")


def _side_by_side(action: Action) -> bool:
    """Workers' joins and labels change nothing another action depends on; init, managers'
    joins (each changes the Raft membership), removals and role changes go one at a time."""
    return action.kind == "label" or (action.kind == "join" and action.detail["role"] == "worker")


def apply(
    cluster: ClusterSettings,
    env: str,
    clients: Mapping,
    addresses: Mapping[str, str],
    actions: Sequence[Action],
    log: Log,
) -> None:
    """The one-at-a-time actions in order, then the others side by side, one node's (several
    labels update the same node spec) still in order."""

    def in_order(group: Sequence[Action]) -> None:
        for action in group:
            _apply_one(cluster, env, clients, addresses, action, log)

    in_order([a for a in actions if not _side_by_side(a)])
    per_node: dict[str, list[Action]] = {}
    for action in actions:
        if _side_by_side(action):
            per_node.setdefault(action.node, []).append(action)
    if per_node:
        with ThreadPoolExecutor(max_workers=len(per_node)) as pool:
            list(pool.map(in_order, per_node.values()))


def _apply_one(
    cluster: ClusterSettings,
    env: str,
    clients: Mapping,
    addresses: Mapping[str, str],
    action: Action,
    log: Log,
) -> None:
    log(f"{env}: {action}")
    if action.kind == "init":
        gateway.swarm_init(clients[action.node], addresses[action.node], SWARM_PORT)
        return
    manager = _manager_client(clients, cluster, env)
    if action.kind == "join":
        gateway.swarm_join(
            clients[action.node], manager, action.detail["role"], addresses[action.node], SWARM_PORT
        )
    elif action.kind == "remove":
        gateway.remove_node(manager, action.detail["id"], action.detail.get("role", "worker"))
    elif action.kind in ("promote", "demote"):
        node = next(m for m in gateway.nodes(manager) if m.hostname == action.node)
        gateway.update_node(
            manager, node.id, Role="manager" if action.kind == "promote" else "worker"
        )
    elif action.kind == "label":
        gateway.set_node_label(
            manager, action.detail["id"], action.detail["key"], action.detail["value"]
        )


def leave(node: str, client) -> bool:
    """Make the node leave its swarm; False if it was in none."""
    if gateway.node_info(client, node).state == "inactive":
        return False
    try:
        gateway.leave_swarm(client)
    except gateway.APIFailure as exc:
        raise SwarmError(f"node {node} cannot leave its swarm: {exc}") from None
    return True


def converge(
    cluster: ClusterSettings, env: str, clients: Mapping, addresses: Mapping[str, str], log: Log
) -> list[Action]:
    """Membership first, then labels (they need the node IDs the joins create)."""
    infos, members = read(clients, addresses)
    done = list(plan_membership(cluster, infos, members))
    apply(cluster, env, clients, addresses, done, log)
    if done:
        infos, members = read(clients, addresses)
    labels = plan_labels(cluster, members)
    apply(cluster, env, clients, addresses, labels, log)
    return done + list(labels)


IPVS_PROBE = "modprobe -q ip_vs 2>/dev/null; test -e /proc/net/ip_vs"


def routing_mode(
    cluster: ClusterSettings, source: str, probe_results: Mapping[str, bool]
) -> tuple[str, str]:
    """(mode, reason): the routing mesh when every node's kernel has IPVS, else dnsrr. `source`
    names the settings ROUTING came from."""
    if cluster.routing != "auto":
        return cluster.routing, f"ROUTING={cluster.routing} in {source}"
    lacking = sorted(n for n, ok in probe_results.items() if not ok)
    if lacking:
        return "dnsrr", (
            f"no IPVS in the kernel of {', '.join(lacking)}: services use host-mode "
            f"ports and DNS round robin instead of the routing mesh"
        )
    return "mesh", "IPVS available: routing mesh and virtual IPs"
