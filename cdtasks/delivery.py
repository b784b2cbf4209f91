"""Delivery: the book's seven steps as plain functions on a `Delivery`: checkout, unit, build,
staging, publish, prod-like, production tests. Each returns a one-line detail or raises
StepFailed; `deliver` runs them all (with what may overlap), `step` one at a time, its state
kept in the workspace between tasks. Versions that pass prod-like are recorded on the cluster
(`rollout.mark_delivered`), for deployment to promote."""

from __future__ import annotations

import getpass
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from . import (
    checks,
    interrupt,
    jobs,
    outcome,
    project_images,
    records,
    registry,
    release,
    rollout,
    services,
    stack,
)
from .budget import Budget
from .checkout import Checkout
from .cluster import Cluster
from .compose import Compose, ContractError, compose_command

# Settings whole: a delivery is a Checkout (see checkout.py)
from .config import ConfigError, Settings
from .deployment import Deployment, history_group, what_runs
from .gateway import Gateway
from .log import Log
from .outcome import Outcome
from .redaction import redact
from .runner import StepFailed, StepResult, beside, run_steps
from .stackplan import StackError

STEPS = ("checkout", "unit", "build", "staging", "publish", "prodlike", "prodtest")


class DeliveryError(RuntimeError):
    """Bad input found before a step runs (no checkout to go on from)."""


@dataclass
class Delivery(Checkout):
    """One delivery run: what to deliver, its checkout, and what each step learned so far."""

    digest: str | None = None  # the app image's digest in the registry
    digests: dict[str, str] = field(default_factory=dict)  # compose service -> pushed digest
    converged_at: float = 0.0  # monotonic time the last replica of the last rollout started running
    lock: records.Lock | None = None  # the release's lock while prod-like is changed and tested
    targets: dict[str, str] = field(default_factory=dict)  # Swarm service -> pinned image
    previous: dict[str, str] = field(default_factory=dict)  # Swarm service -> image before
    staging_lock: records.Lock | None = None  # the CD node's staging lock while staging is up
    built: str = ""  # ID of the app image the build made (compose's label names the run's project)
    checked: bool = False  # the flags passed `check_input`
    refused: Exception | None = None  # the checkout's bad input (exit 2, not a failed step)
    images_ready: bool = False  # the project's images are on the CD node
    max_errors: int | None = None  # prod-like's error budget (None: errors recorded only)
    budget: Budget | None = None  # what the proxy counted during the prod-like rollout
    # The compose services build and publish make (empty: every one that builds, a release;
    # `publish_missing` names the one image the registry lacks)
    only: tuple[str, ...] = ()
    _providing: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def pinned(self) -> str:
        """The exact image verified: repository:version@digest (the tag kept for people)."""
        return registry.local_ref(
            self.settings, self.settings.services.app_image, self.version or "", self.digest or ""
        )


def check_input(d: Delivery) -> None:
    """The flags (--version, --ref, --repo, --compose-file), before any step runs: ConfigError,
    one line naming the flag (exit 2). Tasks call it before their progress display; `deliver`
    and `step` call it for other callers."""
    if d.version is not None:
        checks.version(d.version)
    checks.ref(d.ref)
    checks.repo(d.repo)
    checks.compose_file(d.settings.delivery.compose_file, d.repo, d.ref)
    d.checked = True


# -- steps --------------------------------------------------------------------------------------
def checkout(d: Delivery) -> str:
    """Clone, then read the compose file's model once: a file without the contract (or one
    leaving the checkout) is bad input, raised by `run` after the step (exit 2)."""
    try:
        detail = d.clone()
        d.contract()
    except (ContractError, ConfigError) as exc:
        d.refused = exc
        d.close()  # nothing runs in this checkout (a step run alone keeps no state of it)
        raise StepFailed(str(exc)) from None
    return detail


def provide_images(d: Delivery) -> None:
    """The images the project's tests and build need, put on the CD node once per run (unit
    and build ask at the same time in a whole run): no `inv services` needed before."""
    with d._providing:
        if d.images_ready or d.dry_run:
            return
        s, cluster = d.settings, d.cluster
        try:
            done = project_images.ensure(
                d.contract(),
                cluster.client(s.cluster.cd_node),
                s.cluster.cd_node,
                registry.address(s),
                cluster.provider.image_source(),
                d.log,
            )
        except project_images.MissingImage as exc:
            raise StepFailed(str(exc)) from None
        for line in done:
            d.log(line)
        d.images_ready = True


