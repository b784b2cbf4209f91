"""Canaries beside the running services: each released service that sits behind the proxy
(a `Target`) gets a copy of its own spec with the new image under the name `SERVICE-canary`,
answering to its aliases with `-canary` added (the names the proxy's `canary` server-template
resolves); the proxy's weights are set step by step on every proxy replica, each step held and
every target's backend judged (`canary.verdict`), and, whatever happens, the proxy's weights put
back and the canaries removed before it returns. The running services are never changed here:
promoting is the normal rollout that follows.

Right before each change of its own (a canary service created or removed, weights set) the
deployment's lock is checked, as the rollout does: a run that lost it changes nothing more
(records.LockLost; another run may be driving a canary of the same name by then)."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import canary, haproxy, records, rollout, services, stack, stackplan
from .cluster import Cluster
from .log import Log
from .runner import StepFailed

SLOTS = "canary"  # the server-template's prefix in haproxy.cfg
SUFFIX = "-canary"  # a canary's service name and network aliases: the running one's, plus this
LABEL = "io.cdtasks.canary-of"
# Labels of the running service a canary must not carry: the stack's (or `inv services` and
# `inv plan` would take it for a stack service that the file lacks).
FOREIGN = (stackplan.NAMESPACE, stackplan.IMAGE)
POLL = 2.0  # seconds between two readings of the proxy's counters within a step
UP_TIMEOUT = 60.0  # seconds every proxy replica has, once the canary's tasks run, to see them up
# Seconds each proxy replica waits for them inside its container (haproxy.wait_up) before the
# canary's tasks are looked at from outside: the proxy sees a task within a tenth of a second
# of its check passing, with no exec per look (an exec per second from outside cost ~1 s).
UP_SLICE = 5.0


class NoTarget(ValueError):
    """No service of the release sits behind the proxy: a canary has nothing to judge."""


@dataclass(frozen=True)
class Target:
    """One canary: the running service it copies and that service's backend in the proxy."""

    service: str  # Swarm's name: go-demo_main, team_api
    backend: str  # in haproxy.cfg: main, api

    @property
    def canary(self) -> str:
        return self.service + SUFFIX


@dataclass(frozen=True)
class Targets:
    """Where the canaries of a release go: the proxy's Swarm service, a target for each released
    service behind it, and the released services that have no backend there (a worker: they
    roll with the promotion, no canary). `named`: the figures name their service (a release of
    several services; the book's sample releases one)."""

    proxy: str
    targets: tuple[Target, ...]
    without: tuple[str, ...] = ()
    named: bool = False


def choose(
    proxy: str,
    names: Mapping[str, Sequence[str]],
    jobs: Collection[str],
    backends: Collection[str],
) -> Targets:
    """The targets of a release: `names` holds each released service's possible backend names
    (`stack.backend_names`), `backends` those the proxy has. A job never gets a canary (it runs
    to completion first, with the promotion); NoTarget when no service is behind the proxy."""
    found, without = [], []
    for svc in sorted(names):
        if svc in jobs:
            continue
        backend = next((b for b in names[svc] if b in backends), None)
        if backend is None:
            without.append(svc)
        else:
            found.append(Target(svc, backend))
    if not found:
        tried = ", ".join(n for svc in without for n in names[svc])
        raise NoTarget(
            f"no released service ({', '.join(without) or 'none but jobs'}) has a backend in "
            f"the proxy {proxy} (haproxy.cfg has no backend {tried or 'for them'})"
        )
    return Targets(proxy, tuple(found), tuple(without), len(found) + len(without) > 1)


def targets(cluster: Cluster, images: Mapping[str, str]) -> Targets:
    """The targets of the release `images` (service -> image): each released service (jobs
    aside) whose backend the stack's proxy has (its replicas' `show stat`). NoTarget,
    haproxy.ProxyError or stackfile.StackFileError with one line otherwise."""
    s = cluster.settings
    proxy = stack.service_name(s, s.services.proxy_service)
    manager = cluster.gateway()
    jobs = {svc for svc in images if services.existing(manager, svc).job}
    reps = haproxy.replicas(cluster, proxy)
    if not reps:  # no backend to find: said as such, not as a backend missing
        raise haproxy.ProxyError(f"the proxy service {proxy} runs no task")
    backends = {srv.backend for r in haproxy.read(cluster, reps) for srv in r.servers}
    return choose(proxy, stack.backend_names(s, images), jobs, backends)


