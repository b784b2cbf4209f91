"""Continuous deployment: promote the exact digest verified on prod-like, verify with production
tests, roll back automatically, one deployment per cluster at a time, and a history kept on the
cluster itself and in a local log. `run` does it all; the work itself is `rollout`'s."""

from __future__ import annotations

import getpass
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from . import (
    canary,
    canary_rollout,
    gateway,
    haproxy,
    records,
    registry,
    release,
    rollout,
    services,
    stack,
    stackfile,
    state,
)
from .budget import Budget
from .checkout import Checkout, check_version
from .cluster import Cluster

# Settings whole: two clusters (Cluster.of) and a Checkout for the tests
from .config import Settings
from .gateway import Gateway
from .interrupt import deferred
from .log import Log
from .outcome import Outcome
from .redaction import redact
from .runner import RunInterrupted, StepFailed, StepResult, run_step
from .stackplan import NAMESPACE


class DeploymentError(RuntimeError):
    """Bad input or a fault found before anything changed (unknown version, no service...)."""


@dataclass
class Deployment:
    prod: Settings  # the cluster deployed to
    test: Settings  # where versions are verified (prod-like) and the CD node runs tests
    version: str | None = None
    force: bool = False
    auto_rollback: bool = True
    wait: float = 0.0
    max_errors: int | None = None  # the rollout's error budget (None: errors recorded only)
    log: Log = print
    on_line: Log | None = None
    kind: str = "deploy"  # deploy | rollback
    canary: canary.Gate | None = None  # a canary before the rollout (`inv deploy --canary`)
    # learned while running
    images: dict[str, str] = field(default_factory=dict)  # the release: service -> image
    before: dict[str, str] = field(default_factory=dict)  # service -> image it ran before
    image: str = ""  # the application's image (the book's one service, or the stack's app)
    digest: str = ""
    previous: str = ""
    rolled_back: bool = False
    budget: Budget | None = None  # what the proxy counted during the rollout step
    converged_at: float = 0.0  # monotonic time the last replica of the last rollout started
    checkout: Checkout | None = (
        None  # where the production tests run (on the test cluster's CD node)
    )
    cluster: Cluster | None = None
    started: float = field(default_factory=time.monotonic)
    run_id: str = field(default_factory=lambda: secrets.token_hex(6))  # ties its history entries
    canary_steps: list[dict] = field(default_factory=list)  # each canary step's figures
    canaries: canary_rollout.Targets | None = None  # where they go (prepare)

    @property
    def service(self) -> str:
        """What the lock and the history are kept under: the stack, else the service."""
        return release.key(self.prod)


def _digest_in_registry(manager, s: Settings, ref: str, node: str) -> str:
    """The digest the registry has for `ref`, checked through a manager of the cluster."""
    try:
        return manager.registry_digest(ref)
    except gateway.NotFound:
        raise DeploymentError(f"unknown version: {ref} is not in the registry") from None
    except gateway.APIFailure as exc:
        text = str(exc)
        if "not found" in text.lower() or "manifest unknown" in text.lower():
            raise DeploymentError(f"unknown version: {ref} is not in the registry") from None
        raise DeploymentError(
            f"registry unreachable at {registry.address(s)} "
            f"(asked through {node}): {text.splitlines()[0][:200]}"
        ) from None


def passed(d: Deployment) -> list[dict]:
    """The versions that passed prod-like on the test cluster, oldest first."""
    return rollout.delivered(Cluster.of(d.test).discover().gateway(), release.key(d.test))


def resolve(d: Deployment) -> dict:
    """What to deploy, from the versions that passed prod-like on the test cluster."""
    return choose(d, passed(d))


def choose(
    d: Deployment, passed: list[dict], hint: str = "deliver it first, or use --force"
) -> dict:
    """The record of a version that passed prod-like (`passed`, oldest first; by default the
    last one). A version that never passed there is refused unless forced (`hint`: what the
    refusal tells to do)."""
    if d.version is None:
        if not passed:
            raise DeploymentError(
                f"no version of {d.service} has passed `inv deliver` on "
                f"prod-like yet: deliver one, or give --version with --force"
            )
        return passed[-1]
    found = [p for p in passed if p["version"] == d.version]
    if found:
        return found[-1]
    if not d.force:
        known = ", ".join(sorted({p["version"] for p in passed})) or "none"
        raise DeploymentError(
            f"version {d.version} never passed prod-like (passed: {known}); {hint}"
        )
    return {
        "version": d.version,
        "image": registry.local_ref(d.prod, d.prod.services.app_image, d.version),
        "digest": "",
        "repo": d.test.delivery.repo,
        "commit": "",
    }


