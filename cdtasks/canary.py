"""The canary's gate, as pure functions over data: its steps (the shares asked), the weights that
give a share, the figures of a step from two readings of the proxy's counters, and the verdict.

A step's figures are differences of counters that each proxy replica keeps since its process
started (`haproxy.since`, the error budget's rule too), summed over the replicas: a replica that
restarted (a new task ID, or counters that went down) counts from 0, since everything it counted
happened after the step began.

The latency figure is HAProxy's `rtime` (average time from sending the request to the server
until its response headers came back): it is the canary's own time to answer, which a release
changes, while `ttime` adds the time the client takes to send and receive (a slow client would
fail a good release). HAProxy keeps it as a moving average (`step_rtime` takes the step's own
mean out of two readings), averaged here over the canary's servers by the answers of each."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from . import haproxy
from .haproxy import Server

MAX_WEIGHT = 256  # HAProxy's largest server weight


@dataclass(frozen=True)
class Gate:
    """What `inv deploy --canary` asks."""

    steps: tuple[float, ...]  # percent of the service's requests sent to the canary, in order
    hold: float = 30.0  # seconds each step lasts
    max_error_rate: float = 1.0  # percent
    max_latency: int | None = None  # ms; None: not checked
    min_requests: int = 100  # a step with fewer canary requests cannot be judged
    replicas: int = 1


def parse_steps(text: str) -> tuple[float, ...]:
    """ "5,25,50" -> (5.0, 25.0, 50.0): each above 0 and below 100, rising. ValueError naming
    the culprit otherwise."""
    steps: list[float] = []
    for part in str(text).split(","):
        try:
            value = float(part.strip().rstrip("%"))
        except ValueError:
            raise ValueError(f"--canary {text}: {part.strip()!r} is not a percentage") from None
        if not 0 < value < 100:
            raise ValueError(f"--canary {text}: {part.strip()} is not between 0 and 100 (both out)")
        if steps and value <= steps[-1]:
            raise ValueError(f"--canary {text}: the steps must rise ({part.strip()})")
        steps.append(value)
    return tuple(steps)


def check_gate(gate: Gate) -> Gate:
    """ValueError naming the flag of a value that makes no sense."""
    if gate.hold <= 0:
        raise ValueError(f"--canary-for {gate.hold:g}: must be above 0 seconds")
    if not 0 <= gate.max_error_rate < 100:
        raise ValueError(f"--max-error-rate {gate.max_error_rate:g}: must be from 0 to below 100")
    if gate.max_latency is not None and gate.max_latency <= 0:
        raise ValueError(f"--max-latency {gate.max_latency}: must be above 0 ms")
    if gate.min_requests < 1:
        raise ValueError(f"--min-requests {gate.min_requests}: must be at least 1")
    if gate.replicas < 1:
        raise ValueError(f"--canary-replicas {gate.replicas}: must be at least 1")
    return gate


def weights(percent: float, stable: int, canary: int) -> tuple[int, int]:
    """(weight of each stable server, weight of each canary server) that send `percent` of the
    requests to the canary, with `stable` and `canary` servers up: the pair nearest the share
    within HAProxy's 0-256 (roundrobin weighs servers against each other)."""
    if canary == 0 or stable == 0:
        return (1, 0) if canary == 0 else (0, MAX_WEIGHT)
    share = percent / 100
    best: tuple[float, int, int] = (2.0, 1, 0)
    for ws in range(MAX_WEIGHT, 0, -1):
        wc = min(MAX_WEIGHT, max(1, round(share * stable * ws / ((1 - share) * canary))))
        got = canary * wc / (canary * wc + stable * ws)
        if abs(got - share) < best[0]:
            best = (abs(got - share), ws, wc)
    return best[1], best[2]


def backend_weights(
    backend: Sequence[Server], canaries: Collection[str], percent: float
) -> dict[str, int | str]:
    """Each server's weight ("BACKEND/SERVER" -> weight) so that the servers named in
    `canaries` get `percent` of the requests, counting the servers that are up on each side;
    0 % gives back the configured weights ("100%"), the canary's slots 0."""
    own = [s for s in backend if s.name in canaries]
    stable = [s for s in backend if s.name not in canaries]
    if not percent:
        return {**{s.full_name: "100%" for s in stable}, **{s.full_name: 0 for s in own}}
    ws, wc = weights(percent, sum(s.up for s in stable), sum(s.up for s in own))
    return {**{s.full_name: ws for s in stable}, **{s.full_name: wc for s in own}}