def unit(d: Delivery) -> str:
    provide_images(d)

    def act(c: Compose) -> None:
        d.starting("unit tests running")
        c.run("unit")

    d.compose_step(act, defer=True)
    return "unit tests passed"


def published(d: Delivery) -> dict[str, str]:
    """Compose service -> REGISTRY/NAME:VERSION for every service of the compose file that
    builds an image (`app` as APP_IMAGE): the release's images (only those of `d.only`
    when it names some)."""
    names = release.built_names(d.contract(), d.settings.services.app_image)
    return {
        svc: registry.local_ref(d.settings, name, d.version or "")
        for svc, name in names.items()
        if not d.only or svc in d.only
    }


def build(d: Delivery) -> str:
    provide_images(d)
    refs = published(d)

    def act(c: Compose) -> None:
        d.starting(f"building {', '.join(refs[s] for s in sorted(refs))}")
        c.build(*sorted(refs))

    d.compose_step(act, defer=True)
    for svc in sorted(refs):
        tag_built(d, svc, refs[svc])
    return f"built {', '.join(refs[s] for s in sorted(refs))} on {d.settings.cluster.cd_node}"


def tag_built(d: Delivery, service: str, ref: str) -> None:
    """Tag the image the build made for `service` as `ref` (REGISTRY/NAME:VERSION), as the
    book does (`docker tag go-demo localhost:5000/go-demo:1.1`). Found by the labels compose
    puts on what it builds (this run's unique project, the service), not by the compose file's
    name: with a plain `image: go-demo` another run of the same project may build
    `go-demo:latest` between this build and this tag, and the tag would then take the other
    run's image."""
    s, named = d.settings, d.contract().built_image(service, project=d.project)
    if named != ref:  # `${IMAGE}:${VERSION}` style: compose tagged it already
        d.record(d.docker_argv("tag", named, ref))
    if d.dry_run:
        return
    cd = d.cluster.client(s.cluster.cd_node)
    found = cd.images.list(
        filters={
            "label": [
                f"com.docker.compose.project={d.project}",
                f"com.docker.compose.service={service}",
            ]
        }
    )
    if len(found) != 1:
        raise StepFailed(
            f"the build made {len(found)} images labelled with project {d.project} "
            f"on {s.cluster.cd_node}, not one: cannot tell which is {named}"
        )
    repository, _, tag = ref.rpartition(":")
    found[0].tag(repository, tag)
    if service == "app":
        d.built = found[0].id


def name_the_build(d: Delivery) -> None:
    """Under the staging lock: the compose file's own name for the built image (what
    staging-dep runs) is this run's build again, since another run's build may have retagged
    it after ours. Safe: every run that ups staging-dep from that name on this node retags
    and ups under the same lock, and `up` binds the container to the image ID."""
    named = d.contract().built_image(project=d.project)
    if named == d.ref_tag:
        return
    d.record(d.docker_argv("tag", d.ref_tag, named))
    if not d.dry_run and d.built:
        repository, _, tag = named.rpartition(":")
        d.cluster.client(d.settings.cluster.cd_node).images.get(d.built).tag(repository, tag)


def staging_lock_needed(d: Delivery) -> bool:
    """Two runs on one CD node must not share staging when the project publishes host ports
    (the second `up` would fail on the port), nor when staging-dep runs a name that is the same
    for every run (`image: go-demo` is `go-demo:latest`: the other run's build may retag it)."""
    model = d.contract()
    return bool(model.ports) or model.built_image(project=d.project) != d.ref_tag


def staging(d: Delivery) -> str:
    """staging-dep up, staging tests against it; `down` always: at once when the step runs
    alone (the session guarantees it); in a whole run beside publish and prod-like, which do
    not use the project (and in the clean-up if the tests fail). Under the CD node's staging
    lock when needed (`staging_lock_needed`): then down at once, before the lock goes."""

    def act(c: Compose) -> None:
        d.starting("starting staging-dep")
        c.up("staging-dep")
        d.starting("staging tests running")
        c.run("staging")

    if not staging_lock_needed(d):
        d.compose_step(act, defer=True)
    else:
        take_staging_lock(d)
        try:
            name_the_build(d)
            d.compose_step(act)
        finally:
            release_staging_lock(d)
    if d.compose_left:
        d.tear_down_beside()
    if d.teardown:
        return "staging tests passed; staging goes down beside the next steps"
    return "staging tests passed; staging removed"


