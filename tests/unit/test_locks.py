"""Records and the deployment lock against an in-memory Swarm manager (the `swarm_manager` fixture of conftest.py)."""

import json
import math
import subprocess
import threading
import time

import pytest

from cdtasks import records
from cdtasks.records import Lock, LockHeld, LockLost

SVC = "go-demo"


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(records, "LOCK_POLL", 0.02)


@pytest.fixture
def manager(swarm_manager):
    return swarm_manager


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _elsewhere(**kw) -> dict:
    """A holder on another machine: nothing local can say whether it still runs."""
    return {**records.identity(), "machine": "another-machine", "boot": "another-boot", **kw}


def _lines():
    lines = []
    return lines, lines.append


def test_records_come_back_in_the_order_they_were_put(manager):
    for i in range(30):  # many within one millisecond, where names alone would tie
        records.put(manager, "history", SVC, {"n": i})
    records.put(manager, "history", "other", {"n": -1})
    records.put(manager, "delivered", SVC, {"n": -2})
    assert [r["n"] for r in records.load(manager, "history", SVC)] == list(range(30))


def test_acquire_then_release(manager):
    lock = Lock(manager, SVC, "1.0", action="delivering").acquire(0)
    state = records.lock_state(manager, SVC)
    assert state.id == lock.id and state.name == records.lock_name(SVC)
    assert state.holder["version"] == "1.0" and state.holder["action"] == "delivering"
    assert state.holder["pid"] == records.identity()["pid"]
    assert time.time() < state.expires <= time.time() + records.LOCK_TTL
    lock.check()
    assert lock.release() is True
    assert records.lock_state(manager, SVC) is None
    with Lock(manager, SVC, "1.1").acquire(0) as again:  # free again
        assert records.lock_state(manager, SVC).id == again.id
    assert records.lock_state(manager, SVC) is None


def test_a_second_run_is_refused_naming_the_holder(manager):
    with Lock(manager, SVC, "1.0", holder=_elsewhere(user="alice")).acquire(0):
        with pytest.raises(LockHeld, match=r"being deployed by alice@.*deploying 1\.0; use --wait"):
            Lock(manager, SVC, "2.0").acquire(0)
        lines, log = _lines()
        clocks = Clocks()  # the waiter's own: a loaded machine does not stretch its 0.3 s
        start = clocks.t
        with pytest.raises(LockHeld, match=r"alice@.*\(waited 0s\)"):
            Lock(manager, SVC, "2.0", log=log, clock=clocks.mono, sleep=clocks.sleep).acquire(0.3)
        assert clocks.t - start >= 0.3
        assert len(lines) == 1 and "waiting for the lock of go-demo, held by alice@" in lines[0]


def test_a_waiter_keeps_saying_how_long_it_waited(manager, monkeypatch):
    monkeypatch.setattr(records, "LOCK_PROGRESS", 0.1)
    monkeypatch.setattr(records, "LOCK_POLL", 0.05)
    with Lock(manager, SVC, "1.0", holder=_elsewhere(user="alice")).acquire(0):
        lines, log = _lines()
        with pytest.raises(LockHeld):
            # Long against the progress interval: a loaded machine still gets several looks in.
            Lock(manager, SVC, "2.0", log=log).acquire(1.5)
    assert lines[0].startswith("waiting for the lock")
    assert len(lines) >= 3 and all("still waiting" in x and "alice@" in x for x in lines[1:])


def test_the_heartbeat_thread_renews_and_keeps_a_waiter_out(manager):
    # Real threads and time (many TTLs on injected clocks: test_a_renewed_lock_holds_...). A
    # TTL of 6 s renewed every 2 s: a heartbeat thread that a loaded CI machine stalls for a
    # second or two still renews in time (with 1.5 s it once did not).
    with Lock(manager, SVC, "1.0", ttl=6, holder=_elsewhere()).acquire(0) as holder:
        first = records.lock_state(manager, SVC)
        with pytest.raises(LockHeld):
            Lock(manager, SVC, "2.0").acquire(9)  # a waiter's whole TTL unchanged, and more
        renewed = records.lock_state(manager, SVC)
        assert renewed.id == first.id and renewed.expires > first.expires
        assert renewed.version > first.version
        holder.check()