def rollback_target(manager, d: Deployment) -> dict[str, str]:
    """Service -> image of the last successful release other than the running one (the
    history's). Empty when there is none. Entries naming a service the cluster no longer runs
    (one of the env-file services of an older cdtasks, go-demo before go-demo_main) are
    passed over: there is nothing of theirs to move back."""
    running = {svc.name for svc in manager.services()}
    history = [
        e
        for e in records.load(manager, "history", d.service)
        if set(release.images_of(e)) <= running
    ]
    names = sorted({s for entry in history for s in release.images_of(entry)})
    current = {s: services.current_image(manager, s) for s in names}
    return release.rollback_target(history, current)


def _release_of(record: dict, d: Deployment, manager) -> dict[str, str]:
    """Service -> pinned image of a delivered record: its set; a version forced (`--force`,
    never delivered) is its APP_IMAGE tag at the registry's digest, on every stack service
    that runs that image. Production gets the images and digests verified on prod-like, never
    a tag resolved again, whatever this environment's APP_IMAGE names; each must be in
    production's registry."""
    if record.get("services"):
        images = release.images_of(record)
    else:
        tag_ref = record["image"]
        digest = _digest_in_registry(manager, d.prod, tag_ref, d.prod.cluster.leader)
        images = stack.members(d.prod, {"app": f"{tag_ref}@{digest}"})
        if not images:
            raise DeploymentError(
                f"no service of {d.prod.stack.stack_file} runs {release.image_name(tag_ref)}"
            )
    for image in images.values():
        _digest_in_registry(manager, d.prod, image.partition("@")[0], d.prod.cluster.leader)
        repo_ref = f"{registry.repository(image)}@{image.partition('@')[2]}"
        _digest_in_registry(manager, d.prod, repo_ref, d.prod.cluster.leader)
    return images


def check_input(d: Deployment) -> None:
    """--version, when given, before anything is asked of a cluster (DeploymentError)."""
    if d.version is not None:
        try:
            check_version(d.version)
        except StepFailed as exc:
            raise DeploymentError(str(exc)) from None


def prepare(d: Deployment) -> records.Lock:
    """Resolve the version, take the lock, then read what it guards (the image production runs,
    the rollback target) and check the cluster before anything changes. Returns the lock, held.
    Raises DeploymentError / LockHeld / EngineError with one clear line."""
    check_input(d)
    d.cluster = Cluster.of(d.prod).discover()
    back = d.kind == "rollback" and d.version is None
    record = {"repo": d.test.delivery.repo, "commit": ""} if back else resolve(d)
    # The lock before the state it guards: a run that waited for another one reads what that
    # one left, not what ran before it.
    lock = records.Lock(
        d.cluster.gateway(),
        d.service,
        d.version or "a previous version",
        "rolling back"
        if d.kind == "rollback"
        else "running a canary of"
        if d.canary
        else "deploying",
        d.log,
    ).acquire(d.wait)
    try:
        manager = d.cluster.gateway()
        if back:
            d.images = rollback_target(manager, d)
            if not d.images:
                raise DeploymentError(
                    f"{d.service} on {d.prod.env} has no previous version to roll back to"
                )
            d.before = {s: services.current_image(manager, s) for s in d.images}
        else:  # the plan `inv plan --version` shows, read again under the lock
            p = release_plan(d, manager, record)
            d.images, d.before = p.images, p.before
        d.image = d.images[min(d.images)]
        d.previous = d.before[min(d.before)]
        d.digest = d.image.partition("@")[2]
        d.version = record.get("version") or d.image.split("@")[0].rsplit(":", 1)[-1]
        if back:
            # Its production tests are those of the delivery that verified it, if one did.
            record = next(
                (r for r in reversed(passed(d)) if d.digest and r.get("digest") == d.digest), record
            )
        if d.canary:  # where the canaries go, and a proxy that can take them, before any starts
            d.canaries = canaries(d.cluster, d.images, d.canary, d.log)
    except BaseException:
        lock.release()
        raise
    d.checkout = checkout_for_tests(d, record)
    return lock