def publish(d: Delivery) -> str:
    """Push every image of the release; each one's digest is what prod-like runs."""
    refs = published(d)
    for svc in sorted(refs):
        d.record(d.docker_argv("push", refs[svc]))
    if d.dry_run:
        return f"would push {', '.join(refs[s] for s in sorted(refs))}"
    cd = d.cluster.client(d.settings.cluster.cd_node)
    for svc in sorted(refs):
        repository, _, tag = refs[svc].rpartition(":")
        d.starting(f"pushing {refs[svc]}")
        for line in cd.images.push(repository, tag=tag, stream=True, decode=True):
            if "error" in line:
                raise StepFailed(f"pushing {refs[svc]} failed: {line['error']}")
            aux = line.get("aux") or {}
            if aux.get("Digest"):
                d.digests[svc] = aux["Digest"]
        if not d.digests.get(svc):
            raise StepFailed(f"the registry reported no digest for {refs[svc]}")
    d.digest = d.digests.get("app")
    return ", ".join(f"pushed {refs[s]} ({d.digests[s][:19]})" for s in sorted(refs))


# -- the project's images a stack runs, pushed before its first services (`inv services`) ---
def publish_missing(
    s: Settings, cluster: Cluster, missing: Mapping[str, Sequence[str]], where: str, log: Log
) -> list[str]:
    """Build and push each image of `missing` (REGISTRY/NAME:TAG -> the stack services that
    run it, none in the registry) that the delivery compose file builds (`published`), as a
    release's build and publish steps make it, with VERSION=TAG: from a checkout of REPO at
    HEAD per tag, checked as any delivery's (`check_input`, `contract`). Any other image is
    refused first, naming it and its services (StackError, `where`: the stack file); a
    failed build names its compose service (ServiceError). One line per image done."""
    by_tag: dict[str, list[str]] = {}
    for ref in sorted(missing):
        by_tag.setdefault(_tag(ref), []).append(ref)
    done = []
    for tag, refs in sorted(by_tag.items()):
        d = Delivery(s, s.delivery.repo, version=tag, log=log, defer_down=True, _cluster=cluster)
        try:
            check_input(d)
            log(f"the registry lacks {', '.join(refs)}: checking out the project to build them")
            try:
                log(f"checked out {d.clone()}")
            except StepFailed as exc:
                raise services.ServiceError(str(exc)) from None
            names = set(release.built_names(d.contract(), s.services.app_image).values())
            for ref, users in sorted(missing.items()):  # all tags: refused before any build
                # as publish names them (REGISTRY_URL may have a path: team-registry/team/NAME)
                if ref not in {registry.local_ref(s, name, _tag(ref)) for name in names}:
                    raise StackError(
                        f"{where}: service {', '.join(users)}: image {ref} is neither one of "
                        f"cdtasks' offline images, nor in the registry, nor built by "
                        f"{s.delivery.compose_file}"
                    )
            built = {ref: svc for svc, ref in published(d).items()}
            for ref in refs:
                d.only = (built[ref],)
                try:
                    build(d)
                    publish(d)
                except StepFailed as exc:
                    why = (exc.output_tail.strip().splitlines() or [str(exc)])[-1]
                    raise services.ServiceError(
                        f"compose service {built[ref]} of {s.delivery.compose_file} ({ref}): {why}"
                    ) from None
                done.append(f"built and pushed {ref}")
        finally:
            cleanup(d)
    return done


def _tag(ref: str) -> str:
    """`localhost:5000/team-api:1.0` -> `1.0` (a stack's images are pinned)."""
    return ref.partition("@")[0][len(registry.repository(ref)) + 1 :]


def release_targets(d: Delivery) -> dict[str, str]:
    """Swarm service -> pinned image (REGISTRY/NAME:VERSION@DIGEST) for every service of the
    release: each stack service (a job too) that runs an image the repository builds."""
    s = d.settings
    refs = published(d)
    pinned = {
        svc: f"{ref}@{d.digests[svc]}" if d.digests.get(svc) else ref for svc, ref in refs.items()
    }
    found = stack.members(s, pinned)
    if not found:
        raise StepFailed(
            f"no service of {s.stack.stack_file} runs an image the repository builds "
            f"({', '.join(sorted(release.image_name(r) for r in refs.values()))})"
        )
    return found


