"""The gateway's session: a manager probed once, another one after a transient error, one
retry policy, and the SDK's errors as the project's own (fake engines; the real failover is
tests/integration/test_7_faults.py's killed manager)."""

from __future__ import annotations

import pytest
import requests
from docker.errors import APIError, NotFound

from cdtasks import gateway
from cdtasks.engine import EngineError
from cdtasks.gateway import APIFailure, Conflict, Gateway, Unreachable

SERVICE = {
    "ID": "s1",
    "Version": {"Index": 7},
    "Spec": {
        "Name": "go-demo",
        "Mode": {"Replicated": {"Replicas": 2}},
        "TaskTemplate": {"ContainerSpec": {"Image": "img:1"}},
    },
    "UpdateStatus": {"State": "completed", "Message": "update completed"},
}


class Engine:
    """One manager's engine: `fail` raises on the next service calls, `manager` says whether it
    has the control plane."""

    def __init__(self, name: str, manager: bool = True):
        self.name, self.manager, self.fail, self.infos, self.calls = name, manager, [], 0, 0
        self.api = self

    def info(self):
        self.infos += 1
        return {"Swarm": {"LocalNodeState": "active", "ControlAvailable": self.manager}}

    def inspect_service(self, name):
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        return SERVICE

    def create_service(self, **kwargs):
        raise requests.exceptions.ConnectionError("connection reset")


def session(*engines: Engine, within: float = 5.0) -> tuple[Gateway, list[str]]:
    by_name, forgotten, lines = {e.name: e for e in engines}, [], []
    gw = Gateway(
        "test", list(by_name), by_name.__getitem__, forgotten.append, lines.append, within=within
    )
    return gw, forgotten


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(gateway, "RETRY_PAUSE", 0.0)


def test_the_manager_is_probed_once_and_a_worker_skipped():
    worker, m2 = Engine("n1", manager=False), Engine("n2")
    gw, _ = session(worker, m2)
    for _ in range(3):
        svc = gw.service("go-demo")
    assert (worker.infos, m2.infos, m2.calls) == (1, 1, 3)
    assert (svc.name, svc.image, svc.replicas, svc.update_state) == (
        "go-demo",
        "img:1",
        2,
        "completed",
    )


def test_a_transient_error_fails_over_to_another_manager():
    m1, m2 = Engine("n1"), Engine("n2")
    gw, forgotten = session(m1, m2)
    gw.service("go-demo")  # probes n1
    m1.fail = [APIError("rpc error: code = DeadlineExceeded desc = context deadline exceeded")]
    m1.manager = False  # it lost the control plane: the next probe passes it by
    assert gw.service("go-demo").id == "s1"
    assert forgotten == ["n1"] and gw.manager_name() == "n2"


def test_an_error_that_is_not_transient_is_not_retried_and_is_the_projects_own():
    m1, m2 = Engine("n1"), Engine("n2")
    m1.fail = [APIError("400 Client Error", explanation="invalid spec")]
    gw, forgotten = session(m1, m2)
    with pytest.raises(APIFailure, match="invalid spec"):
        gw.service("go-demo")
    assert (m1.calls, m2.calls, forgotten) == (1, 0, [])


def test_a_missing_service_is_none():
    m1 = Engine("n1")
    m1.fail = [NotFound("service go-demo not found")]
    assert session(m1)[0].service("go-demo") is None


def test_retries_stop_at_their_deadline():
    m1 = Engine("n1")
    m1.fail = [requests.exceptions.ConnectionError("refused")] * 1000
    gw, _ = session(m1, within=0.05)
    with pytest.raises(Unreachable, match="did not answer: refused"):
        gw.service("go-demo")
    assert 1 < m1.calls < 1000


def test_a_cluster_without_any_manager_is_said_at_once():
    gw, _ = session(Engine("n1", manager=False), within=30)
    with pytest.raises(EngineError, match="no manager of test answers"):
        gw.service("go-demo")


def test_a_create_is_not_retried():
    m1, m2 = Engine("n1"), Engine("n2")
    gw, forgotten = session(m1, m2)
    with pytest.raises(Unreachable):
        gw.create_service(name="go-demo")
    assert forgotten == ["n1"]  # but the next call asks another manager


@pytest.mark.parametrize(
    "exc, kind, status",
    [
        (NotFound("no such config"), gateway.NotFound, 404),
        (
            APIError(
                "409 Client Error",
                response=type("R", (), {"status_code": 409})(),
                explanation="name conflicts",
            ),
            Conflict,
            409,
        ),
        (ConnectionRefusedError(), Unreachable, None),
        (ValueError("a bug"), ValueError, None),
    ],
)
def test_sdk_errors_become_the_projects_own(exc, kind, status):
    found = gateway.translate(exc)
    assert type(found) is kind
    if status:
        assert found.status == status


