"""The canary checks the deployment's lock right before each change of its own, as the rollout
does, and a stack's release gets a canary for each released service behind the proxy: the
Engine and the proxy replaced by recorders (the order of calls is what is tested; the lab tests
drive the real ones)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from cdtasks import canary_rollout, haproxy, records, rollout, services
from cdtasks.canary import Gate
from cdtasks.runner import StepFailed

STAT = (Path(__file__).parent / "data" / "haproxy-show-stat.csv").read_text()
# the same servers in a second backend, `api` (a stack's)
STAT_API = STAT + "".join(
    line.replace("go-demo,", "api,", 1) + "\n"
    for line in STAT.splitlines()
    if line.startswith("go-demo,")
)
REPLICA = haproxy.Replica("t1", "node-1", "c1")
BOOK = canary_rollout.Targets("proxy", (canary_rollout.Target("go-demo", "go-demo"),))


class Lock:
    """Records each check in `calls`; lost from the `lose_at`-th check on."""

    def __init__(self, calls: list, lose_at: int | None = None):
        self.calls, self.lose_at, self.checks = calls, lose_at, 0

    def check(self) -> None:
        self.checks += 1
        self.calls.append("check")
        if self.lose_at is not None and self.checks >= self.lose_at:
            raise records.LockLost("the lock of go-demo was taken over by someone@elsewhere")


@pytest.fixture
def calls(monkeypatch) -> list:
    made: list = []
    manager = SimpleNamespace(
        remove_service=lambda name: made.append(f"remove {name}") or True,
        create_beside=lambda *a: made.append(f"create {a[1]}"),
    )
    spec = SimpleNamespace(labels={}, endpoint_mode="dnsrr")
    monkeypatch.setattr(services, "existing", lambda m, name: spec)
    monkeypatch.setattr(rollout, "prepull", lambda *a: None)
    monkeypatch.setattr(haproxy, "replicas", lambda *a: [REPLICA])
    reading = haproxy.Reading(REPLICA, haproxy.parse_stat(STAT_API))  # canary1 is UP
    monkeypatch.setattr(haproxy, "read", lambda cluster, reps: [reading for _ in reps])
    monkeypatch.setattr(haproxy, "wait_up", lambda cluster, reps, *a: [reading for _ in reps])
    monkeypatch.setattr(
        haproxy,
        "set_weights",
        lambda cluster, w, then_read=False: made.append("weights") or [reading for _ in w],
    )
    monkeypatch.setattr(canary_rollout, "POLL", 0.01)
    settings = SimpleNamespace(services=SimpleNamespace(services_timeout=5))
    made.append(SimpleNamespace(gateway=lambda log=None: manager, settings=settings))
    return made


def _run(
    calls: list, lock: Lock, where: canary_rollout.Targets = BOOK, steps: list | None = None
) -> str:
    cluster = calls.pop(0)
    gate = Gate((10, 50), hold=0.02, min_requests=0)
    images = {t.service: f"{t.service}:2@sha256:1" for t in where.targets}
    return canary_rollout.run(
        cluster, where, images, gate, lambda line: None, [] if steps is None else steps, lock
    )


def test_each_change_of_the_canary_comes_right_after_a_lock_check(calls):
    _run(calls, Lock(calls))
    changes = [c for c in calls if c != "check"]
    assert changes == [
        "remove go-demo-canary",  # one left by a run that was killed (there is none: True here)
        "create go-demo-canary",
        "weights",  # step 1
        "weights",  # step 2
        "weights",  # back to 0 %
        "remove go-demo-canary",
    ]
    assert all(calls[i - 1] == "check" for i, c in enumerate(calls) if c != "check")


def test_a_lost_lock_stops_the_canary_before_its_next_change(calls):
    lock = Lock(calls, lose_at=3)  # held to create the canary, lost before its first weights
    with pytest.raises(records.LockLost, match="taken over by someone@elsewhere"):
        _run(calls, lock)
    assert [c for c in calls if c != "check"] == ["remove go-demo-canary", "create go-demo-canary"]
    # the clean-up tried, and changed nothing either: another run may own that canary by now
    assert calls[-2:] == ["check", "check"]


def test_a_stack_s_canaries_start_and_go_together_and_each_step_judges_every_one(calls):
    where = canary_rollout.Targets(
        "team_proxy",
        (canary_rollout.Target("team_api", "api"), canary_rollout.Target("team_web", "go-demo")),
        ("team_worker",),
        named=True,
    )
    steps: list = []
    summary = _run(calls, Lock(calls), where, steps)
    assert [c for c in calls if c != "check"] == [
        "remove team_api-canary",
        "remove team_web-canary",
        "create team_api-canary",
        "create team_web-canary",
        "weights",
        "weights",
        "weights",
        "remove team_api-canary",
        "remove team_web-canary",
    ]
    assert [(s["percent"], s["service"]) for s in steps] == [
        (10, "team_api"),
        (10, "team_web"),
        (50, "team_api"),
        (50, "team_web"),
    ]
    assert summary.startswith("canary passed: 10 %: team_api: 0 requests, 0 errors; 10 %: team_web")


def test_both_backends_weighed_on_one_replica_at_once():
    reading = haproxy.Reading(REPLICA, haproxy.parse_stat(STAT_API))
    where = canary_rollout.Targets(
        "p", (canary_rollout.Target("a", "api"), canary_rollout.Target("b", "go-demo"))
    )
    run = canary_rollout.Run(SimpleNamespace(), where, {}, Gate((10,), 1, 0), print)
    weights = run._weights(reading, 50)
    assert weights["api/canary1"] == weights["go-demo/canary1"] > 0
    assert weights["api/app1"] == weights["go-demo/app1"] > 0
    assert run._weights(reading, 0) == {
        f"{b}/{s}": w
        for b in ("go-demo", "api")
        for s, w in (("app1", "100%"), ("app3", "100%"), ("canary1", 0))
    }


NAMES = {  # a stack's release: service -> the backend names it may have
    "team_api": ("api", "team_api"),
    "team_migrate": ("migrate", "team_migrate"),
    "team_worker": ("worker", "team_worker"),
}


def test_a_released_service_behind_the_proxy_gets_a_canary_a_job_never_a_worker_rolls():
    where = canary_rollout.choose("team_proxy", NAMES, {"team_migrate"}, {"api", "stats"})
    assert where.targets == (canary_rollout.Target("team_api", "api"),)
    assert where.targets[0].canary == "team_api-canary"
    assert where.without == ("team_worker",) and where.proxy == "team_proxy" and where.named


def test_a_backend_named_as_swarm_names_the_service_is_found_too():
    where = canary_rollout.choose("p", NAMES, set(), {"team_api", "migrate"})
    assert [(t.service, t.backend) for t in where.targets] == [
        ("team_api", "team_api"),
        ("team_migrate", "migrate"),
    ]


def test_a_release_with_nothing_behind_the_proxy_is_one_line():
    with pytest.raises(canary_rollout.NoTarget) as err:
        canary_rollout.choose("team_proxy", NAMES, {"team_migrate"}, {"stats"})
    assert str(err.value) == (
        "no released service (team_api, team_worker) has a backend in the proxy team_proxy "
        "(haproxy.cfg has no backend api, team_api, worker, team_worker)"
    )


def _seen_run(monkeypatch, up_after: int, running_after: int, timeout: float = 5):
    """A Run whose proxy sees the canary UP from the `up_after`-th wait on, and whose canary
    runs from the `running_after`-th look at Swarm on; the looks it made."""
    looks = {"proxy": 0, "swarm": 0}
    down = haproxy.Reading(
        REPLICA, haproxy.parse_stat(STAT.replace("109,109,UP,", "109,109,DOWN,"))
    )
    up = haproxy.Reading(REPLICA, haproxy.parse_stat(STAT))

    def wait_up(cluster, reps, slots, prefix, seconds):
        assert slots == {"go-demo": 1} and prefix == "canary"
        looks["proxy"] += 1
        return [up if looks["proxy"] >= up_after else down]

    def running_counts(manager, names):
        looks["swarm"] += 1
        return {n: (1 if looks["swarm"] >= running_after else 0, 1) for n in names}

    monkeypatch.setattr(haproxy, "wait_up", wait_up)
    monkeypatch.setattr(haproxy, "replicas", lambda *a: [REPLICA])
    monkeypatch.setattr(services, "running_counts", running_counts)
    monkeypatch.setattr(services, "diagnose", lambda m, n: "no suitable node")
    settings = SimpleNamespace(services=SimpleNamespace(services_timeout=timeout))
    cluster = SimpleNamespace(settings=settings)
    lines: list[str] = []
    run = canary_rollout.Run(cluster, BOOK, {}, Gate((10,), hold=1), lines.append)
    return run, looks, lines


def test_the_proxy_is_asked_first_and_swarm_only_while_it_does_not_see_the_canary(monkeypatch):
    run, looks, lines = _seen_run(monkeypatch, up_after=3, running_after=2)
    run._wait_seen(None, {BOOK.targets[0]: 1})
    assert looks == {"proxy": 3, "swarm": 2}
    assert lines[0] == "waiting: go-demo-canary 0/1"
    assert lines[1].startswith("running: go-demo-canary 1/1")
    assert lines[-1] == "every proxy replica sees go-demo-canary up"


def test_a_canary_that_never_runs_is_said_with_swarm_s_reason(monkeypatch):
    run, looks, _ = _seen_run(monkeypatch, up_after=10**6, running_after=10**6, timeout=0)
    with pytest.raises(services.ServiceError, match="go-demo-canary: no suitable node"):
        run._wait_seen(None, {BOOK.targets[0]: 1})


def test_a_running_canary_the_proxy_never_sees_up_is_named(monkeypatch):
    monkeypatch.setattr(canary_rollout, "UP_TIMEOUT", 0.0)
    run, looks, _ = _seen_run(monkeypatch, up_after=10**6, running_after=1)
    with pytest.raises(StepFailed, match="go-demo-canary runs, but .* see 0 of its 1 server"):
        run._wait_seen(None, {BOOK.targets[0]: 1})
    assert looks["proxy"] == 2  # the first look at Swarm starts the clock, the second ends it
