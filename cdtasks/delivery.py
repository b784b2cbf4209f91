"""Delivery: the book's seven steps as plain functions on a `Delivery`: checkout, unit, build,
staging, publish, prod-like, production tests. Each returns a one-line detail or raises
StepFailed; `deliver` runs them all (with what may overlap), `step` one at a time, its state
kept in the workspace between tasks. Versions that pass prod-like are recorded on the cluster
(`rollout.mark_delivered`), for deployment to promote."""
from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from . import records, registry, rollout, services
from .checkout import Checkout
from .compose import Compose, compose_command
from .config import Settings
from .runner import StepFailed, StepResult, beside, run_steps

STEPS = ("checkout", "unit", "build", "staging", "publish", "prodlike", "prodtest")


class DeliveryError(RuntimeError):
    """Bad input found before a step runs (no checkout to go on from)."""


@dataclass
class Delivery(Checkout):
    """One delivery run: what to deliver, its checkout, and what each step learned so far."""

    digest: str | None = None
    converged_at: float = 0.0  # monotonic time the last replica of the last rollout started running
    lock: records.Lock | None = None  # the service's lock while prod-like is changed and tested
    previous_image: str | None = None

    @property
    def pinned(self) -> str:
        """The exact image verified: repository:version@digest (the tag kept for people)."""
        return registry.local_ref(self.settings, self.settings.app_image, self.version or "",
                                  self.digest or "")


# -- steps --------------------------------------------------------------------------------------
def checkout(d: Delivery) -> str:
    return d.clone()


def unit(d: Delivery) -> str:
    d.compose_step(lambda c: c.run("unit"), defer=True)
    return "unit tests passed"


def build(d: Delivery) -> str:
    d.compose_step(lambda c: c.build("app"), defer=True)
    return f"built {d.ref_tag} on {d.settings.cd_node}"


def staging(d: Delivery) -> str:
    """staging-dep up, staging tests against it; `down` always: at once when the step runs
    alone (the session guarantees it); in a whole run beside publish and prod-like, which do
    not use the project (and in the clean-up if the tests fail)."""
    def act(c: Compose) -> None:
        c.up("staging-dep")
        c.run("staging")
    d.compose_step(act, defer=True)
    if d.compose_left:
        d.tear_down_beside()
    if d.teardown:
        return "staging tests passed; staging goes down beside the next steps"
    return "staging tests passed; staging removed"


def publish(d: Delivery) -> str:
    d.record(d.docker_argv("push", d.ref_tag))
    if d.dry_run:
        return f"would push {d.ref_tag}"
    cd = d.cluster.client(d.settings.cd_node)
    for line in cd.images.push(d.image, tag=d.version, stream=True, decode=True):
        if "error" in line:
            raise StepFailed(f"pushing {d.ref_tag} failed: {line['error']}")
        aux = line.get("aux") or {}
        if aux.get("Digest"):
            d.digest = aux["Digest"]
    if not d.digest:
        raise StepFailed(f"the registry reported no digest for {d.ref_tag}")
    return f"pushed {d.ref_tag} ({d.digest[:19]})"


def prodlike(d: Delivery) -> str:
    if not d.dry_run:
        # One release at a time changes (and then tests) the service: the same lock as deploy,
        # taken before the image it guards is read.
        d.lock = records.Lock(d.cluster.live_manager(), d.settings.app_service, d.version,
                              "delivering", d.log).acquire(rollout.LOCK_WAIT)
        d.previous_image = services.current_image(d.cluster.manager(), d.settings.app_service)
    try:
        result = rollout.update(d.cluster, d.settings, d.pinned, d.log, d.dry_run, d.record)
    except StepFailed as exc:
        if d.dry_run or not d.previous_image or d.previous_image == d.pinned:
            raise
        raise StepFailed(f"{exc}; {restore(d)}", exc.output_tail) from None
    d.converged_at = rollout.monitor_start(result)
    return f"{d.settings.app_service} runs {d.ref_tag} on every replica ({result.seconds:.1f}s)"


def restore(d: Delivery) -> str:
    """After a failed prod-like rollout (paused, rolled back by Swarm, timed out): the image
    it ran before on every replica again, as deploy does in production. Says how it ended."""
    d.log(f"rolling prod-like back to {d.previous_image}")
    try:
        d.lock.check()  # another run that took the lock changes the service now, not this one
        rollout.update(d.cluster, d.settings, d.previous_image, d.log)
    except Exception as exc:  # the step's own failure stays the headline
        return f"rolling back to {d.previous_image} failed too: {str(exc).splitlines()[0][:200]}"
    return f"rolled back to {d.previous_image} on every replica"


def prodtest(d: Delivery) -> str:
    """Production tests against prod-like, which must run the published digest (`inv prodlike`
    before) through Swarm's monitor period; only then is the version recorded as verified."""
    try:
        try:
            detail = rollout.production_tests(d, d.cluster, d.settings, d.pinned, d.converged_at)
        except StepFailed as exc:
            raise StepFailed(f"{exc}; {d.version} is not recorded as verified",
                             exc.output_tail) from None
        if not d.dry_run:
            mark_delivered(d)
        return detail
    finally:
        release_lock(d)


