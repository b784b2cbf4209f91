"""A canary beside the running service: the service's own spec with the new image under the name
`SERVICE-canary` (the name the proxy's `canary` server-template resolves), the proxy's weights
set step by step on every proxy replica, each step held and judged (`canary.verdict`), and,
whatever happens, the proxy's weights put back and the canary removed before it returns. The
running service is never changed here: promoting is the normal rollout that follows.

Right before each change of its own (the canary service created or removed, weights set) the
deployment's lock is checked, as the rollout does: a run that lost it changes nothing more
(records.LockLost; another run may be driving a canary of the same name by then)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from . import canary, haproxy, records, rollout, services
from .cluster import Cluster
from .config import ServicesSettings
from .log import Log
from .runner import StepFailed

SLOTS = "canary"  # the server-template's prefix in haproxy.cfg
LABEL = "io.cdtasks.canary-of"
POLL = 2.0  # seconds between two readings of the proxy's counters within a step
UP_TIMEOUT = 60.0  # seconds every proxy replica has to see the canary's tasks up
# seconds between two looks at whether they do: each look runs python in every proxy task,
# which on a small machine slows the canary's own start (0.25 s cost more than it saved)
UP_POLL = 1.0


def service_name(app: ServicesSettings) -> str:
    return f"{app.app_service}-canary"


def check_proxy(cluster: Cluster, app: ServicesSettings, gate: canary.Gate) -> None:
    """Before anything changes: every proxy replica can be driven and has slots for
    `gate.replicas` canary tasks. ProxyError with one line otherwise."""
    reps = haproxy.replicas(cluster, app.proxy_service)
    for reading in haproxy.check(cluster, reps, app.app_service, SLOTS):
        slots = len(haproxy.servers_named(reading, app.app_service, SLOTS))
        if slots < gate.replicas:
            raise haproxy.ProxyError(
                f"--canary-replicas {gate.replicas}: the proxy's backend {app.app_service} has "
                f"{slots} {SLOTS} slots (server-template {SLOTS} N in haproxy.cfg)"
            )


def _snapshot(readings: Sequence[haproxy.Reading], backend: str) -> canary.Snapshot:
    return {r.replica.task: {s.name: s for s in r.counted(backend)} for r in readings}


class Run:
    """One canary: `start`, `step` for each share, and `end` (always)."""

    def __init__(
        self,
        cluster: Cluster,
        app: ServicesSettings,
        image: str,
        gate: canary.Gate,
        log: Log,
        lock: records.Lock | None = None,
    ):
        self.cluster, self.app, self.image, self.gate, self.log = cluster, app, image, gate, log
        self.lock = lock
        self.name = service_name(app)
        self.percent = 0.0
        self.weighted: set[str] = set()  # proxy tasks whose weights this run changed
        self.readings: list[haproxy.Reading] = []  # the last counters read, for `end`
        self.steps: list[dict] = []  # the figures of each step, for the history

    def _check(self) -> None:
        """Before a change: LockLost unless this run still holds the deployment's lock."""
        if self.lock:
            self.lock.check()

    # -- the canary service ---------------------------------------------------------------------
    def _remove_service(self) -> bool:
        self._check()
        return self.cluster.gateway(self.log).remove_service(self.name)

    def start(self) -> None:
        """Create the canary from the running service's spec and wait until it runs and every
        proxy replica sees its tasks up (at weight 0: no traffic yet). The new image is pulled
        on the service's other nodes meanwhile (for the rollout that promotes it): Swarm pulls
        it on the canary's node itself."""
        manager = self.cluster.gateway(self.log)
        if self._remove_service():  # we hold the lock: a canary of a run that was killed
            self.log(f"removed {self.name}, left by a run that was killed")
        svc = services.existing(manager, self.app.app_service)
        labels = {k: v for k, v in svc.labels.items() if k != "io.cdtasks.stack"}
        with ThreadPoolExecutor(max_workers=1) as pool:
            pulled = pool.submit(
                rollout.prepull, self.cluster, self.app.app_service, self.image, self.log
            )
            self.log(f"starting {self.name} ({self.gate.replicas} replica(s)) with {self.image}")
            self._check()
            manager.create_beside(
                self.app.app_service,
                self.name,
                self.image,
                self.gate.replicas,
                {**labels, LABEL: self.app.app_service},
            )
            services.wait_running(manager, [self.name], self.app.services_timeout, self.log)
            self._wait_seen(svc.endpoint_mode == "dnsrr")
            pulled.result()

    def _wait_seen(self, dnsrr: bool) -> None:
        """Until every proxy replica sees the canary's tasks up: with dnsrr the name resolves
        to each task (a slot each); a VIP is one slot for them all."""
        wanted = self.gate.replicas if dnsrr else 1
        deadline = time.monotonic() + UP_TIMEOUT
        while True:
            self.readings = haproxy.read(self.cluster, self._replicas())
            seen = [
                sum(s.up for s in haproxy.servers_named(r, self.app.app_service, SLOTS))
                for r in self.readings
            ]
            if all(n >= wanted for n in seen):
                return
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"{self.name} runs, but after {UP_TIMEOUT:.0f} s the proxy replicas see "
                    f"{', '.join(map(str, seen))} of its {wanted} server(s) up "
                    f"(HAProxy's health check of it fails?)"
                )
            time.sleep(UP_POLL)

    def _replicas(self) -> list[haproxy.Replica]:
        return haproxy.replicas(self.cluster, self.app.proxy_service)

    # -- weights --------------------------------------------------------------------------------
    def _weights(self, reading: haproxy.Reading, percent: float) -> dict[str, int | str]:
        own = {s.name for s in haproxy.servers_named(reading, self.app.app_service, SLOTS)}
        return canary.backend_weights(reading.backend(self.app.app_service), own, percent)

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
        """Send `percent` to the canary for the gate's hold time, reading the counters every
        POLL seconds; StepFailed("...") as soon as the verdict is a failure."""
        self.percent = percent
        self.weighted.clear()
        # Counters read right after the weights changed: what was served before belongs to no
        # step. The replicas are those of the last reading; a newer one is weighed at the next.
        before = _snapshot(self._weigh(self.readings or self._read()), self.app.app_service)
        start = time.monotonic()
        total = len(self.gate.steps)
        self.log(f"canary step {index + 1}/{total}: {percent:g} % for {self.gate.hold:g} s")
        while True:
            left = start + self.gate.hold - time.monotonic()
            time.sleep(max(0.0, min(POLL, left)))
            readings = self._read()
            after = _snapshot(readings, self.app.app_service)
            own = {
                s.name
                for r in readings
                for s in haproxy.servers_named(r, self.app.app_service, SLOTS)
            }
            mine, every = canary.figures(before, after, own), canary.figures(before, after)
            ended = time.monotonic() >= start + self.gate.hold
            why = canary.verdict(mine, self.gate, ended)
            if why or ended:
                share = 100.0 * mine.requests / every.requests if every.requests else 0.0
                self.steps.append(
                    {
                        "percent": percent,
                        "requests": mine.requests,
                        "errors": mine.errors,
                        "latency_ms": mine.latency,
                        "share": round(share, 1),
                        "all_requests": every.requests,
                        "seconds": round(time.monotonic() - start, 1),
                    }
                )
                self.log(
                    f"canary step {index + 1}/{total}: {canary.describe(percent, mine, every)}"
                )
            if why:
                raise StepFailed(f"{why} (step {index + 1}/{total} at {percent:g} %)")
            if ended:
                return

    def _put_back(self, readings: Sequence[haproxy.Reading]) -> None:
        if not readings:
            raise haproxy.ProxyError("no reading of the proxy yet")
        haproxy.set_weights(self.cluster, {r.replica: self._weights(r, 0) for r in readings})

    def end(self) -> list[str]:
        """Weights back on every proxy replica, then the canary removed; each tried even when
        the other fails. Returns what could not be done (empty: nothing left behind)."""
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
        try:
            if self._remove_service():
                self.log(f"removed {self.name}")
        except Exception as exc:
            left.append(f"the service {self.name} ({str(exc).splitlines()[0][:160]})")
        return left


def run(
    cluster: Cluster,
    app: ServicesSettings,
    image: str,
    gate: canary.Gate,
    log: Log,
    steps: list,
    lock: records.Lock | None = None,
) -> str:
    """The whole canary; `steps` receives each step's figures. Passing: a one-line summary.
    Failing: StepFailed with the figure that failed. The canary is gone either way (and after
    a signal too), the proxy's weights are back as configured; unless `lock` (the deployment's,
    held) was lost meanwhile: then LockLost, and what is left is said."""
    r = Run(cluster, app, image, gate, log, lock)
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
        f"{s['percent']:g} %: {s['requests']} requests, {s['errors']} errors" for s in r.steps
    )
