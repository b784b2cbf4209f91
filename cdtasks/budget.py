"""The error budget of a rollout: the proxy's counters for the service's backend, read on every
proxy replica before, during (each second) and after a rolling update, become the requests
served, the errors among them and the worst second; `--max-errors N` makes that a gate.

Requests and errors are the backend's servers' counters as `haproxy.Server` defines them (one
definition for the canary's gate and this budget): 5xx answers, failed connections, broken
answers, and the attempts retried or redispatched elsewhere (a 500 the client never saw), plus
the requests HAProxy answered itself because no server was up (`haproxy.Reading.unserved`).

Between two readings of a replica, `haproxy.since` (the canary's owner of the same rule): a
reading below the last one means that proxy restarted, and all it counted since belongs to the
rollout. A replica first seen after the start
is a proxy task started during the rollout, counted whole; one that did not answer at the start
counts from its first reading. Counters that cannot be read are "not measured", with the reason:
never a zero.

One exception, for what a rolling update itself costs: an attempt that a server failed and
HAProxy retried or sent to another server (the client got its answer) does not count when that
server was serving before the rollout (its address in the baseline) and its address is gone by
the end (Swarm stopped that task: a proxy that resolves every second may still send it a request
after Swarm took it out of its DNS). Such attempts are said apart (`stopped`); the same attempts
on a new task, on an address that stays (a VIP), or on a slot that changed address count."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TypeVar

from . import haproxy
from .cluster import Cluster
from .runner import StepFailed

INTERVAL = 1.0  # seconds between two readings during a rollout
READ_WAIT = 10.0  # seconds `stop` waits for a reading under way
# Readings `stop` adds while a held attempt's address is still in its slot: Swarm may have
# stopped that task just before the end, and the proxy re-resolves within about 2 s (its
# resolver holds an answer 1 s); without them such attempts counted as the release's errors.
SETTLE_READINGS = 3
T = TypeVar("T")


Sample = Mapping[str, "haproxy.Counters | str"]  # proxy replica -> its counters, or why not read


def counters(reading: haproxy.Reading, *backends: str) -> haproxy.Counters | str:
    """One replica's counters for those of `backends` it has (a stack release's services: the
    ones the proxy fronts), added up; or why it has none."""
    found = [b for b in dict.fromkeys(backends) if reading.backend(b)]
    if not found:
        return f"no backend {' or '.join(backends)} in its `show stat`"
    servers = [s for b in found for s in reading.backend(b)]
    slots = {s.full_name: (s.address, s.hidden) for s in servers}
    counted = [s for b in found for s in reading.counted(b)]
    return replace(haproxy.totals(counted), slots=slots)


def reader(cluster: Cluster, proxy_service: str, *backends: str) -> Callable[[], Sample]:
    """Reads the backends' counters on every running task of the proxy service, each on its
    own: a replica that does not answer is named, the others still count."""

    def one(replica: haproxy.Replica) -> haproxy.Counters | str:
        try:
            return counters(haproxy.read(cluster, [replica])[0], *backends)
        except haproxy.ProxyError as exc:
            return str(exc)

    def read() -> Sample:
        replicas = haproxy.replicas(cluster, proxy_service)
        if not replicas:
            return {proxy_service: "the proxy service runs no task"}
        with ThreadPoolExecutor(max_workers=len(replicas)) as pool:
            return {
                f"{r.task[:12]} on {r.node}": got
                for r, got in zip(replicas, pool.map(one, replicas), strict=True)
            }

    return read


@dataclass
class Tally:
    """Readings of a rollout, added up. The first reading is the baseline."""

    started: float | None = None  # clock of the first reading
    last: dict[str, haproxy.Counters] = field(default_factory=dict)
    unread_at_start: set[str] = field(default_factory=set)
    requests: int = 0
    errors: int = 0
    seconds: dict[int, list[int]] = field(default_factory=dict)  # second -> [requests, errors]
    failures: dict[str, str] = field(default_factory=dict)  # replica -> last reason not read
    readings: int = 0
    old: set[str] = field(default_factory=set)  # addresses the baseline saw served
    # (second, address, attempts): attempts retried off an old address, left out of `errors`
    # until `result` knows whether that address was gone by the end (a stopped task)
    pending: list[tuple[int, str, int]] = field(default_factory=list)

    def add(self, at: float, reading: Sample) -> None:
        first = self.started is None
        if self.started is None:
            self.started = at
        second = int(at - self.started)
        for replica, seen in reading.items():
            if isinstance(seen, str):
                self.failures[replica] = seen
                if first:
                    self.unread_at_start.add(replica)
                continue
            self.failures.pop(replica, None)
            before = self.last.get(replica)
            self.last[replica] = seen
            if first or (before is None and replica in self.unread_at_start):
                self.unread_at_start.discard(replica)
                continue  # the baseline: what it counted before the rollout
            got = haproxy.since(before, seen)
            errors = got.errors
            if before is not None and not haproxy.restarted(before, seen):
                errors -= self._hold(second, before, seen, got.errors)
            self.requests += got.requests
            self.errors += errors
            bucket = self.seconds.setdefault(second, [0, 0])
            bucket[0] += got.requests
            bucket[1] += errors
        if first:
            self.old = {
                address
                for seen in reading.values()
                if not isinstance(seen, str)
                for address, _ in seen.slots.values()
                if address
            }
        self.readings += 1

    def served(self) -> set[str]:
        """The addresses the proxy's slots have at the last readings."""
        return {a for c in self.last.values() for a, _ in c.slots.values() if a}

    def settling(self) -> bool:
        """Some held attempt's address is still in a slot (a stopped task not yet re-resolved,
        or a task that serves on)."""
        served = self.served()
        return any(address in served for _, address, _ in self.pending)

    def _hold(
        self, second: int, before: haproxy.Counters, now: haproxy.Counters, errors: int
    ) -> int:
        """Of `errors`, the attempts retried off an old address that its slot still had (or
        lost) at this reading: put in `pending`, their number returned."""
        held = 0
        for name, (address, hidden) in now.slots.items():
            was, hidden_before = before.slots.get(name, ("", hidden))
            got = min(max(0, hidden - hidden_before), errors - held)
            if got and was in self.old and address in (was, ""):
                self.pending.append((second, was, got))
                held += got
        return held