RTIME_WINDOW = 512  # HAProxy's TIME_STATS_SAMPLES: rtime's moving average spans this many answers


def step_rtime(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The mean response time (ms) of the answers between two readings of one server, each
    (rtime, answers so far). HAProxy's rtime is the plain mean of a server's first 512 answers,
    then a moving average that keeps 511/512 of itself per answer: a slot that served an earlier
    canary would otherwise carry that one's figure for hundreds of answers. Exact but for
    rtime's rounding to whole ms."""
    (a0, n0), (a1, n1) = before, after
    if n1 <= n0:
        return None
    w = RTIME_WINDOW
    s0, s1 = a0 * min(n0, w), a1 * min(n1, w)  # the sums HAProxy divides by its window
    plain = max(0, min(n1, w) - n0)  # answers still within the first 512: added as they are
    decayed = n1 - max(n0, w) if n1 > w else 0  # answers after: each decays the sum by 1/512
    keep = ((w - 1) / w) ** decayed
    return max(0.0, (s1 - s0 * keep) / (plain * keep + w * (1 - keep)))


Snapshot = Mapping[str, Mapping[str, Server]]  # proxy task ID -> server name -> its counters


@dataclass(frozen=True)
class Figures:
    """What a set of servers did between two snapshots, summed over the proxy replicas."""

    requests: int
    errors: int
    latency: int | None  # ms, the step's rtime weighted by each server's answers; None: none

    @property
    def error_rate(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0


def figures(before: Snapshot, after: Snapshot, names: Collection[str] | None = None) -> Figures:
    """The step's figures for the servers `names` (None: all, and the requests HAProxy answered
    itself) from two snapshots; each server's growth as `haproxy.since` takes it."""
    requests = errors = answered = 0
    weighted = 0.0
    for task, servers in after.items():
        earlier = before.get(task, {})
        if any(
            haproxy.restarted(earlier[n].counters, s.counters)
            for n, s in servers.items()
            if n in earlier
        ):
            earlier = {}  # a restarted proxy: all it counted is within the step
        for name, now in servers.items():
            if names is not None and name not in names:
                continue
            then = earlier.get(name)
            got = haproxy.since(then.counters if then else None, now.counters)
            requests, errors = requests + got.requests, errors + got.errors
            mean = step_rtime(
                (then.rtime, then.answered) if then else (0, 0), (now.rtime, now.answered)
            )
            if mean is not None:
                answered += got.answered
                weighted += mean * got.answered
    return Figures(requests, errors, round(weighted / answered) if answered else None)


def verdict(step: Figures, gate: Gate, ended: bool) -> str:
    """Why the canary fails at this step ("" while it passes). Before the step `ended`, only a
    judgement the rest of the step cannot change: errors or latency over the limit once the
    step has enough requests; at its end, too little traffic is a failure of its own."""
    enough = step.requests >= gate.min_requests
    if enough and step.error_rate > gate.max_error_rate:
        return (
            f"{step.error_rate:.1f} % errors > {gate.max_error_rate:g} % "
            f"over {step.requests} requests"
        )
    if enough and gate.max_latency and step.latency and step.latency > gate.max_latency:
        return (
            f"response time {step.latency} ms > {gate.max_latency} ms "
            f"(HAProxy's rtime, over {step.requests} requests)"
        )
    if ended and not enough:
        return (
            f"too little traffic to judge: {step.requests} requests < {gate.min_requests} "
            f"(--min-requests) in {gate.hold:g} s"
        )
    return ""


def describe(percent: float, canary: Figures, total: Figures) -> str:
    """One line for a step: the canary's requests and errors, its share of all of them."""
    share = 100.0 * canary.requests / total.requests if total.requests else 0.0
    latency = f", rtime {canary.latency} ms" if canary.latency is not None else ""
    return (
        f"{percent:g} %: {canary.requests} requests ({share:.1f} % of {total.requests}), "
        f"{canary.errors} errors ({canary.error_rate:.1f} %){latency}"
    )