def prodlike(d: Delivery) -> str:
    """Every service of the release updated together on prod-like; if any of them fails to
    roll out, all go back to what they ran before (all or nothing), and the history says so."""
    s = d.settings
    d.targets = release_targets(d)
    if not d.dry_run:
        # One release at a time changes (and then tests) the services: the same lock as
        # deploy, the stack's or the service's, taken before the images it guards are read.
        d.lock = records.Lock(
            d.cluster.gateway(), release.key(s), d.version or "", "delivering", d.log
        ).acquire(rollout.LOCK_WAIT)
        manager = d.cluster.gateway()
        d.previous = {svc: services.current_image(manager, svc) for svc in d.targets}

    def keep(b: Budget) -> None:
        d.budget = b

    try:
        results = rollout.measured_update(
            d.cluster, s.services, d.targets, d.log, keep, d.max_errors, d.dry_run, d.record, d.lock
        )
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM (interrupt.Interrupted)
        # Swarm goes on with what it was asked: the history says what each replica runs now.
        if not d.dry_run:
            history_of_interrupted(d)
        raise
    except StepFailed as exc:
        back = release.changed(d.targets, d.previous)
        if d.dry_run or not back:
            raise
        restored, how = restore(d, back)
        write_history(d, Outcome.FAILED_ROLLED_BACK if restored else Outcome.FAILED_NOT_RECOVERED)
        raise StepFailed(f"{exc}; {how}", exc.output_tail) from None
    d.converged_at = rollout.monitor_start(results)
    seconds = max((r.seconds for r in results), default=0.0)
    if len(d.targets) == 1:  # the book's service, or a stack's one released service
        ((svc, image),) = d.targets.items()
        tag = image.partition("@")[0]
        detail = f"{svc} runs {tag} on every replica ({seconds:.1f}s)"
    else:
        names = ", ".join(sorted(d.targets))
        detail = f"{names} run version {d.version} on every replica ({seconds:.1f}s)"
    return f"{detail}; {d.budget.summary()}" if d.budget else detail


def restore(d: Delivery, back: dict[str, str]) -> tuple[bool, str]:
    """After a failed prod-like rollout (paused, rolled back by Swarm, timed out, another
    service of the release failing) or failed production tests there: the images the services ran before (`back`), on every
    replica again, as deploy does in production. Says whether it worked, and how it ended."""
    lock = d.lock
    assert lock is not None  # prodlike took the lock, then read the images
    try:
        lock.check()  # another run that took the lock changes the services now, not this one
        back = rollout.to_undo(d.cluster, back)
        if not back:
            return True, rollout.NOTHING_BACK
        d.log(f"rolling prod-like back: {release.summary(back)}")
        rollout.update(d.cluster, d.settings.services, back, d.log, lock=lock)
    except Exception as exc:  # the step's own failure stays the headline
        return False, f"rolling back failed too: {str(exc).splitlines()[0][:200]}"
    if len(d.targets) > 1:  # a stack's release: which of its services went back
        return True, f"rolled back on every replica: {release.summary(back)}"
    return True, f"rolled back to {next(iter(back.values()))} on every replica"


def prodtest(d: Delivery) -> str:
    """Production tests against prod-like, which must run the published digests (`inv
    prodlike` before) through Swarm's monitor period; only then is the version recorded as
    verified. When they fail after this run's prodlike changed the services (a whole run:
    the lock still held, what ran before known), every service of the release goes back, as
    after a failed rollout, and the history says so."""
    try:
        targets = d.targets or release_targets(d)
        try:
            detail = rollout.production_tests(d, d.cluster, targets, d.converged_at)
        except KeyboardInterrupt:
            if not d.dry_run and d.previous:  # prod-like runs the release, unverified
                history_of_interrupted(d)
            raise
        except StepFailed as exc:
            failure = f"{exc}; {d.version} is not recorded as verified"
            back = release.changed(targets, d.previous)
            if d.dry_run or d.lock is None or not back:
                raise StepFailed(failure, exc.output_tail) from None
            restored, how = restore(d, back)
            write_history(
                d, Outcome.FAILED_ROLLED_BACK if restored else Outcome.FAILED_NOT_RECOVERED
            )
            raise StepFailed(f"{failure}; {how}", exc.output_tail) from None
        if not d.dry_run:
            d.targets = targets
            mark_delivered(d)
            write_history(d, Outcome.DEPLOYED)
        return detail
    finally:
        release_lock(d)


