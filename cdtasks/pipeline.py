"""The book's release steps as plain functions: checkout, unit, build, staging, publish,
prod-like, production tests. Each returns a one-line detail or raises StepFailed; `run_steps`
runs them in order, stops at the first failure and returns one StepResult per step."""
from __future__ import annotations

import getpass
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import engine, records, services, stack, workspace
from .cluster import Cluster
from .compose import Compose, ComposeError, compose_command, unique_project
from .config import PROJECT_DIR, Settings
from .providers import for_settings
from .report import StepResult

STEPS = ("checkout", "unit", "build", "staging", "publish", "prodlike", "prodtest")
DELIVERED_LABEL = "io.cdtasks.delivered"  # Swarm configs recording versions that passed prod-like
LOCK_WAIT = 600  # seconds a delivery waits for another release of the same service
VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class StepFailed(RuntimeError):
    def __init__(self, detail: str, output_tail: str = ""):
        super().__init__(detail)
        self.output_tail = output_tail


def check_version(version: str) -> str:
    if not version or version == "latest" or not VERSION_RE.match(version):
        raise StepFailed(f"version {version!r} is refused: give a pinned version "
                         f"(not empty, not latest, letters, digits, . _ -)")
    return version


@dataclass
class Release:
    """One delivery run: what to deliver and what each step learned so far."""

    settings: Settings
    repo: str
    ref: str = "HEAD"
    version: str | None = None
    dry_run: bool = False
    log: Callable[[str], None] = print
    on_line: Callable[[str], None] | None = None
    workdir: Path | None = None
    digest: str | None = None
    commit: str = ""
    converged_at: float = 0.0  # monotonic time the last replica of the last rollout started running
    lock: str = ""  # token of the service's lock while prod-like is being changed and tested
    # A whole run takes the compose project down once, after staging (or in cleanup), instead
    # of after every compose step; steps run alone always take it down.
    defer_down: bool = False
    compose_left: bool = False  # the project may have containers or networks up
    teardown: Future | None = None  # that down, running beside the steps that don't need it
    previous_image: str | None = None
    commands: list[str] = field(default_factory=list)
    _cluster: Cluster | None = None
    project: str = ""

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster.of(self.settings).discover()
        return self._cluster

    @property
    def image(self) -> str:
        """The image name every node uses for the cluster's registry."""
        return f"localhost:{self.settings.registry_port}/{self.settings.app_image}"

    @property
    def ref_tag(self) -> str:
        return f"{self.image}:{self.version}"

    @property
    def pinned(self) -> str:
        """The exact image verified: repository@digest (tag kept for people reading it)."""
        return f"{self.ref_tag}@{self.digest}" if self.digest else self.ref_tag

    def record(self, argv: Sequence[str], runs_in_dry_run: bool = False) -> None:
        self.commands.append(shlex.join(argv))
        if self.dry_run:
            self.log(("running: " if runs_in_dry_run else "would run: ") + shlex.join(argv))

    def compose(self, host_ip: str = "") -> Compose:
        if self.workdir is None:
            raise StepFailed("no checkout: run the checkout step first")
        ep = self.cluster.endpoints.get(self.settings.cd_node)
        if ep is None:
            raise StepFailed(f"CD node {self.settings.cd_node} is not running: run `inv provision`")
        s = self.settings
        env = {"IMAGE": self.image, "VERSION": self.version or "", "BASE_IMAGE": s.base_image,
               "DB_IMAGE": s.db_image, "HOST_IP": host_ip}
        return Compose(self.workdir / s.compose_file, self.project_name(), engine.docker_env(ep),
                       env, dry_run=self.dry_run, on_line=self.on_line)

    def project_name(self) -> str:
        """One compose project per run, unique so that concurrent runs do not collide."""
        self.project = self.project or unique_project(f"{self.settings.app_service}-{self.version}")
        return self.project

    def tear_down_beside(self) -> None:
        """Start the project's down on a thread; `torn_down()` waits for it. A dry run lists
        it in order instead."""
        if self.dry_run:
            take_down(self)
            return
        pool = ThreadPoolExecutor(max_workers=1)
        self.teardown = pool.submit(take_down, self, quiet=True)
        pool.shutdown(wait=False)

    def torn_down(self) -> None:
        """Wait for a down started by `tear_down_beside`; if it failed, the project stays
        marked as left up (the run's clean-up tries again) and the run goes on."""
        future, self.teardown = self.teardown, None
        if future is None:
            return
        try:
            future.result()
        except Exception as exc:
            self.log(f"could not take the compose project {self.project} down: {exc}")

    def docker_argv(self, *args: str) -> list[str]:
        """The docker CLI command equivalent to an SDK call on the CD node (for --dry-run)."""
        return ["docker", "-H", self.cluster.endpoints[self.settings.cd_node].docker_host, *args]