def test_an_expired_lock_is_taken_over_by_its_id(manager):
    clocks = Clocks()
    stale = _party(manager, clocks, 0, "1.0", ttl=1, holder=_elsewhere())
    stale.acquire(0, heartbeat=False)
    clocks.sleep(1.5)
    lines, log = _lines()
    taker = _party(manager, clocks, 0, "2.0", log=log).acquire(0)
    assert records.lock_state(manager, SVC).id == taker.id != stale.id
    # Its expiry by this clock only makes the waiter watch it; one unchanged TTL decides.
    assert "looks expired by this machine's clock" in lines[0]
    assert "taking over the lock of go-demo from" in lines[-1] and "not renewed for" in lines[-1]
    with pytest.raises(LockLost, match=r"was removed; now held by .*2\.0"):
        stale.check()
    assert stale.release() is False  # removing by its ID cannot touch the newer lock
    assert records.lock_state(manager, SVC).id == taker.id
    taker.release()


def test_a_renewal_between_a_waiters_look_and_its_takeover_keeps_the_lock(manager):
    # Its wall clock 1.25 s behind this machine's: its lock looks expired here at once, while
    # its own lease still runs.
    holder = Lock(
        manager, SVC, "1.0", ttl=1, holder=_elsewhere(), wall=lambda: time.time() - 1.25
    ).acquire(0, heartbeat=False)
    looked = records.lock_state(manager, SVC)
    assert records.expired(looked)
    holder.renew()
    Lock(manager, SVC, "2.0")._take_over(looked, "expired")  # the version moved on: refused
    assert records.lock_state(manager, SVC).id == holder.id
    holder.check()


def test_a_holder_whose_clock_runs_ahead_is_taken_over_after_one_unchanged_ttl(manager):
    holder = Lock(manager, SVC, "1.0", ttl=1.5, holder=_elsewhere()).acquire(0, heartbeat=False)
    state = records.lock_state(manager, SVC)
    records._update_labels(
        manager, state, {**state.labels, records.EXPIRES_LABEL: str(time.time() + 3600)}
    )
    with pytest.raises(LockHeld):
        Lock(manager, SVC, "2.0").acquire(0)
    start = time.monotonic()
    taker = Lock(manager, SVC, "2.0").acquire(10)
    assert 1.0 <= time.monotonic() - start < 10  # about one unchanged TTL, not the hour it claims
    assert records.lock_state(manager, SVC).id == taker.id != holder.id


def test_check_and_the_heartbeat_notice_a_removed_lock(manager):
    lines, said_lost = [], threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("lost: "):  # what the heartbeat says when it finds the lock gone
            said_lost.set()

    holder = Lock(manager, SVC, "1.0", ttl=1.5, log=log).acquire(0)
    removed = records.force_release(manager, SVC)
    assert removed.id == holder.id and removed.holder["version"] == "1.0"
    with pytest.raises(LockLost, match="the lock of go-demo was removed"):
        holder.check()
    assert said_lost.wait(30), lines  # its next beat, 0.5 s on (a loaded machine: later)
    assert isinstance(holder.lost, LockLost)
    assert holder.release() is False
    assert records.force_release(manager, SVC) is None  # free: nothing to remove


def test_a_dead_holder_of_this_machine_is_taken_over_at_once(manager):
    dead = Lock(manager, SVC, "1.0", holder={**records.identity(), "pid": _dead_pid()})
    dead.acquire(0, heartbeat=False)
    lines, log = _lines()
    Lock(manager, SVC, "2.0", log=log).acquire(0).release()
    assert "its process is gone" in lines[0]


def test_same_hostname_but_another_machine_is_not_taken_for_dead(manager):
    me = records.identity()
    for other in ({"machine": "container-b"}, {"pidns": "pid:[1]"}, {"boot": "rebooted"}):
        holder = Lock(manager, SVC, "1.0", holder={**me, "pid": _dead_pid(), **other})
        holder.acquire(0, heartbeat=False)
        assert records.lock_state(manager, SVC).holder["host"] == me["host"]
        with pytest.raises(LockHeld):
            Lock(manager, SVC, "2.0").acquire(0)
        holder.release()