def check_proxy(cluster: Cluster, where: Targets, gate: canary.Gate) -> None:
    """Before anything changes: every proxy replica can be driven and has slots for
    `gate.replicas` canary tasks in each target's backend. ProxyError with one line otherwise."""
    reps = haproxy.replicas(cluster, where.proxy)
    for t in where.targets:
        for reading in haproxy.check(cluster, reps, t.backend, SLOTS):
            slots = len(haproxy.servers_named(reading, t.backend, SLOTS))
            if slots < gate.replicas:
                raise haproxy.ProxyError(
                    f"--canary-replicas {gate.replicas}: the proxy's backend {t.backend} has "
                    f"{slots} {SLOTS} slots (server-template {SLOTS} N in haproxy.cfg)"
                )


def _snapshot(readings: Sequence[haproxy.Reading], backend: str) -> canary.Snapshot:
    return {r.replica.task: {s.name: s for s in r.counted(backend)} for r in readings}


class Run:
    """The canaries of one release: `start`, `step` for each share, and `end` (always)."""

    def __init__(
        self,
        cluster: Cluster,
        where: Targets,
        images: Mapping[str, str],
        gate: canary.Gate,
        log: Log,
        lock: records.Lock | None = None,
    ):
        self.cluster, self.where, self.images, self.gate = cluster, where, images, gate
        self.log, self.lock = log, lock
        self.targets = where.targets
        self.percent = 0.0
        self.weighted: set[str] = set()  # proxy tasks whose weights this run changed
        self.readings: list[haproxy.Reading] = []  # the last counters read, for `end`
        self.steps: list[dict] = []  # the figures of each step and target, for the history

    def _check(self) -> None:
        """Before a change: LockLost unless this run still holds the deployment's lock."""
        if self.lock:
            self.lock.check()

    def _of(self, service: str) -> str:
        """How a figure names its service: by name in a release of several."""
        return f"{service}: " if self.where.named else ""

    # -- the canary services --------------------------------------------------------------------
    def _remove_service(self, name: str) -> bool:
        self._check()
        return self.cluster.gateway(self.log).remove_service(name)

    def start(self) -> None:
        """Create each canary from its running service's spec and wait until they run and every
        proxy replica sees their tasks up (at weight 0: no traffic yet). Each new image is
        pulled on its service's other nodes meanwhile (for the rollout that promotes it):
        Swarm pulls it on the canary's node itself."""
        manager = self.cluster.gateway(self.log)
        for t in self.targets:
            if self._remove_service(t.canary):  # we hold the lock: a run that was killed
                self.log(f"removed {t.canary}, left by a run that was killed")
        running = {t: services.existing(manager, t.service) for t in self.targets}
        with ThreadPoolExecutor(max_workers=len(self.targets)) as pool:
            pulled = [
                pool.submit(
                    rollout.prepull, self.cluster, t.service, self.images[t.service], self.log
                )
                for t in self.targets
            ]
            for t in self.targets:
                image = self.images[t.service]
                self.log(f"starting {t.canary} ({self.gate.replicas} replica(s)) with {image}")
                labels = {k: v for k, v in running[t].labels.items() if k not in FOREIGN}
                self._check()
                manager.create_beside(
                    t.service,
                    t.canary,
                    image,
                    self.gate.replicas,
                    {**labels, LABEL: t.service},
                    SUFFIX,
                    FOREIGN,
                )
            # with dnsrr the name resolves to each task (a slot each); a VIP is one slot for all
            self._wait_seen(
                manager,
                {
                    t: self.gate.replicas if running[t].endpoint_mode == "dnsrr" else 1
                    for t in self.targets
                },
            )
            for p in pulled:
                p.result()

    def _wait_seen(self, manager, wanted: Mapping[Target, int]) -> None:
        """Until every proxy replica sees `wanted` canary servers up in each target's backend:
        the proxy is asked first (it sees them as soon as they pass its check), Swarm between
        two asks: canaries that do not run within SERVICES_TIMEOUT are a ServiceError saying
        why; running ones the proxy does not see up within UP_TIMEOUT a StepFailed."""
        names = [t.canary for t in self.targets]
        slots: dict[str, int] = {}  # backend -> servers wanted up in it
        for t, n in wanted.items():
            slots[t.backend] = max(slots.get(t.backend, 0), n)
        timeout = self.cluster.settings.services.services_timeout
        deadline = time.monotonic() + timeout
        running_since: float | None = None
        last = ""
        while True:
            self.readings = haproxy.wait_up(self.cluster, self._replicas(), slots, SLOTS, UP_SLICE)
            seen = {
                t: [
                    sum(s.up for s in haproxy.servers_named(r, t.backend, SLOTS))
                    for r in self.readings
                ]
                for t in self.targets
            }
            short = {t: n for t, n in seen.items() if any(x < wanted[t] for x in n)}
            if not short:
                self.log(f"every proxy replica sees {', '.join(names)} up")
                return
            states = services.running_counts(manager, names)
            text = ", ".join(f"{n} {r}/{w}" for n, (r, w) in states.items())
            now = time.monotonic()
            if all(r >= w for r, w in states.values()):
                if running_since is None:
                    running_since = now
                    self.log(f"running: {text}; waiting for the proxy to see them up")
                elif now > running_since + UP_TIMEOUT:
                    raise StepFailed(
                        "; ".join(
                            f"{t.canary} runs, but after {UP_TIMEOUT:.0f} s the proxy replicas "
                            f"see {', '.join(map(str, n))} of its {wanted[t]} server(s) up"
                            for t, n in short.items()
                        )
                        + " (HAProxy's health check of it fails?)"
                    )
            elif now > deadline:
                stuck = [n for n, (r, w) in states.items() if r < w]
                why = "; ".join(f"{n}: {services.diagnose(manager, n)}" for n in stuck)
                raise services.ServiceError(
                    f"timed out after {timeout:.0f}s waiting for {', '.join(stuck)}: {why}"
                )
            elif text != last:
                self.log(f"waiting: {text}")
                last = text

    def _replicas(self) -> list[haproxy.Replica]:
        return haproxy.replicas(self.cluster, self.where.proxy)

    # -- weights --------------------------------------------------------------------------------
    def _weights(self, reading: haproxy.Reading, percent: float) -> dict[str, int | str]:
        """Every target's backend on one replica: `percent` of its requests on its canary."""
        out: dict[str, int | str] = {}
        for t in self.targets:
            own = {s.name for s in haproxy.servers_named(reading, t.backend, SLOTS)}
            out.update(canary.backend_weights(reading.backend(t.backend), own, percent))
        return out

    def _weigh(
        self, readings: Sequence[haproxy.Reading], only_new: bool = False
    ) -> list[haproxy.Reading]:
        """The current share's weights on the replicas of `readings` (`only_new`: those not
        weighted yet in this step); their counters right after."""
        todo = [r for r in readings if not (only_new and r.replica.task in self.weighted)]
        if not todo:
            return []
        self._check()
        after = haproxy.set_weights(
            self.cluster, {r.replica: self._weights(r, self.percent) for r in todo}, then_read=True
        )
        self.weighted.update(r.replica.task for r in todo)
        return after

    def _read(self) -> list[haproxy.Reading]:
        """Every proxy replica's counters; a replica new since the weights were set (a proxy
        task restarted) gets them now."""
        self.readings = haproxy.read(self.cluster, self._replicas())
        if self.percent:
            self._weigh(self.readings, only_new=True)
        return self.readings

    # -- steps ----------------------------------------------------------------------------------
    def step(self, index: int, percent: float) -> None:
        """Send `percent` of each target's backend to its canary for the gate's hold time,
        reading the counters every POLL seconds; StepFailed("...") as soon as the verdict on any
        target is a failure."""
        self.percent = percent
        self.weighted.clear()
        # Counters read right after the weights changed: what was served before belongs to no
        # step. The replicas are those of the last reading; a newer one is weighed at the next.
        first = self._weigh(self.readings or self._read())
        before = {t: _snapshot(first, t.backend) for t in self.targets}
        start = time.monotonic()
        total = len(self.gate.steps)
        self.log(f"canary step {index + 1}/{total}: {percent:g} % for {self.gate.hold:g} s")
        while True:
            left = start + self.gate.hold - time.monotonic()
            time.sleep(max(0.0, min(POLL, left)))
            readings = self._read()
            ended = time.monotonic() >= start + self.gate.hold
            judged = [(t, *self._judge(t, before[t], readings, ended)) for t in self.targets]
            failed = [f"{self._of(t.service)}{why}" for t, _, _, why in judged if why]
            if failed or ended:
                for t, mine, every, _ in judged:
                    self._record(t, percent, mine, every, time.monotonic() - start)
                    self.log(
                        f"canary step {index + 1}/{total}: "
                        f"{self._of(t.service)}{canary.describe(percent, mine, every)}"
                    )
            if failed:
                raise StepFailed(f"{'; '.join(failed)} (step {index + 1}/{total} at {percent:g} %)")
            if ended:
                return

    def _judge(
        self,
        t: Target,
        before: canary.Snapshot,
        readings: Sequence[haproxy.Reading],
        ended: bool,
    ) -> tuple[canary.Figures, canary.Figures, str]:
        """A target's figures since `before` (its canary's, its whole backend's) and the verdict."""
        after = _snapshot(readings, t.backend)
        own = {s.name for r in readings for s in haproxy.servers_named(r, t.backend, SLOTS)}
        mine, every = canary.figures(before, after, own), canary.figures(before, after)
        return mine, every, canary.verdict(mine, self.gate, ended)

    def _record(
        self, t: Target, percent: float, mine: canary.Figures, every: canary.Figures, took: float
    ) -> None:
        share = 100.0 * mine.requests / every.requests if every.requests else 0.0
        self.steps.append(
            {
                "service": t.service,
                "percent": percent,
                "requests": mine.requests,
                "errors": mine.errors,
                "latency_ms": mine.latency,
                "share": round(share, 1),
                "all_requests": every.requests,
                "seconds": round(took, 1),
            }
        )

    def _put_back(self, readings: Sequence[haproxy.Reading]) -> None:
        if not readings:
            raise haproxy.ProxyError("no reading of the proxy yet")
        haproxy.set_weights(self.cluster, {r.replica: self._weights(r, 0) for r in readings})

    def end(self) -> list[str]:
        """Weights back on every proxy replica, then the canaries removed; each tried even when
        another fails. Returns what could not be done (empty: nothing left behind)."""
        left = []
        self.percent = 0.0
        try:
            self._check()
            try:  # the replicas of the last reading: one started since has the configured weights
                self._put_back(self.readings)
            except haproxy.ProxyError:  # one of them is gone: the replicas that run now
                self._put_back(haproxy.read(self.cluster, self._replicas()))
        except Exception as exc:  # a proxy that does not answer: the canary's removal still helps
            left.append(f"the proxy's weights ({str(exc).splitlines()[0][:160]})")
        for t in self.targets:
            try:
                if self._remove_service(t.canary):
                    self.log(f"removed {t.canary}")
            except Exception as exc:
                left.append(f"the service {t.canary} ({str(exc).splitlines()[0][:160]})")
        return left


def run(
    cluster: Cluster,
    where: Targets,
    images: Mapping[str, str],
    gate: canary.Gate,
    log: Log,
    steps: list,
    lock: records.Lock | None = None,
) -> str:
    """The whole canary of a release (`images`: service -> image); `steps` receives each step's
    figures. Passing: a one-line summary. Failing: StepFailed with the figure that failed. The
    canaries are gone either way (and after a signal too), the proxy's weights are back as
    configured; unless `lock` (the deployment's, held) was lost meanwhile: then LockLost, and
    what is left is said."""
    r = Run(cluster, where, images, gate, log, lock)
    try:
        r.start()
        for i, percent in enumerate(gate.steps):
            r.step(i, percent)
    finally:
        steps.extend(r.steps)
        left = r.end()
        if left:
            log("canary clean-up could not put back: " + "; ".join(left))
    if left:
        raise StepFailed("the canary passed, but its clean-up failed: " + "; ".join(left))
    return "canary passed: " + "; ".join(
        f"{s['percent']:g} %: {r._of(s['service'])}{s['requests']} requests, {s['errors']} errors"
        for s in r.steps
    )