# -- steps --------------------------------------------------------------------------------------
def _git(args: Sequence[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["?"]
        raise StepFailed(f"`{shlex.join(['git', *args])}` failed: {lines[-1]}",
                         "\n".join(lines[-20:]) if len(lines) > 1 else "")
    return proc.stdout.strip()


def checkout(r: Release) -> str:
    """Clone the repository at the ref into the workspace (seen by the nodes at the same path)."""
    repo = r.repo or str(PROJECT_DIR)
    r.settings.workspace_dir.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix=f"{r.settings.app_service}-", dir=r.settings.workspace_dir))
    r.workdir = dest
    if Path(repo).is_dir() and not (Path(repo) / ".git").exists():
        if r.ref != "HEAD":
            raise StepFailed(f"{repo} is not a git repository: --ref {r.ref} cannot be checked out")
        shutil.copytree(repo, dest, dirs_exist_ok=True)
        if not r.version:
            raise StepFailed(f"{repo} is not a git repository: give --version")
    else:
        # A dry run checks out too: it changes nothing outside the workspace, and gives the
        # version and the compose file the other steps print commands for.
        r.record(["git", "clone", "--quiet", repo, str(dest)], runs_in_dry_run=True)
        _git(["clone", "--quiet", repo, str(dest)])
        r.record(["git", "-C", str(dest), "checkout", "--quiet", r.ref], runs_in_dry_run=True)
        _git(["checkout", "--quiet", r.ref], dest)
        if not r.version:
            try:
                r.version = _git(["describe", "--tags", "--exact-match"], dest)
            except StepFailed:
                r.version = _git(["rev-parse", "--short", "HEAD"], dest)
    check_version(r.version)
    if not (dest / r.settings.compose_file).is_file():
        raise StepFailed(f"{r.settings.compose_file} not found in {repo} at {r.ref}")
    r.commit = _git(["rev-parse", "HEAD"], dest) if (dest / ".git").exists() else ""
    # Containers on the CD node run as root: let them read the checkout whatever the umask.
    dest.chmod(0o755)
    if not for_settings(r.settings).shares_workspace:
        r.record(["docker", "cp", str(dest), f"{r.settings.cd_node}:{dest}"])
        if not r.dry_run:
            size = workspace.upload(r.cluster.client(r.settings.cd_node), dest,
                                    r.settings.registry_image)
            r.log(f"copied the checkout to {r.settings.cd_node} ({size // 1024} KiB)")
    return f"{repo} at {r.ref} ({r.commit[:7] or 'no git'}) as version {r.version}"


def _compose_step(r: Release, action: Callable[[Compose], object], host_ip: str = "",
                  defer: bool = False) -> None:
    r.torn_down()  # a down still running on this project ends before the project is used again
    c = r.compose(host_ip)
    down = not (defer and r.defer_down)
    r.compose_left = True
    try:
        with c.session(down=down):
            action(c)
        r.compose_left = not down
    except ComposeError as exc:
        raise StepFailed(str(exc), exc.result.tail() if exc.result else "") from None
    finally:
        _noted(r, c)


def _noted(r: Release, c: Compose) -> None:
    r.commands += c.commands()
    if r.dry_run:
        for cmd in c.commands():
            r.log("would run: " + cmd)