@dataclass(frozen=True)
class Budget:
    """What the proxy counted during one rollout (`measured` False: `reason` says why not)."""

    measured: bool
    reason: str = ""
    requests: int = 0
    errors: int = 0
    worst: int = 0  # errors in the worst second
    worst_at: int = 0  # that second, from the start of the rollout
    seconds: float = 0.0
    series: tuple[tuple[int, int, int], ...] = ()  # (second, requests, errors), seconds with data
    replicas: int = 0
    max_errors: int | None = None
    note: str = ""  # replicas that did not answer at some reading
    stopped: int = 0  # attempts retried off tasks that Swarm stopped: not errors (see above)

    def summary(self) -> str:
        if not self.measured:
            return f"errors not measured: {self.reason}"
        worst = f", worst second {self.worst} at {self.worst_at}s" if self.errors else ""
        limit = "" if self.max_errors is None else f" (budget {self.max_errors})"
        plural = "s" if self.stopped != 1 else ""
        stopped = (
            f"; {self.stopped} attempt{plural} on stopped tasks answered by others"
            if self.stopped
            else ""
        )
        note = f"; {self.note}" if self.note else ""
        return f"{self.requests} requests, {self.errors} errors{worst}{limit}{stopped}{note}"

    @classmethod
    def of(cls, record: Mapping) -> Budget:
        """A budget again from its `record()` (the history, a report)."""
        if not record.get("measured"):
            return cls(False, str(record.get("reason", "")), max_errors=record.get("max_errors"))
        return cls(
            True,
            requests=int(record.get("requests", 0)),
            errors=int(record.get("errors", 0)),
            worst=int(record.get("worst_second", 0)),
            worst_at=int(record.get("worst_at", 0)),
            seconds=float(record.get("seconds", 0.0)),
            series=tuple((int(t), int(r), int(e)) for t, r, e in record.get("series", ())),
            replicas=int(record.get("replicas", 0)),
            max_errors=record.get("max_errors"),
            note=str(record.get("note", "")),
            stopped=int(record.get("stopped", 0)),
        )

    def record(self) -> dict:
        """For the history entry, the reports and the page."""
        if not self.measured:
            return {"measured": False, "reason": self.reason, "max_errors": self.max_errors}
        return {
            "measured": True,
            "requests": self.requests,
            "errors": self.errors,
            "worst_second": self.worst,
            "worst_at": self.worst_at,
            "seconds": round(self.seconds, 1),
            "replicas": self.replicas,
            "max_errors": self.max_errors,
            "note": self.note,
            "stopped": self.stopped,
            "series": [list(point) for point in self.series],
        }


def brief(record: Mapping | None) -> str:
    """A budget's record in a table cell: errors of requests; "-" for a run without one."""
    if not record:
        return "-"
    if not record.get("measured"):
        return "not measured"
    limit = "" if record.get("max_errors") is None else f" (max {record['max_errors']})"
    return f"{record['errors']} of {record['requests']}{limit}"


def not_measured(reason: str, max_errors: int | None = None) -> Budget:
    return Budget(False, reason, max_errors=max_errors)


