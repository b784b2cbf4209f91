"""services.wait_running and running_counts with a fake gateway: every look at a stack costs the
same few list calls whatever the number of services (on the loaded lab, a look of one inspect
and one or two task lists per service took seconds), and counts as the per-service reading did."""

from __future__ import annotations

import pytest

from cdtasks import services
from cdtasks.gateway import Node, Service, Task


def svc(sid, name, replicas, constraints=()):
    return Service(
        id=sid, name=name, version=1, image="img:1", replicas=replicas, constraints=constraints
    )


def task(sid, node, state="running"):
    return Task(
        id=f"{sid}-{node}",
        service_id=sid,
        node_id=node,
        state=state,
        desired_state="running",
        image="img:1",
    )


NODES = [
    Node("n1", "swarm-test-1", "manager", "ready"),
    Node("n2", "swarm-test-2", "manager", "ready"),
    Node("n3", "swarm-test-3", "manager", "ready", availability="drain"),
]


class ListingGateway:
    """A manager's lists, one look's tasks per call to `tasks` (the last one repeats); counts
    the calls."""

    def __init__(self, svcs, looks, nodes=NODES):
        self.svcs, self.looks, self.nodes_ = list(svcs), list(looks), list(nodes)
        self.calls: list[str] = []

    def services(self):
        self.calls.append("services")
        return self.svcs

    def tasks(self, service, desired_state=None):
        self.calls.append(f"tasks {service} {desired_state}")
        return self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]

    def nodes(self):
        self.calls.append("nodes")
        return self.nodes_


STACK = [
    svc("a", "team_api", 2),
    svc("p", "team_proxy", None, ("node.labels.env == prod-like",)),  # global, constrained
    svc("r", "registry", None),  # global on every schedulable node
    svc("s", "team_store", 1),
]


def test_one_look_is_one_list_of_services_and_of_tasks_whatever_the_number_of_services():
    tasks = [
        task("a", "n1"),
        task("a", "n2", state="starting"),  # desired running, not running yet
        task("p", "n1"),
        task("p", "n2"),
        task("r", "n1"),
        task("s", "n2"),
        task("x", "n2"),  # another service's
    ]
    gw = ListingGateway(STACK, [tasks])
    counts = services.running_counts(gw, ["team_api", "team_proxy", "registry", "team_store"])
    assert counts == {
        "team_api": (1, 2),
        "team_proxy": (2, 2),  # as many as the scheduler placed
        "registry": (1, 2),  # the drained node does not count
        "team_store": (1, 1),
    }
    assert gw.calls == ["services", "tasks None running", "nodes"]


def test_nodes_are_listed_only_for_a_global_service_without_constraints():
    gw = ListingGateway(STACK, [[task("a", "n1"), task("a", "n2")]])
    assert services.running_counts(gw, ["team_api", "team_proxy"]) == {
        "team_api": (2, 2),
        "team_proxy": (0, 1),  # placed nowhere yet: at least one
    }
    assert gw.calls == ["services", "tasks None running"]


def test_a_missing_service_is_named():
    gw = ListingGateway(STACK, [[]])
    with pytest.raises(services.ServiceError, match="service team_worker does not exist"):
        services.running_counts(gw, ["team_api", "team_worker"])


def test_wait_running_looks_until_every_replica_runs():
    looks = [
        [task("a", "n1", state="starting"), task("s", "n2")],
        [task("a", "n1"), task("a", "n2", state="starting"), task("s", "n2")],
        [task("a", "n1"), task("a", "n2"), task("s", "n2")],
    ]
    gw = ListingGateway(STACK, looks)
    lines: list[str] = []
    services.wait_running(gw, ["team_api", "team_store"], 30, lines.append, poll=0)
    assert lines == [
        "waiting: team_api 0/2, team_store 1/1",
        "waiting: team_api 1/2, team_store 1/1",
        "running: team_api 2/2, team_store 1/1",
    ]
    assert gw.calls == ["services", "tasks None running"] * 3


def test_wait_running_times_out_naming_what_is_short_and_why():
    gw = ListingGateway(STACK, [[task("s", "n2")]])
    gw.service = lambda name: next(s for s in STACK if s.name == name)  # for diagnose
    with pytest.raises(services.ServiceError, match=r"waiting for team_api: team_api: no task"):
        services.wait_running(gw, ["team_api", "team_store"], 0, lambda line: None, poll=0)