def take_down(r: Release, quiet: bool = False) -> None:
    """The run's compose project down, after steps that left it up (no signal handling here:
    it also runs off the main thread). A down that fails leaves the project marked as up.
    quiet: its output is not shown live (it would read as the output of the step it runs beside)."""
    c = r.compose()
    if quiet:
        c.on_line = None
    try:
        r.compose_left = not c.down(check=False).ok
    finally:
        _noted(r, c)


def unit(r: Release) -> str:
    _compose_step(r, lambda c: c.run("unit"), defer=True)
    return "unit tests passed"


def build(r: Release) -> str:
    _compose_step(r, lambda c: c.build("app"), defer=True)
    return f"built {r.ref_tag} on {r.settings.cd_node}"


def staging(r: Release) -> str:
    """staging-dep up, staging tests against it; `down` always: at once when the step runs
    alone (the session guarantees it); in a whole run beside publish and prod-like, which do
    not use the project (and in the clean-up if the tests fail)."""
    def act(c: Compose) -> None:
        c.up("staging-dep")
        c.run("staging")
    _compose_step(r, act, defer=True)
    if r.compose_left:
        r.tear_down_beside()
    if r.teardown:
        return "staging tests passed; staging goes down beside the next steps"
    return "staging tests passed; staging removed"


def publish(r: Release) -> str:
    r.record(r.docker_argv("push", r.ref_tag))
    if r.dry_run:
        return f"would push {r.ref_tag}"
    cd = r.cluster.client(r.settings.cd_node)
    for line in cd.images.push(r.image, tag=r.version, stream=True, decode=True):
        if "error" in line:
            raise StepFailed(f"pushing {r.ref_tag} failed: {line['error']}")
        aux = line.get("aux") or {}
        if aux.get("Digest"):
            r.digest = aux["Digest"]
    if not r.digest:
        raise StepFailed(f"the registry reported no digest for {r.ref_tag}")
    return f"pushed {r.ref_tag} ({r.digest[:19]})"


def prepull(cluster: Cluster, service: str, image: str, log: Callable[[str], None]) -> list[str]:
    """Pull the new image, in parallel, before the update on every node the service's tasks
    may be placed on (a rolling update may start a task on a node that runs none now): the
    update then only starts containers."""
    manager = cluster.manager()
    spec = services.existing(manager, service)["Spec"]
    nodes = [n for n in services.eligible_nodes(manager, spec) if n in cluster.endpoints]
    repo, _, digest = image.partition("@")

    def pull(node: str) -> str:
        cluster.client(node).api.pull(repo.rsplit(":", 1)[0],
                                      tag=digest or repo.rsplit(":", 1)[1])
        return node

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(nodes) or 1) as pool:
        done = list(pool.map(pull, nodes))
    log(f"pre-pulled {image} on {', '.join(done)} ({time.monotonic() - start:.1f}s)")
    return done


def rollout(cluster: Cluster, settings: Settings, image: str, log: Callable[[str], None],
            dry_run: bool = False, record: Callable[[Sequence[str]], None] | None = None) -> services.Rollout:
    """Pre-pull, `docker service update --image`, then wait for Swarm to report completion."""
    svc = settings.app_service
    if record:
        record(["docker", "service", "update", "--image", image, svc])
    if dry_run:
        return services.Rollout(svc, image, "dry-run", 0.0)
    manager = cluster.manager()
    prepull(cluster, svc, image, log)
    services.update_image(manager, svc, image)
    return services.wait_rollout(manager, svc, image, settings.services_timeout, log)


def prodlike(r: Release) -> str:
    if not r.dry_run:
        # One release at a time changes (and then tests) the service: the same lock as deploy.
        manager = r.cluster.manager()
        r.lock = records.acquire(manager, r.settings.app_service, r.version, LOCK_WAIT, r.log,
                                 action="delivering")
        r.previous_image = services.current_image(manager, r.settings.app_service)
    result = rollout(r.cluster, r.settings, r.pinned, r.log, r.dry_run, r.record)
    converged(r, result)
    return f"{r.settings.app_service} runs {r.ref_tag} on every replica ({result.seconds:.1f}s)"


OK_ROLLOUT = ("completed", "unchanged", "converged", "dry-run")  # Rollout states that are fine