def test_holder_gone_needs_the_same_process_not_only_the_same_pid():
    me = records.identity()
    assert not records.holder_gone(me, me)
    assert records.holder_gone({**me, "started": "1"}, me)  # the pid was reused since
    assert not records.holder_gone({**me, "pid": "x"}, me)
    assert not records.holder_gone({**me, "pid": 0}, me)
    assert not records.holder_gone({"host": me["host"], "pid": _dead_pid()}, me)  # old records


def test_the_lease_runs_out_by_the_holders_own_clock(manager):
    clocks = Clocks()
    holder = _party(manager, clocks, 0, "1.0", ttl=1).acquire(0, heartbeat=False)
    clocks.sleep(1.25)
    with pytest.raises(LockLost, match=r"not renewed for \d+s \(TTL 1s\)"):
        holder.renew()  # never renew what a waiter may rightly have taken
    assert holder.release() is True  # still its own config: removed by its ID


def test_interrupted_while_waiting_leaves_nothing_behind(manager):
    with Lock(manager, SVC, "1.0", holder=_elsewhere()).acquire(0) as holder:

        def interrupt(line):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            Lock(manager, SVC, "2.0", log=interrupt).acquire(60)
        assert [records.lock_state(manager, SVC).id] == list(manager.store.configs) == [holder.id]
    manager.store.lose_create_answers = True
    with pytest.raises(KeyboardInterrupt):
        Lock(manager, SVC, "2.0").acquire(60)
    assert manager.store.configs == {}


def test_a_lock_marked_for_takeover_is_lost_to_its_holder(manager):
    holder = Lock(manager, SVC, "1.0", holder=_elsewhere()).acquire(0, heartbeat=False)
    state = records.lock_state(manager, SVC)
    records._update_labels(manager, state, {**state.labels, records.TAKEN_LABEL: "carol@ci"})
    with pytest.raises(LockLost, match="taken over by carol@ci"):
        holder.check()
    Lock(manager, SVC, "2.0").acquire(0).release()  # the mark alone lets the next run in


def test_a_lock_of_the_previous_version_holds_until_the_expiry_in_its_data(manager):
    clocks = Clocks()
    old = {
        "user": "dave",
        "host": "ci",
        "pid": 1,
        "time": "2026-11-29T10:00:00+00:00",
        "version": "0.9",
        "expires": clocks.wall(0)() + 0.3,
        "token": "t1",
    }
    manager.api.create_config(
        records.lock_name(SVC),
        json.dumps(old).encode(),
        labels={records.KIND_LABEL: "lock", records.SERVICE_LABEL: SVC},
    )
    with pytest.raises(LockHeld, match=r"dave@ci \(machine \?, pid 1\) since 2026-11-29T10:00"):
        _party(manager, clocks, 0, "1.0").acquire(0)
    clocks.sleep(1.75)
    _party(manager, clocks, 0, "1.0").acquire(0).release()


# -- lease arithmetic under clock skew (injected clocks) -------------------------------------------
class Clocks:
    """One monotonic time for every party (fake: tests do not wait), a wall clock per party
    (true time + its skew), and the holder's renewals scheduled on that time."""

    def __init__(self):
        self.t = 1000.0
        self.due: list[tuple[float, float, object]] = []  # (when, period, fn)

    def mono(self) -> float:
        return self.t

    def wall(self, skew: float):
        return lambda: 1.8e9 + self.t + skew

    def every(self, period: float, fn) -> None:
        self.due.append((self.t + period, period, fn))

    def stop(self) -> None:
        self.due.clear()

    def sleep(self, seconds: float) -> None:
        end = self.t + seconds
        while self.due and min(self.due, key=lambda d: d[0])[0] <= end:
            when, period, fn = min(self.due, key=lambda d: d[0])
            self.due.remove((when, period, fn))
            self.t = when
            fn()
            self.due.append((when + period, period, fn))
        # Forward always, as real time goes: a sleep below the float's resolution at t (what is
        # left of a wait, say) would otherwise leave a waiter polling at one instant forever.
        self.t = max(end, math.nextafter(self.t, math.inf))


