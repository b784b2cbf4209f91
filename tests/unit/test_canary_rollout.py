"""The canary checks the deployment's lock right before each change of its own, as the rollout
does: the Engine and the proxy replaced by recorders (the order of calls is what is tested;
the lab tests drive the real ones)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from cdtasks import canary_rollout, haproxy, records, rollout, services
from cdtasks.canary import Gate

STAT = (Path(__file__).parent / "data" / "haproxy-show-stat.csv").read_text()
REPLICA = haproxy.Replica("t1", "node-1", "c1")
APP = SimpleNamespace(app_service="go-demo", proxy_service="proxy", services_timeout=5)


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
    monkeypatch.setattr(services, "wait_running", lambda *a: None)
    monkeypatch.setattr(rollout, "prepull", lambda *a: None)
    monkeypatch.setattr(haproxy, "replicas", lambda *a: [REPLICA])
    reading = haproxy.Reading(REPLICA, haproxy.parse_stat(STAT))  # canary1 is UP
    monkeypatch.setattr(haproxy, "read", lambda cluster, reps: [reading for _ in reps])
    monkeypatch.setattr(
        haproxy,
        "set_weights",
        lambda cluster, w, then_read=False: made.append("weights") or [reading for _ in w],
    )
    monkeypatch.setattr(canary_rollout, "POLL", 0.01)
    made.append(SimpleNamespace(gateway=lambda log=None: manager))
    return made


def _run(calls: list, lock: Lock) -> None:
    cluster = calls.pop(0)
    gate = Gate((10, 50), hold=0.02, min_requests=0)
    canary_rollout.run(cluster, APP, "img@sha256:1", gate, lambda line: None, [], lock)


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
