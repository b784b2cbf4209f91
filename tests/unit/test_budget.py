"""The error budget's pure parts: what an error is in HAProxy's counters, deltas across a proxy
restart, the worst second, the gate, and the meter around a rollout (readings given by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdtasks import budget, haproxy
from cdtasks.budget import Tally
from cdtasks.haproxy import Counters
from cdtasks.runner import StepFailed

STAT = (Path(__file__).parent / "data" / "haproxy-show-stat.csv").read_text()


def test_a_replica_s_counters_are_its_backend_s_servers():
    """`show stat` of HAProxy 2.6.12 during a canary whose 500s `retry-on` retried elsewhere:
    the canary's retried attempts are errors (haproxy.Server.errors)."""
    reading = haproxy.Reading(haproxy.Replica("t1", "n1", "c1"), haproxy.parse_stat(STAT))
    assert budget.counters(reading, "go-demo") == Counters(requests=609, errors=109, answered=500)
    assert budget.counters(reading, "other") == "no backend other in its `show stat`"
    # a stack release: the backends of its services that the proxy has, added up
    assert budget.counters(reading, "api", "go-demo", "worker") == budget.counters(
        reading, "go-demo"
    )
    assert (
        budget.counters(reading, "api", "worker") == "no backend api or worker in its `show stat`"
    )


def test_the_proxy_s_own_503s_and_redispatched_failures_count():
    """Real `show stat` (tests/unit/data/haproxy-show-stat-errors.cfg): with no server up, the
    503s are the BACKEND line's only; refused connections sent to another server are wredis."""
    text = (Path(__file__).parent / "data" / "haproxy-show-stat-errors.csv").read_text()
    reading = haproxy.Reading(haproxy.Replica("t1", "n1", "c1"), haproxy.parse_stat(text))
    assert budget.counters(reading, "nosrv") == Counters(requests=5, errors=5, answered=0)
    assert budget.counters(reading, "refused") == Counters(requests=20, errors=10, answered=10)


def test_servers_carry_their_address_and_hidden_attempts():
    reading = haproxy.Reading(haproxy.Replica("t1", "n1", "c1"), haproxy.parse_stat(STAT))
    seen = budget.counters(reading, "go-demo")
    assert not isinstance(seen, str)
    assert seen.slots == {
        "go-demo/app1": ("172.18.0.3:8080", 0),
        "go-demo/app3": ("", 0),  # MAINT (resolution): no task behind it
        "go-demo/canary1": ("172.18.0.4:8080", 109),
    }


def slots(requests, errors, **by_slot):
    """Counters whose slots are given as name=(address, hidden attempts so far)."""
    return Counters(requests, errors, slots=by_slot)


OLD, NEW = "10.0.1.5:8080", "10.0.1.9:8080"


def test_attempts_retried_off_a_task_swarm_stopped_are_not_errors():
    """The old task's slot loses its address (Swarm stopped it, HAProxy re-resolved): the one
    attempt it refused, which HAProxy sent to another server, is said apart, not an error."""
    t = Tally()
    t.add(0.0, {"p": slots(100, 0, app1=(OLD, 0), app2=("10.0.1.6:8080", 0))})
    t.add(1.0, {"p": slots(110, 1, app1=(OLD, 1), app2=("10.0.1.6:8080", 0))})
    t.add(2.0, {"p": slots(120, 1, app1=("", 1), app2=("10.0.1.6:8080", 0), app3=(NEW, 0))})
    b = budget.result(t, 3.0, max_errors=0)
    assert (b.requests, b.errors, b.stopped) == (20, 0, 1)
    assert budget.gate(b) is None
    assert b.series == ((1, 10, 0), (2, 10, 0))
    assert b.summary() == (
        "20 requests, 0 errors (budget 0); 1 attempt on stopped tasks answered by others"
    )
    assert budget.Budget.of(b.record()) == b