def check_rollout(result: services.Rollout) -> None:
    if result.state not in OK_ROLLOUT:
        raise StepFailed(f"rolling update of {result.service} ended {result.state}: {result.message}")


def converged(r: Release, result: services.Rollout) -> None:
    """A rollout that ended well starts the monitor period `settle` watches."""
    check_rollout(result)
    r.converged_at = time.monotonic() - result.running_for


def settle(r: Release, cluster: Cluster, settings: Settings) -> None:
    """After the tests that overlapped Swarm's monitor period: every replica must still run the
    image, for the whole period, with no failure or rollback reported by Swarm."""
    manager = cluster.manager()
    image = services.current_image(manager, settings.app_service)
    until = (r.converged_at or time.monotonic()) + services.MONITOR
    check_rollout(services.wait_rollout(manager, settings.app_service, image,
                                        settings.services_timeout, r.log, stable_until=until))


def host_ip(cluster: Cluster, settings: Settings, routing: str) -> str:
    """Where production tests reach the proxy: any node with the routing mesh; without it, a
    node that runs a proxy task."""
    nodes = list(cluster.endpoints) if routing == "mesh" else stack.proxy_nodes(cluster, settings)
    if not nodes:
        raise StepFailed(f"no node of {settings.env} runs a {settings.proxy_service} task")
    address = cluster.endpoints[nodes[0]].address
    return address if settings.proxy_port == 80 else f"{address}:{settings.proxy_port}"


def production_tests(r: Release, target: Cluster, target_settings: Settings) -> str:
    """`run --rm production` on the CD node against a cluster's proxy, then the rolling update
    that preceded them must have settled."""
    ip = "HOST_IP" if r.dry_run else host_ip(target, target_settings, target.routing_in_use())
    _compose_step(r, lambda c: c.run("production"), host_ip=ip, defer=True)
    if r.compose_left:  # a whole run: the project goes down while the monitor period is watched
        r.tear_down_beside()
    if not r.dry_run:
        settle(r, target, target_settings)
    r.torn_down()
    return f"production tests passed against {target_settings.env} ({ip})"


def prodtest(r: Release) -> str:
    try:
        detail = production_tests(r, r.cluster, r.settings)
        if not r.dry_run:
            mark_delivered(r)
        return detail
    finally:
        release_lock(r)


def release_lock(r: Release) -> None:
    if r.lock:
        records.unlock(r.cluster.manager(), r.settings.app_service, r.lock)
        r.lock = ""


STEP_FUNCS: dict[str, Callable[[Release], str]] = {
    "checkout": checkout, "unit": unit, "build": build, "staging": staging,
    "publish": publish, "prodlike": prodlike, "prodtest": prodtest}


# -- what passed prod-like, recorded on the cluster -------------------------------------------
def mark_delivered(r: Release) -> None:
    """One record per version that passed prod-like: `inv deploy` promotes exactly its digest."""
    records.put(r.cluster.manager(), "delivered", r.settings.app_service, {
        "service": r.settings.app_service, "version": r.version, "image": r.ref_tag,
        "digest": r.digest, "repo": r.repo, "commit": r.commit, "time": records.now(),
        "user": getpass.getuser()})


def delivered(manager, service: str) -> list[dict]:
    """Versions that passed prod-like for a service, oldest first."""
    return records.load(manager, "delivered", service)