def history_of_interrupted(d: Delivery) -> None:
    """The "interrupted" entry; a cluster that does not answer is said, and the interruption
    stays what ends the run."""
    try:
        write_history(d, Outcome.INTERRUPTED)
    except Exception as exc:
        d.log(f"the history could not be written: {str(exc).splitlines()[0][:160]}")


def write_history(d: Delivery, result: str) -> None:
    """The release's entry in the test cluster's history: each service with its image before
    and after, so that `inv rollback --env test` knows the previous release; unless the release
    is in place, also the image each replica runs. A signal does not cut it short."""
    s = d.settings
    app = d.targets[min(d.targets)] if d.targets else ""
    manager = d.cluster.gateway()
    running = {} if Outcome.of(result).ok else {"running": what_runs(manager, d.targets)}
    entry = {
        "time": records.now(),
        "user": getpass.getuser(),
        "env": s.env,
        "service": release.key(s),
        "kind": "deliver",
        "version": d.version,
        "image": app,
        "digest": app.partition("@")[2],
        "previous": d.previous.get(min(d.targets), "") if d.targets else "",
        "result": result,
        "services": release.parts(d.targets, d.previous),
        **running,
    }
    with interrupt.deferred():
        records.put(manager, "history", release.key(s), entry, group=history_group)


def release_lock(d: Delivery) -> None:
    if d.lock:
        lock, d.lock = d.lock, None
        lock.release()
    release_staging_lock(d)


def staging_lock_name(s: Settings) -> str:
    return f"staging-{s.cluster.cd_node}"


def take_staging_lock(d: Delivery) -> None:
    """The CD node's staging lock (a record lock on the test cluster, renewed while held),
    waited for like the service's lock; said in the log."""
    node = d.settings.cluster.cd_node
    ports = sorted({p for ps in d.contract().ports.values() for p in ps})
    d.log(
        f"staging takes the staging lock of {node}"
        + (f" (host ports {', '.join(map(str, ports))})" if ports else "")
    )
    if d.dry_run:
        return
    d.staging_lock = records.Lock(
        d.cluster.gateway(), staging_lock_name(d.settings), d.version or "", "staging", d.log
    ).acquire(rollout.LOCK_WAIT)


def release_staging_lock(d: Delivery) -> None:
    if d.staging_lock:
        lock, d.staging_lock = d.staging_lock, None
        lock.release()


STEP_FUNCS: dict[str, Callable[[Delivery], str]] = {
    "checkout": checkout,
    "unit": unit,
    "build": build,
    "staging": staging,
    "publish": publish,
    "prodlike": prodlike,
    "prodtest": prodtest,
}


def _unbuild(d: Delivery, result: StepResult) -> None:
    """A build that ran beside unit tests that failed leaves nothing behind."""
    if result.ok:
        d.cluster.client(d.settings.cluster.cd_node).images.remove(d.ref_tag, noprune=False)


# A step, the one after it that does not need its result, and how to undo that one when the
# first fails: in a whole run the second runs beside the first (the build beside unit tests).
OVERLAP: dict[str, tuple[str, Callable[[Delivery, StepResult], None]]] = {
    "unit": ("build", _unbuild)
}


# -- running them -------------------------------------------------------------------------------
def run(d: Delivery, names: Sequence[str], progress) -> list[StepResult]:
    """The named steps in order; in a whole run (`defer_down`) what may overlap does."""
    together = d.defer_down and not d.dry_run
    if d.defer_down:  # a whole run: the compose CLI is found beside the checkout
        beside(compose_command)
    if "checkout" in names and not d.checked:
        check_input(d)
    overlap = {k: (partner, partial(undo, d)) for k, (partner, undo) in OVERLAP.items()}
    results = run_steps(
        names,
        {n: partial(STEP_FUNCS[n], d) for n in names},
        progress,
        overlap=overlap if together else None,
        dry_run=d.dry_run,
        log=d.log,
    )
    if d.refused is not None:
        raise d.refused
    return results


def deliver(d: Delivery, progress) -> list[StepResult]:
    """A whole delivery; afterwards (also failed or interrupted) the compose project, the lock
    and the checkout go."""
    try:
        return run(d, STEPS, progress)
    finally:
        cleanup(d)


def failed_code(results: Sequence[StepResult]) -> int:
    """The exit code of a delivery's results: 0, or the failed step's (an interrupted one is
    the interruption's to tell)."""
    failed = next((r for r in results if r.failed and not r.interrupted), None)
    return outcome.step_failed(STEPS.index(failed.name)) if failed else 0