def test_attempts_retried_off_a_new_task_a_vip_or_a_reused_slot_count():
    t = Tally()
    t.add(0.0, {"p": slots(0, 0, app1=(OLD, 0), vip=("10.0.0.2:8080", 0), app2=("", 0))})
    # a new task's retried 500s; the VIP's (an address that stays); app1 now a new task
    t.add(1.0, {"p": slots(30, 6, app1=(NEW, 1), vip=("10.0.0.2:8080", 2), app2=(NEW, 3))})
    b = budget.result(t, 2.0, max_errors=0)
    assert (b.errors, b.stopped) == (6, 0)
    assert (b.worst, b.worst_at) == (6, 1)


def test_tally_baseline_restart_new_and_late_replicas():
    t = Tally()
    t.add(10.0, {"p1": Counters(1000, 40), "p2": Counters(500, 0), "p3": "timed out"})
    assert (t.requests, t.errors) == (0, 0)  # the baseline counts nothing
    t.add(11.0, {"p1": Counters(1010, 40), "p2": Counters(3, 1), "p3": Counters(900, 9)})
    # p2 restarted: all 3 of its requests count; p3 did not answer at the start: baseline now
    assert (t.requests, t.errors) == (13, 1)
    t.add(12.2, {"p1": Counters(1020, 44), "p2": Counters(8, 1), "p4": Counters(6, 2)})
    # p4 started during the rollout: all of it counts
    assert (t.requests, t.errors) == (13 + 10 + 5 + 6, 1 + 4 + 2)
    assert t.seconds == {1: [13, 1], 2: [21, 6]}
    b = budget.result(t, 13.0, max_errors=5)
    assert b.measured and (b.requests, b.errors) == (34, 7)
    assert (b.worst, b.worst_at) == (6, 2)
    assert b.series == ((1, 13, 1), (2, 21, 6)) and b.replicas == 4
    assert b.seconds == pytest.approx(3.0)
    assert budget.gate(b) == (
        "error budget exceeded: 7 errors > 5 over 34 requests (worst second 6 at 2s)"
    )
    assert b.record()["series"] == [[1, 13, 1], [2, 21, 6]]


def test_the_worst_second_is_the_first_of_equals_and_zero_without_errors():
    t = Tally()
    for at, errors in ((0, 0), (1, 2), (2, 2), (3, 4)):  # 2 errors in seconds 1 and 3
        t.add(float(at), {"p": Counters(at * 10, errors)})
    b = budget.result(t, 3.0)
    assert (b.errors, b.worst, b.worst_at) == (4, 2, 1)
    t = Tally()
    t.add(0.0, {"p": Counters(0, 0)})
    t.add(1.0, {"p": Counters(50, 0)})
    b = budget.result(t, 1.0, max_errors=0)
    assert (b.worst, b.errors, b.requests) == (0, 0, 50) and budget.gate(b) is None
    assert b.summary() == "50 requests, 0 errors (budget 0)"


def test_unreadable_counters_are_not_measured_never_zero():
    t = Tally()
    t.add(0.0, {"p1": "no runtime API: connect /var/run/haproxy.sock failed"})
    t.add(1.0, {"p1": "no runtime API: connect /var/run/haproxy.sock failed"})
    b = budget.result(t, 1.0, max_errors=0)
    assert not b.measured and "haproxy.sock" in b.reason
    assert b.record() == {"measured": False, "reason": b.reason, "max_errors": 0}
    assert budget.gate(b).startswith("--max-errors 0 cannot be checked: errors not measured")
    assert budget.gate(budget.not_measured("x")) is None  # record only


def test_a_replica_that_stops_answering_is_noted():
    t = Tally()
    t.add(0.0, {"p1": Counters(0, 0), "p2": Counters(0, 0)})
    t.add(1.0, {"p1": Counters(10, 0), "p2": "did not answer within 5s"})
    b = budget.result(t, 1.0)
    assert b.measured and b.requests == 10
    assert b.note == "p2 not read (did not answer within 5s)"
    assert b.summary() == "10 requests, 0 errors; p2 not read (did not answer within 5s)"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def readings(*values):
    """A reader returning `values` in turn (the last one again once they run out)."""
    it = iter(values)
    last = {}

    def read():
        nonlocal last
        last = next(it, last)
        if isinstance(last, Exception):
            raise last
        return last

    return read