def canaries(
    cluster: Cluster, images: dict[str, str], gate: canary.Gate, log: Log
) -> canary_rollout.Targets:
    """The canaries of the release `images`, each with a backend in a proxy that can be driven
    and has slots for them; the released services that have none are said (they roll with the
    promotion). DeploymentError with one line otherwise."""
    try:
        where = canary_rollout.targets(cluster, images)
        canary_rollout.check_proxy(cluster, where, gate)
    except (canary_rollout.NoTarget, haproxy.ProxyError, stackfile.StackFileError) as exc:
        raise DeploymentError(f"--canary: {exc}") from None
    if where.without:
        log(
            f"--canary: {', '.join(where.without)} not behind the proxy {where.proxy}: no "
            "canary, rolled out with the promotion"
        )
    return where


def release_plan(d: Deployment, manager, record: dict) -> release.Plan:
    """The release of a delivered `record` to d.prod, from what runs there: the one
    description of it, which `inv plan --version` prints and `prepare` carries out."""
    images = _release_of(record, d, manager)
    found = {s: services.existing(manager, s) for s in images}
    ns = d.prod.stack.stack_name  # the stack's jobs: members run first, others not
    jobs = [x.name for x in manager.services() if x.job and x.labels.get(NAMESPACE) == ns]
    return release.plan(
        d.prod.env,
        d.service,
        record.get("version") or d.version or "",
        images,
        {s: (x.image, x.replicas) for s, x in found.items()},
        records.load(manager, "history", d.service),
        jobs,
    )


def plan(d: Deployment) -> release.Plan:
    """What a deployment of d.version would do, changing nothing (no lock: `inv plan`)."""
    check_input(d)
    record = choose(d, passed(d), hint="deliver it first")
    manager = Cluster.of(d.prod).discover().gateway(d.log)
    return release_plan(d, manager, record)


def checkout_for_tests(d: Deployment, record: dict) -> Checkout:
    """Where production tests run: the delivered repository at its commit, with the compose
    file it was delivered with. A record keeps the repository without its credentials: the
    test environment's REPO, when it is that repository, gives them back."""
    repo = record.get("repo") or d.test.delivery.repo
    if repo == redact(d.test.delivery.repo):
        repo = d.test.delivery.repo
    compose_file = record.get("compose_file") or d.test.delivery.compose_file
    settings = replace(d.test, delivery=replace(d.test.delivery, compose_file=compose_file))
    return Checkout(
        settings, repo, record.get("commit") or "HEAD", d.version, log=d.log, on_line=d.on_line
    )


# -- steps ------------------------------------------------------------------------------------
def _rollout_to(
    d: Deployment, images: dict[str, str], lock: records.Lock, measured: bool = False
) -> str:
    """Every replica of each service to its image in `images`, together; `measured`: under
    the error budget (the rollout step, not the rollback that undoes it)."""
    assert d.cluster is not None  # prepare() found it
    if measured:

        def keep(b: Budget) -> None:
            d.budget = b

        results = rollout.measured_update(
            d.cluster, d.prod.services, images, d.log, keep, d.max_errors, lock=lock
        )
    else:
        results = rollout.update(d.cluster, d.prod.services, images, d.log, lock=lock)
    d.converged_at = rollout.monitor_start(results)
    seconds = max((r.seconds for r in results), default=0.0)
    if len(images) == 1:
        svc, image = next(iter(images.items()))
        detail = f"{svc} on {d.prod.env}: every replica runs {image} ({seconds:.1f}s)"
    else:
        detail = f"on {d.prod.env}, every replica: {release.summary(images)} ({seconds:.1f}s)"
    return f"{detail}; {d.budget.summary()}" if measured and d.budget else detail


def _prodtest(d: Deployment) -> str:
    assert d.checkout is not None and d.cluster is not None  # prepare() set them
    if d.checkout.workdir is None:
        d.checkout.clone()
    images = d.before if d.rolled_back else d.images
    return rollout.production_tests(d.checkout, d.cluster, images, d.converged_at)


def _canary(d: Deployment, lock: records.Lock) -> str:
    assert d.cluster is not None and d.canary is not None  # prepare() found it
    assert d.canaries is not None  # prepare() chose them
    return canary_rollout.run(
        d.cluster, d.canaries, d.images, d.canary, d.log, d.canary_steps, lock
    )