def test_a_whole_spec_with_its_name_updates_the_service_at_the_version_read():
    """services.converge and the stack planner pass the SDK's arguments, `name` among them."""
    engine, updates = Engine("m1"), []
    engine.update_service = lambda *args, **kwargs: updates.append((args, kwargs))
    gw, _ = session(engine)
    gw.update_service("go-demo", name="go-demo", labels={"a": "b"})
    assert updates == [(("s1", 7), {"name": "go-demo", "labels": {"a": "b"}})]


def test_a_job_s_mode_and_completions_come_from_its_spec():
    job = {
        **SERVICE,
        "Spec": {**SERVICE["Spec"], "Mode": {"ReplicatedJob": {"TotalCompletions": 3}}},
    }
    svc = gateway.service_of(job)
    assert (svc.mode, svc.job, svc.replicas) == ("replicated-job", True, 3)
    every_node = gateway.service_of({**job, "Spec": {**job["Spec"], "Mode": {"GlobalJob": {}}}})
    assert (every_node.mode, every_node.replicas) == ("global-job", None)
    assert gateway.service_of(SERVICE).mode == "replicated"


def test_a_service_names_what_its_previous_spec_uses_and_which_tasks_run_its_spec():
    """A rollback needs the previous spec's configs and secrets; a task created from the
    current spec carries a copy of its ContainerSpec (key order aside), an older task another."""
    old = {"Image": "img:1", "Configs": [{"ConfigID": "c1", "ConfigName": "g-aaa", "File": {}}]}
    new = {
        "Image": "img:1",
        "Configs": [{"ConfigID": "c2", "ConfigName": "g-bbb", "File": {"Name": "/g"}}],
        "Secrets": [{"SecretID": "s2", "SecretName": "t-ccc", "File": {"Name": "t"}}],
    }
    svc = gateway.service_of(
        {
            **SERVICE,
            "Spec": {**SERVICE["Spec"], "TaskTemplate": {"ContainerSpec": new}},
            "PreviousSpec": {"TaskTemplate": {"ContainerSpec": {**old, "Secrets": []}}},
        }
    )
    assert svc.previous_configs == ("g-aaa",) and svc.previous_secrets == ()
    assert svc.configs == (("c2", "g-bbb", "/g"),)

    def task(spec):
        return gateway.task_of({"ID": "t", "Spec": {"ContainerSpec": spec}, "Status": {}})

    assert task(dict(reversed(new.items()))).container_digest == svc.container_digest
    assert task(old).container_digest != svc.container_digest


STACK_TEMPLATE = {
    "ContainerSpec": {
        "Image": "localhost:5000/team-api:1.0@sha256:aa",
        "Labels": {"com.docker.stack.namespace": "team", "team.role": "api"},
    },
    "Networks": [
        {"Target": "front-id", "Aliases": ["api", "team-api"]},
        {"Target": "back-id", "Aliases": ["api"]},
        {"Target": "other-id"},
    ],
    "ForceUpdate": 3,
}


def test_a_copy_beside_a_stack_service_answers_only_to_its_aliases_with_the_suffix():
    out = gateway.template_beside(
        STACK_TEMPLATE, "team-api:2@sha256:bb", "-canary", ("com.docker.stack.namespace",)
    )
    assert out["Networks"] == [
        {"Target": "front-id", "Aliases": ["api-canary", "team-api-canary"]},
        {"Target": "back-id", "Aliases": ["api-canary"]},
        {"Target": "other-id"},
    ]
    assert out["ContainerSpec"] == {"Image": "team-api:2@sha256:bb", "Labels": {"team.role": "api"}}
    assert "ForceUpdate" not in out
    # the running service's template is left as it was
    assert STACK_TEMPLATE["Networks"][0]["Aliases"] == ["api", "team-api"]
    assert "com.docker.stack.namespace" in STACK_TEMPLATE["ContainerSpec"]["Labels"]


def test_a_copy_of_a_service_without_aliases_or_networks_keeps_them_as_they_are():
    plain = {"ContainerSpec": {"Image": "go-demo:1"}}
    assert gateway.template_beside(plain, "go-demo:2", "-canary") == {
        "ContainerSpec": {"Image": "go-demo:2"}
    }
    assert gateway.aliased(None, "-canary") is None
    assert gateway.aliased([{"Target": "n"}], "-canary") == [{"Target": "n"}]
