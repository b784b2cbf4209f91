"""services.diagnose and the transient-error rule with a fake gateway and fake nodes (pure
logic: which task, which node, which container; the real health checks fail in
tests/integration/test_7_faults.py)."""

from __future__ import annotations

import pytest
import requests
from docker.errors import APIError, NotFound

from cdtasks import gateway, services
from cdtasks.delivery import replicas_text
from cdtasks.gateway import Node, Service, Task


class FakeAPI:
    """A node engine's container inspect, as the SDK's low-level client answers it."""

    def __init__(self, containers=None):
        self._containers = containers or {}
        self.inspected = []

    def inspect_container(self, cid):
        self.inspected.append(cid)
        if cid not in self._containers:
            raise NotFound("no such container")
        return self._containers[cid]


class Fake:
    def __init__(self, api):
        self.api = api


class FakeGateway:
    """A manager's answers as the gateway gives them (models, not Engine API dictionaries)."""

    def __init__(self, tasks=(), nodes=()):
        self._tasks, self._nodes = list(tasks), list(nodes)

    def service(self, name):
        return Service(id="svc1", name=name, version=1, image="img:1", replicas=1)

    def tasks(self, service, desired_state=None):
        return self._tasks

    def nodes(self):
        return self._nodes


def task(state, node="n2", container="c1", err="", updated="2026-01-01T00:00:02Z"):
    return Task(
        id="t",
        service_id="svc1",
        node_id=node,
        state=state,
        desired_state="running",
        image="img:1",
        error=err,
        message=state,
        container_id=container,
        updated_at=updated,
    )


def health(*runs, test=("CMD", "python3", "/app/healthcheck.py")):
    failing = len(runs) - max((i + 1 for i, (code, _) in enumerate(runs) if code == 0), default=0)
    return {
        "Config": {"Healthcheck": {"Test": list(test)}},
        "State": {
            "Health": {
                "Status": "unhealthy",
                "FailingStreak": failing,
                "Log": [{"ExitCode": code, "Output": out} for code, out in runs],
            }
        },
    }


NODES = [
    Node("n2", "swarm-test-2", "worker", "ready"),
    Node("n3", "swarm-test-3", "worker", "ready"),
]


def test_a_failed_health_check_is_named_with_its_last_output_from_the_node_that_ran_it():
    manager = FakeGateway([task("failed", "n3", "c9", err="task: non-zero exit (137)")], NODES)
    node = Fake(FakeAPI(containers={"c9": health((0, "ok"), (1, "first\n"), (1, "DB  down\n"))}))
    asked = []

    def node_client(host):
        asked.append(host)
        return node

    why = services.diagnose(manager, "go-demo", node_client)
    assert asked == ["swarm-test-3"]
    assert why == (
        "task: non-zero exit (137): health check failed: DB down "
        "(`python3 /app/healthcheck.py`: exit code 1, 2 failed probes in a row)"
    )


def test_without_nodes_or_containers_the_tasks_own_words_remain():
    manager = FakeGateway([task("failed", err="no suitable node")], NODES)
    assert services.diagnose(manager, "go-demo") == "no suitable node"
    gone = Fake(FakeAPI())  # the container was removed: nothing to add
    assert services.diagnose(manager, "go-demo", lambda h: gone) == "no suitable node"


def test_running_tasks_are_not_inspected():
    manager = FakeGateway([task("running")], NODES)
    node = FakeAPI(containers={"c1": health((1, "old"))})
    assert (
        services.diagnose(manager, "go-demo", lambda h: Fake(node)) == "no task reported an error"
    )
    assert node.inspected == []


def test_health_output_is_the_last_failure_on_one_line():
    assert (
        gateway.health_output(health((1, "a\nb"), (0, "fine"), test=("NONE",)))
        == "a b (exit code 1)"
    )
    assert gateway.health_output(health((0, "fine"))) == ""
    # a probe cut short as the container stops says nothing: the last one that spoke is named
    assert (
        gateway.health_output(health((1, "DB down"), (137, ""), test=("NONE",)))
        == "DB down (exit code 1, 2 failed probes in a row)"
    )
    assert gateway.health_output({"State": {}}) == ""


def test_a_health_check_that_prints_nothing_is_named_by_command_exit_code_and_streak():
    silent = health((1, ""), (1, ""), (1, ""), test=("CMD", "false"))
    assert (
        gateway.health_output(silent)
        == "no output (`false`: exit code 1, 3 failed probes in a row)"
    )
    shell = health((0, "ok"), (2, "  \n"), test=("CMD-SHELL", "curl -f localhost || exit 2"))
    assert gateway.health_output(shell) == (
        "no output (`curl -f localhost || exit 2`: exit code 2, 1 failed probe in a row)"
    )
    # the last probe killed as the container stopped (CI saw `false`: exit code 137)
    stopped = health((1, ""), (1, ""), (137, ""), test=("CMD", "false"))
    assert gateway.health_output(stopped) == (
        "no output (`false`: exit code 1, 3 failed probes in a row)"
    )


def response(code):
    r = requests.Response()
    r.status_code, r.url, r.reason = code, "http://engine/v1.41/services", "x"
    return r


@pytest.mark.parametrize(
    "exc, expected",
    [
        (requests.exceptions.ConnectionError("refused"), True),
        (ConnectionRefusedError(), True),
        (APIError("rpc error: code = DeadlineExceeded desc = context deadline exceeded"), True),
        (APIError("boom", response=response(503)), True),
        (APIError("no such image", response=response(404), explanation="no such image"), False),
        (ValueError("a bug"), False),
    ],
)
def test_transient_errors(exc, expected):
    assert gateway.transient(exc) is expected


def test_replicas_text_says_what_each_replica_runs():
    assert replicas_text([("a", "img:1"), ("b", "img:1")]) == "img:1 on a, b"
    assert replicas_text([("a", "img:1"), ("b", "img:2")]) == "img:1 on a, img:2 on b"
    assert replicas_text([]) == "no replica"