def _rollback(d: Deployment, lock: records.Lock) -> str:
    """Every service of the release back to what it ran before, also those whose own
    rollout succeeded (all or nothing); those that run it still are left alone and not named
    (a failed job stopped the rollout before the others changed)."""
    assert d.cluster is not None  # prepare() found it
    d.rolled_back = True
    back = rollout.to_undo(d.cluster, release.changed(d.images, d.before))
    return _rollout_to(d, back, lock) if back else rollout.NOTHING_BACK


def run(d: Deployment, progress) -> tuple[dict, list[StepResult]]:
    """The whole deployment: prepare (lock), a "started" history entry, the steps, and the
    final entry of the same run (also after a failure, a lost lock or a signal: then
    RunInterrupted goes on with the entry as its `record`). Returns the entry and the results."""
    lock = prepare(d)
    results: list[StepResult] = []
    stopped: BaseException | None = None
    try:
        begin(d, lock)
        results = steps(d, lock, progress)
    except RunInterrupted as exc:
        results, stopped = exc.results, exc
        raise
    except BaseException as exc:
        results, stopped = getattr(exc, "results", results), exc
        raise
    finally:
        entry = finish(d, results, lock, stopped)
        if isinstance(stopped, RunInterrupted):
            stopped.record = entry
    return entry, results


def steps(d: Deployment, lock: records.Lock, progress) -> list[StepResult]:
    """The canary when asked (a failed one ends the run: production is never touched), then
    rollout, production tests; on failure (and unless disabled) roll back to the previous
    image and test again. The caller holds `lock` (`prepare`); before each change it must
    still hold it (records.LockLost, with the steps so far as `results`, otherwise)."""
    results: list[StepResult] = []
    try:
        if d.canary:
            lock.check()
            results.append(run_step("canary", lambda: _canary(d, lock), progress, origin=d.started))
            if results[-1].failed:
                return results
        lock.check()
        results.append(
            run_step(
                "rollout", lambda: _rollout_to(d, d.images, lock, True), progress, origin=d.started
            )
        )
        if results[-1].ok:
            results.append(run_step("prodtest", lambda: _prodtest(d), progress, origin=d.started))
        if results[-1].failed and d.auto_rollback and release.changed(d.images, d.before):
            lock.check()
            results.append(
                run_step("rollback", lambda: _rollback(d, lock), progress, origin=d.started)
            )
            results.append(
                run_step(
                    "prodtest-after-rollback", lambda: _prodtest(d), progress, origin=d.started
                )
            )
    except RunInterrupted as exc:  # the steps that ran before the interrupted one, too
        exc.results = results + exc.results
        raise
    except records.LockLost as exc:
        exc.results = results
        raise
    return results


def outcome(d: Deployment, results: list[StepResult], stopped: BaseException | None = None) -> str:
    """The history's result, an Outcome's text: "deployed" (or "rolled back") only when the
    rollout completed and the production tests passed; "interrupted" by a signal; "lock lost"
    when another run took the lock (`stopped`: what ended the run early); "canary aborted: "
    and the figure that failed its gate."""
    if isinstance(stopped, KeyboardInterrupt) or any(r.interrupted for r in results):
        return Outcome.INTERRUPTED
    if isinstance(stopped, records.LockLost):
        return Outcome.LOCK_LOST
    aborted = next((r for r in results if r.name == "canary" and r.failed), None)
    if aborted:
        return f"{Outcome.CANARY_ABORTED}: {aborted.detail}"
    passed = {r.name for r in results if r.ok}
    if {"rollout", "prodtest"} <= passed and all(r.ok for r in results):
        return Outcome.DEPLOYED if d.kind == "deploy" else Outcome.ROLLED_BACK
    if d.rolled_back:
        return Outcome.FAILED_ROLLED_BACK if results[-1].ok else Outcome.FAILED_NOT_RECOVERED
    return Outcome.FAILED


def _entry(d: Deployment, result: str, results: list[StepResult]) -> dict:
    return {
        "time": records.now(),
        "user": getpass.getuser(),
        "env": d.prod.env,
        "service": d.service,
        "kind": d.kind,
        "version": d.version,
        "image": d.image,
        "digest": d.digest,
        "previous": d.previous,
        "services": release.parts(d.images, d.before),
        "result": result,
        "rolled_back": d.rolled_back,
        "seconds": round(time.monotonic() - d.started, 1),
        "steps": {r.name: r.status for r in results},
        "run": d.run_id,
        "budget": d.budget.record() if d.budget else None,
        **({"canary": d.canary_steps} if d.canary else {}),
    }