def result(tally: Tally, ended: float, max_errors: int | None = None) -> Budget:
    """The budget of a finished tally (`ended`: the clock of its end). Measured when the first
    reading and a later one read at least one replica each."""
    read = [r for r in tally.last if r not in tally.unread_at_start]
    if tally.readings < 2 or not read:
        why = "; ".join(f"{r}: {reason}" for r, reason in sorted(tally.failures.items()))
        return not_measured(why or "the proxy's counters were read fewer than twice", max_errors)
    # An address still served at the end was no stopped task: its held attempts count.
    served = tally.served()
    errors, stopped = tally.errors, 0
    seconds = {at: list(rq_er) for at, rq_er in tally.seconds.items()}
    for at, address, attempts in tally.pending:
        if address in served:
            errors += attempts
            seconds[at][1] += attempts
        else:
            stopped += attempts
    worst_at, (_, worst) = max(
        seconds.items(), key=lambda kv: (kv[1][1], -kv[0]), default=(0, (0, 0))
    )
    note = ", ".join(f"{r} not read ({reason})" for r, reason in sorted(tally.failures.items()))
    return Budget(
        True,
        requests=tally.requests,
        errors=errors,
        worst=worst,
        worst_at=worst_at,
        seconds=ended - (ended if tally.started is None else tally.started),
        series=tuple((s, rq, er) for s, (rq, er) in sorted(seconds.items())),
        replicas=len(tally.last),
        max_errors=max_errors,
        note=note,
        stopped=stopped,
    )


def gate(budget: Budget) -> str | None:
    """Why the rollout fails its budget, or None (no `--max-errors`: record only)."""
    if budget.max_errors is None:
        return None
    if not budget.measured:
        return f"--max-errors {budget.max_errors} cannot be checked: {budget.summary()}"
    if budget.errors > budget.max_errors:
        return (
            f"error budget exceeded: {budget.errors} errors > {budget.max_errors} over "
            f"{budget.requests} requests (worst second {budget.worst} at {budget.worst_at}s)"
        )
    return None


class Meter:
    """Reads the proxy's counters with `read` now (the baseline), then every INTERVAL on a
    thread of its own, and once more at `stop`."""

    def __init__(
        self,
        read: Callable[[], Sample],
        max_errors: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL,
    ) -> None:
        self.read, self.max_errors, self.clock, self.interval = read, max_errors, clock, interval
        self.tally = Tally()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _reading(self) -> None:
        try:
            reading = self.read()
        except Exception as exc:  # the proxy service itself cannot be asked: said, not zero
            reading = {"proxy": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
        with self._lock:
            self.tally.add(self.clock(), reading)

    def start(self) -> Budget | None:
        """The baseline; a not-measured Budget when no replica answered it (the rollout is
        then not measured at all), else None and the readings go on."""
        self._reading()
        if not self.tally.last:
            return result(self.tally, self.clock(), self.max_errors)
        self._thread = threading.Thread(target=self._run, daemon=True, name="budget")
        self._thread.start()
        return None

    def _run(self) -> None:
        while not self._halt.wait(self.interval):
            self._reading()

    def stop(self, last_reading: bool = True) -> Budget:
        """The budget so far, after one more reading (`last_reading`; an interruption skips
        it: the clean-up must stay short) and, while held attempts' addresses are still in
        their slots, up to SETTLE_READINGS more, one each interval."""
        self._halt.set()
        if self._thread:
            self._thread.join(timeout=READ_WAIT)
        if last_reading:
            self._reading()
            for _ in range(SETTLE_READINGS):
                with self._lock:
                    if not self.tally.settling():
                        break
                time.sleep(self.interval)
                self._reading()
        with self._lock:
            return result(self.tally, self.clock(), self.max_errors)


def measure(
    read: Callable[[], Sample],
    act: Callable[[], T],
    keep: Callable[[Budget], None],
    max_errors: int | None = None,
) -> T:
    """`act()` (a rolling update) with the proxy's counters read around it; `keep` gets the
    budget, whatever happens to `act`. StepFailed when the budget is exceeded, and before `act`
    when `max_errors` is set and the counters cannot be read (a gate that cannot be checked
    must not let a release through)."""
    meter = Meter(read, max_errors)
    unread = meter.start()
    if unread is not None:
        keep(unread)
        if max_errors is not None:
            raise StepFailed(f"{gate(unread)}; nothing was changed")
        return act()
    try:
        done = act()
    except Exception:
        keep(meter.stop())
        raise
    except BaseException:
        keep(meter.stop(last_reading=False))
        raise
    budget = meter.stop()
    keep(budget)
    problem = gate(budget)
    if problem:
        raise StepFailed(problem)
    return done