# -- running steps ------------------------------------------------------------------------------
def _attempt(name: str, fn: Callable, arg) -> StepResult:
    """One step with its timing; a failure becomes a failed StepResult, Ctrl-C propagates."""
    start = time.monotonic()
    try:
        detail = fn(arg)
        if getattr(arg, "dry_run", False):
            detail = f"dry run, not done: {detail}"
        return StepResult(name, True, time.monotonic() - start, detail)
    except StepFailed as exc:
        return StepResult(name, False, time.monotonic() - start, str(exc), exc.output_tail)
    except Exception as exc:  # an engine or API error: still a failed step, with its reason
        return StepResult(name, False, time.monotonic() - start,
                          f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


def run_step(name: str, fn: Callable, arg, progress) -> StepResult:
    progress.step(name)
    start = time.monotonic()
    try:
        result = _attempt(name, fn, arg)
    except KeyboardInterrupt:
        progress.done(StepResult(name, False, time.monotonic() - start, "interrupted"))
        raise
    progress.done(result)
    return result


def _unbuild(r: Release, result: StepResult) -> None:
    """A build that ran beside unit tests that failed leaves nothing behind."""
    if result.ok:
        r.cluster.client(r.settings.cd_node).images.remove(r.ref_tag, noprune=False)


# A step, the one after it that does not need its result, and how to undo that one when the
# first fails: in a whole run the second runs beside the first (the build beside unit tests).
OVERLAP: dict[str, tuple[str, Callable[[Release, StepResult], None]]] = {"unit": ("build", _unbuild)}


def run_steps(r: Release, names: Sequence[str], progress) -> list[StepResult]:
    """Run the named steps in order; the first failure stops the run, the rest are skipped."""
    results: list[StepResult] = []
    ahead: dict[str, tuple] = {}  # step started beside the previous one -> (future, its undo)
    with ThreadPoolExecutor(max_workers=2) as pool:  # a step ahead may start before the probe ends
        if r.defer_down:  # a whole run: the compose CLI is found beside the checkout
            pool.submit(compose_command)
        for i, name in enumerate(names):
            if results and (results[-1].failed or results[-1].skipped):
                if name in ahead:  # it ran beside the step that failed: undo it
                    _undo(r, name, *ahead.pop(name))
                results.append(StepResult(name, False, 0.0, "not run", skipped=True))
                continue
            if name in ahead:
                result = ahead.pop(name)[0].result()
                progress.done(result)
                results.append(result)
                continue
            partner, undo = OVERLAP.get(name, (None, None))
            if partner and r.defer_down and not r.dry_run and names[i + 1:i + 2] == [partner]:
                r.project_name()  # fixed before two threads use it
                ahead[partner] = (pool.submit(_attempt, partner, STEP_FUNCS[partner], r), undo)
            results.append(run_step(name, STEP_FUNCS[name], r, progress))
    return results


def _undo(r: Release, name: str, future, undo: Callable[[Release, StepResult], None]) -> None:
    try:
        undo(r, future.result())
    except Exception as exc:  # the run already failed; say what is left, do not hide why
        r.log(f"could not undo {name}: {exc}")


def state_after(r: Release, results: list[StepResult]) -> str:
    """What the failure left behind, in one line, for the user and the report."""
    failed = next((x.name for x in results if x.failed), None)
    if r.dry_run:
        return "dry run: nothing was built, pushed or updated"
    if failed is None:
        if any(x.name == "prodlike" for x in results):
            return f"{r.settings.app_service} runs {r.ref_tag} on prod-like"
        return f"{', '.join(x.name for x in results)} passed; prod-like not changed"
    if failed in ("checkout", "unit", "build", "staging"):
        return f"nothing left behind (staging removed); {r.settings.app_service} untouched"
    if failed == "publish":
        return f"{r.ref_tag} not in the registry; {r.settings.app_service} untouched"
    try:
        running = services.current_image(r.cluster.manager(), r.settings.app_service)
    except Exception:  # the state line must not hide the failure itself
        running = "unknown"
    return f"prod-like runs {running}"


def cleanup(r: Release) -> None:
    """After a run, also a failed or interrupted one: the compose project, the lock and the
    checkout go."""
    r.torn_down()
    if r.compose_left:
        try:
            take_down(r)
        except Exception as exc:  # clean-up must not hide the run's own result
            r.log(f"could not take the compose project {r.project} down: {exc}")
    release_lock(r)
    if r.workdir and r.workdir.exists():
        if not r.dry_run and not for_settings(r.settings).shares_workspace:
            try:
                workspace.remove(r.cluster.client(r.settings.cd_node), r.workdir,
                                 r.settings.registry_image)
            except Exception as exc:  # clean-up must not hide the run's own result
                r.log(f"could not remove the checkout from {r.settings.cd_node}: {exc}")
        shutil.rmtree(r.workdir, ignore_errors=True)