def _log_locally(d: Deployment, entry: dict) -> None:
    state.private_dir(local_log(d.prod).parent)
    with local_log(d.prod).open("a") as f:
        f.write(json.dumps(entry) + "\n")


def history_group(entry) -> bool | None:
    """Pruning keeps the last successful deployment, whatever failed since (`rollback_target`)."""
    return True if Outcome.of(str(entry.get("result", ""))).ok else None


def begin(d: Deployment, lock: records.Lock) -> None:
    """The "started" entry, written before anything changes: a run killed with SIGKILL never
    writes its final entry, and `history` then shows it as unfinished."""
    entry = {**_entry(d, Outcome.STARTED, []), "lock": lock.id}
    assert d.cluster is not None  # prepare() found it
    _log_locally(d, entry)
    records.put(d.cluster.gateway(), "history", d.service, entry, group=history_group)


def what_runs(manager: Gateway, names: Iterable[str]) -> list[str]:
    """`IMAGE on NODE` for each replica of each service: what the history of a release that did
    not end well records."""
    return [
        f"{image} on {node}"
        for svc in sorted(names)
        for node, image in services.replica_images(manager, svc)
    ]


def finish(
    d: Deployment,
    results: list[StepResult],
    lock: records.Lock,
    stopped: BaseException | None = None,
) -> dict:
    """Release the lock and write the history entry (cluster and local log); unless deployed,
    with the image each replica runs now. The local log and the clean-up happen even when the
    cluster no longer answers."""
    entry = _entry(d, outcome(d, results, stopped), results)
    cluster = d.cluster
    assert cluster is not None  # prepare() found it
    try:
        # Through a manager that answers, also during a leader election (the gateway's).
        manager = cluster.gateway(d.log)
        if not Outcome.of(entry["result"]).ok:
            entry["running"] = what_runs(manager, d.images)
        with deferred():  # a signal here would leave a finished run "unfinished" for good
            records.put(manager, "history", d.service, entry, group=history_group)
    finally:
        try:
            lock.release()  # by its ID, through a manager that answers
        finally:
            with deferred():
                _log_locally(d, entry)
            if d.checkout:
                d.checkout.close()
    return entry


def local_log(s: Settings):
    return s.cluster.state_dir / "history" / f"{s.cluster.lab_name}-{s.env}-{release.key(s)}.jsonl"


def history(s: Settings) -> tuple[list[dict], str]:
    """Deployments, oldest first, from the cluster; from the local log when it cannot answer.
    A run that started and never finished shows as "running" while its lock is held, else as
    "unfinished" (killed, or its machine died)."""
    try:
        manager = Cluster.of(s).discover().gateway()
        rows = records.load(manager, "history", release.key(s))
        return merge_runs(rows, live_lock(manager, release.key(s))), "cluster"
    except Exception as exc:  # the cluster is unreachable: the local log still tells
        f = local_log(s)
        rows = [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []
        age = (
            f"last written {_age(time.time() - f.stat().st_mtime)} ago"
            if f.exists()
            else "never written on this machine"
        )
        return (
            merge_runs(rows, None),
            f"local log {f}, {age}, this machine's runs only "
            f"(cluster unreachable: {str(exc).splitlines()[0][:120]})",
        )


def _age(seconds: float) -> str:
    """A duration as a person reads it: 45s, 12m, 3h 5m, 2d 4h."""
    s = max(int(seconds), 0)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            return f"{s // size}{unit} {s % size // sub_size}{sub}"
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def live_lock(manager, service: str) -> str | None:
    """The ID of the service's lock while its holder lives; None when free or expired."""
    state = records.lock_state(manager, service)
    return state.id if state and not records.expired(state) else None


def merge_runs(rows: list[dict], lock_token: str | None) -> list[dict]:
    """One row per run: its final entry; a run with only its "started" entry is "running" when
    `lock_token` (the live holder of the lock) is its lock, else "unfinished"."""
    finished = {r["run"] for r in rows if r.get("run") and r["result"] != Outcome.STARTED}
    out = []
    for r in rows:
        if r["result"] != Outcome.STARTED:
            out.append(r)
        elif r.get("run") not in finished:
            live = lock_token is not None and r.get("lock") == lock_token
            out.append({**r, "result": Outcome.RUNNING if live else Outcome.UNFINISHED})
    return out