def _party(manager, clocks, skew, version, **kw):
    return Lock(
        manager, SVC, version, clock=clocks.mono, wall=clocks.wall(skew), sleep=clocks.sleep, **kw
    )


@pytest.fixture
def real_polls(monkeypatch):
    monkeypatch.setattr(records, "LOCK_POLL", 2.0)


SKEWS = [(-120, 0), (+120, 0), (0, -120), (0, +120)]  # (holder, waiter): 2 minutes either way


@pytest.mark.parametrize("holder_skew,waiter_skew", SKEWS)
def test_a_renewed_lock_holds_whatever_the_clocks_say(
    manager, real_polls, holder_skew, waiter_skew
):
    clocks = Clocks()
    holder = _party(manager, clocks, holder_skew, "1.0", holder=_elsewhere())
    holder.acquire(0, heartbeat=False)
    clocks.every(holder.ttl / 3, holder.renew)  # its heartbeat
    lines, log = _lines()
    start = clocks.t
    with pytest.raises(LockHeld):
        _party(manager, clocks, waiter_skew, "2.0", log=log).acquire(300)
    assert clocks.t - start >= 300
    assert records.lock_state(manager, SVC).id == holder.id
    holder.check()
    assert not any("taking over" in line for line in lines)


@pytest.mark.parametrize("holder_skew,waiter_skew", SKEWS)
def test_a_lock_no_longer_renewed_is_taken_one_ttl_after_its_last_renewal(
    manager, real_polls, holder_skew, waiter_skew
):
    clocks = Clocks()
    holder = _party(manager, clocks, holder_skew, "1.0", holder=_elsewhere())
    holder.acquire(0, heartbeat=False)
    clocks.every(holder.ttl / 3, holder.renew)
    clocks.sleep(100)  # renewed at +30, +60, +90: then its process dies
    clocks.stop()
    last = clocks.t - 10
    taker = _party(manager, clocks, waiter_skew, "2.0").acquire(600)
    assert records.lock_state(manager, SVC).id == taker.id != holder.id
    # Never before a whole TTL unchanged since the last renewal; soon after it.
    assert holder.ttl <= clocks.t - last <= holder.ttl + 10 + 2 * records.LOCK_POLL
    with pytest.raises(LockLost):
        holder.check()


def test_the_lease_counts_from_the_renewal_sent_not_its_answer(manager):
    clocks = Clocks()
    holder = _party(manager, clocks, 0, "1.0").acquire(0, heartbeat=False)
    timeouts = []
    send = manager.store.send

    def slow(request, **kw):  # the cluster applies the update, its answer takes 8 s
        if request.url.split("?")[0].endswith("/update"):
            timeouts.append(kw.get("timeout"))
            answer = send(request, **kw)
            clocks.t += 8
            return answer
        return send(request, **kw)

    manager.store.send = slow
    clocks.sleep(30)
    sent = clocks.t
    holder.renew()
    assert clocks.t == sent + 8 and holder._renewed == sent
    # Renewal calls are bounded well below the lease.
    assert timeouts == [records.LOCK_CALL_TIMEOUT] and holder.ttl / 9 >= records.LOCK_CALL_TIMEOUT
    clocks.t = sent + holder.ttl - records.LOCK_MARGIN - 1
    holder.check()  # the change right after it is still inside the lease
    clocks.t = sent + holder.ttl - records.LOCK_MARGIN + 1
    with pytest.raises(LockLost, match="not renewed for"):
        holder.check()  # counted from the answer (8 s later) it would still pass
    assert holder.release() is True


def test_a_stopped_run_names_its_lock_until_it_is_released(manager):
    from cdtasks import interrupt

    clocks = Clocks()
    holder = _party(manager, clocks, 0, "1.0").acquire(0, heartbeat=False)
    said = holder.left_behind()
    assert said in interrupt.left_behind()  # what a cut-short clean-up names
    assert said.startswith("lock of go-demo not released:") and "90s TTL" in said
    holder.release()
    assert holder.left_behind() == "" and said not in interrupt.left_behind()