def deliver_then_deploy(
    d: Delivery,
    prod: Settings | None,
    delivered: Callable[[Delivery], list[StepResult]],
    deployed: Callable[[Deployment], dict],
) -> int:
    """`inv deliver [--deploy]` and the watcher alike: deliver `d`; when it passed and `prod` is
    given (not a dry run), deploy the version it verified there. `delivered(d)` runs the
    delivery and shows and keeps its results, `deployed(deployment)` the deployment's, returning
    its history entry (the caller's presentation). Returns the exit code (outcome's table)."""
    check_input(d)
    code = failed_code(delivered(d))
    if code or prod is None or d.dry_run:
        return code
    entry = deployed(Deployment(prod, d.settings, d.version, max_errors=d.max_errors))
    return outcome.Outcome.of(entry["result"]).exit_code


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
    return s.delivery.workspace_dir / f"{release.key(s)}.release.json"


def save_state(d: Delivery) -> None:
    state_file(d.settings).write_text(
        json.dumps(
            {
                "repo": redact(d.repo),
                "ref": d.ref,
                "version": d.version,
                "workdir": str(d.workdir),
                "digest": d.digest,
                "digests": d.digests,
                "project": d.project,
                "built": d.built,
            }
        )
    )


def load_state(s: Settings, **kw) -> Delivery:
    """The delivery the last step left (`kw`: how this one runs: dry_run, log...)."""
    f = state_file(s)
    if not f.exists():
        raise DeliveryError(f"no checkout of {release.key(s)}: run `inv checkout` first")
    data = json.loads(f.read_text())
    workdir = Path(data["workdir"])
    d = Delivery(
        s,
        data["repo"],
        data["ref"],
        data["version"],
        workdir=workdir,
        digest=data.get("digest"),
        digests=data.get("digests") or {},
        project=data["project"],
        built=data.get("built") or "",
        **kw,
    )
    if not workdir.exists():
        raise DeliveryError(f"checkout {workdir} is gone: run `inv checkout` again")
    return d


def state_after(d: Delivery, results: list[StepResult]) -> str:
    """What the failure left behind, in one line, for the user and the report."""
    failed = next((x.name for x in results if x.failed), None)
    what = release.key(d.settings)  # the service, or the stack
    if d.dry_run:
        return "dry run: nothing was built, pushed or updated"
    if failed is None:
        if any(x.name == "prodlike" for x in results):
            if len(d.targets) > 1:
                return f"prod-like: {release.summary(d.targets)}"
            return f"{what} runs {d.ref_tag} on prod-like"
        return f"{', '.join(x.name for x in results)} passed; prod-like not changed"
    if failed in ("checkout", "unit", "build", "staging"):
        if d.compose_left:  # its clean-up was cut short, or the CD node did not answer
            return (
                f"left behind: compose project {d.project} on {d.settings.cluster.cd_node}; "
                f"{what} untouched"
            )
        return f"nothing left behind (staging removed); {what} untouched"
    if failed == "publish":
        return f"{d.ref_tag} not in the registry; {what} untouched"
    if not d.targets:  # the release's services are found before any of them changes
        return f"{d.ref_tag} in the registry; {what} untouched"
    try:
        manager = d.cluster.gateway()
        running = "; ".join(runs_text(manager, svc) for svc in sorted(d.targets))
    except Exception:  # the state line must not hide the failure itself
        running = "unknown"
    return f"prod-like runs {running}"


def runs_text(manager: Gateway, name: str) -> str:
    """What a service runs now, in a few words: its replicas' images; for a job, which runs no
    task once it ended, how its current run went, on which image."""
    svc = services.existing(manager, name)
    if svc.job:
        _, run = jobs.current_run(svc, manager.tasks(svc.id))
        return f"{name}: {run.said} on {svc.image}"
    return replicas_text(services.replica_images(manager, name))


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
    rollout.mark_delivered(
        d.cluster.gateway(),
        release.key(d.settings),
        {
            "service": release.key(d.settings),
            "services": release.parts(d.targets, d.previous),
            "version": d.version,
            "image": d.ref_tag,
            "digest": d.digest,
            "repo": redact(d.repo),
            "commit": d.commit,
            "compose_file": d.settings.delivery.compose_file,
            "time": records.now(),
            "user": getpass.getuser(),
        },
    )