def release_lock(d: Delivery) -> None:
    if d.lock:
        lock, d.lock = d.lock, None
        lock.release()


STEP_FUNCS: dict[str, Callable[[Delivery], str]] = {
    "checkout": checkout, "unit": unit, "build": build, "staging": staging,
    "publish": publish, "prodlike": prodlike, "prodtest": prodtest}


def _unbuild(d: Delivery, result: StepResult) -> None:
    """A build that ran beside unit tests that failed leaves nothing behind."""
    if result.ok:
        d.cluster.client(d.settings.cd_node).images.remove(d.ref_tag, noprune=False)


# A step, the one after it that does not need its result, and how to undo that one when the
# first fails: in a whole run the second runs beside the first (the build beside unit tests).
OVERLAP: dict[str, tuple[str, Callable[[Delivery, StepResult], None]]] = {"unit": ("build", _unbuild)}


# -- running them -------------------------------------------------------------------------------
def run(d: Delivery, names: Sequence[str], progress) -> list[StepResult]:
    """The named steps in order; in a whole run (`defer_down`) what may overlap does."""
    together = d.defer_down and not d.dry_run
    if d.defer_down:  # a whole run: the compose CLI is found beside the checkout
        beside(compose_command)
    overlap = {k: (partner, partial(undo, d)) for k, (partner, undo) in OVERLAP.items()}
    return run_steps(names, {n: partial(STEP_FUNCS[n], d) for n in names}, progress,
                     overlap=overlap if together else None, dry_run=d.dry_run, log=d.log)


def deliver(d: Delivery, progress) -> list[StepResult]:
    """A whole delivery; afterwards (also failed or interrupted) the compose project, the lock
    and the checkout go."""
    try:
        return run(d, STEPS, progress)
    finally:
        cleanup(d)


def step(d: Delivery, name: str, progress) -> list[StepResult]:
    """One step, for shell scripts: it holds the lock only while it runs, and leaves its state
    for the next step in the workspace."""
    try:
        results = run(d, [name], progress)
    finally:
        release_lock(d)
    if not d.dry_run:
        save_state(d)
    return results


def cleanup(d: Delivery) -> None:
    """After a run, also a failed or interrupted one: the lock, the compose project and the
    checkout go."""
    try:
        release_lock(d)
    finally:
        d.close()


# -- one step at a time: the checkout's state in the workspace between tasks -----------------
def state_file(s: Settings) -> Path:
    return s.workspace_dir / f"{s.app_service}.release.json"


def save_state(d: Delivery) -> None:
    state_file(d.settings).write_text(json.dumps({
        "repo": d.repo, "ref": d.ref, "version": d.version, "workdir": str(d.workdir),
        "digest": d.digest, "project": d.project}))


def load_state(s: Settings, **kw) -> Delivery:
    """The delivery the last step left (`kw`: how this one runs: dry_run, log...)."""
    f = state_file(s)
    if not f.exists():
        raise DeliveryError(f"no checkout of {s.app_service}: run `inv checkout` first")
    data = json.loads(f.read_text())
    d = Delivery(s, data["repo"], data["ref"], data["version"], workdir=Path(data["workdir"]),
                 digest=data.get("digest"), project=data["project"], **kw)
    if not d.workdir.exists():
        raise DeliveryError(f"checkout {d.workdir} is gone: run `inv checkout` again")
    return d


def state_after(d: Delivery, results: list[StepResult]) -> str:
    """What the failure left behind, in one line, for the user and the report."""
    failed = next((x.name for x in results if x.failed), None)
    if d.dry_run:
        return "dry run: nothing was built, pushed or updated"
    if failed is None:
        if any(x.name == "prodlike" for x in results):
            return f"{d.settings.app_service} runs {d.ref_tag} on prod-like"
        return f"{', '.join(x.name for x in results)} passed; prod-like not changed"
    if failed in ("checkout", "unit", "build", "staging"):
        return f"nothing left behind (staging removed); {d.settings.app_service} untouched"
    if failed == "publish":
        return f"{d.ref_tag} not in the registry; {d.settings.app_service} untouched"
    try:
        running = replicas_text(services.replica_images(d.cluster.manager(),
                                                        d.settings.app_service))
    except Exception:  # the state line must not hide the failure itself
        running = "unknown"
    return f"prod-like runs {running}"


def replicas_text(replicas: list[tuple[str, str]]) -> str:
    """What each replica runs, from services.replica_images, in a few words."""
    images = {image for _, image in replicas}
    if not replicas:
        return "no replica"
    if len(images) == 1:
        return f"{images.pop()} on {', '.join(n for n, _ in replicas)}"
    return ", ".join(f"{image} on {node}" for node, image in replicas)


# -- what passed prod-like, recorded on the cluster -------------------------------------------
def mark_delivered(d: Delivery) -> None:
    """One record per version that passed prod-like: `inv deploy` promotes exactly its digest."""
    rollout.mark_delivered(d.cluster.manager(), d.settings.app_service, {
        "service": d.settings.app_service, "version": d.version, "image": d.ref_tag,
        "digest": d.digest, "repo": d.repo, "commit": d.commit, "time": records.now(),
        "user": getpass.getuser()})