def test_measure_fails_the_step_over_budget_after_the_rollout():
    kept = []
    read = readings({"p": Counters(0, 0)}, {"p": Counters(40, 3)})
    with pytest.raises(StepFailed, match="3 errors > 0 over 40 requests"):
        budget.measure(read, lambda: "rolled", kept.append, max_errors=0)
    assert kept[0].errors == 3
    kept.clear()
    assert (
        budget.measure(
            readings({"p": Counters(0, 0)}, {"p": Counters(40, 3)}),
            lambda: "ok",
            kept.append,
            max_errors=3,
        )
        == "ok"
    )
    assert kept[0].summary() == "40 requests, 3 errors, worst second 3 at 0s (budget 3)"


def test_measure_with_a_gate_refuses_before_the_rollout_when_unreadable():
    ran, kept = [], []
    with pytest.raises(StepFailed, match="cannot be checked.*nothing was changed"):
        budget.measure(
            readings(RuntimeError("proxy service not found")),
            lambda: ran.append(1),
            kept.append,
            max_errors=0,
        )
    assert ran == [] and "proxy service not found" in kept[0].reason
    # Without a gate the rollout goes on, recorded as not measured.
    assert budget.measure(readings({"p": "refused"}), lambda: "done", kept.append) == "done"
    assert kept[-1].measured is False and "refused" in kept[-1].reason


def test_measure_keeps_the_budget_of_a_failed_rollout():
    kept = []

    def fail():
        raise StepFailed("rolling update of go-demo ended paused")

    with pytest.raises(StepFailed, match="paused"):
        budget.measure(readings({"p": Counters(5, 0)}, {"p": Counters(9, 1)}), fail, kept.append)
    assert (kept[0].requests, kept[0].errors) == (4, 1)


def test_meter_reads_each_interval_until_stopped():
    import threading

    clock, calls, second = Clock(), [], threading.Event()

    def read():
        calls.append(clock.now)
        if len(calls) >= 3:
            second.set()
        return {"p": Counters(10 * len(calls), 0)}

    meter = budget.Meter(read, clock=clock, interval=0.01)
    assert meter.start() is None
    assert second.wait(5)
    b = meter.stop()
    assert b.measured and b.requests == 10 * (len(calls) - 1)


def _meter_ending(*after_halt):
    """A Meter whose baseline has OLD and NEW serving, and whose readings once `stop` began
    are `after_halt` in turn (the last one again); the reads after it began are counted."""
    base = {"p": slots(100, 0, app1=(OLD, 0), app2=(NEW, 0))}
    late: list = []
    meter: budget.Meter

    def read():
        if not meter._halt.is_set():
            return base
        late.append(1)
        return after_halt[min(len(late), len(after_halt)) - 1]

    meter = budget.Meter(read, max_errors=0, clock=Clock(), interval=0.01)
    assert meter.start() is None
    return meter, late


def test_stop_reads_on_until_a_task_stopped_at_the_end_leaves_its_slot():
    """Swarm stops the last old task as the rollout ends: its refused attempt, retried on
    another server, is seen at the last reading while the proxy still has its address (CI
    counted 2 such attempts as errors); a reading later the slot is empty."""
    still = {"p": slots(110, 1, app1=(OLD, 1), app2=(NEW, 0))}
    gone = {"p": slots(120, 1, app1=("", 1), app2=(NEW, 0))}
    meter, late = _meter_ending(still, gone)
    b = meter.stop()
    assert len(late) == 2
    assert (b.requests, b.errors, b.stopped) == (20, 0, 1) and budget.gate(b) is None


def test_stop_counts_held_attempts_whose_address_stays_after_a_bounded_wait():
    still = {"p": slots(110, 1, app1=(OLD, 1), app2=(NEW, 0))}
    meter, late = _meter_ending(still)
    b = meter.stop()
    assert len(late) == 1 + budget.SETTLE_READINGS
    assert (b.errors, b.stopped) == (1, 0)
    # An interruption takes no reading at all.
    meter, late = _meter_ending(still)
    assert meter.stop(last_reading=False).errors == 0 and late == []
