"""A checkout of the repository in the workspace and the compose project run in it on the CD
node: what delivery's compose steps and the production tests (of delivery and deployment
alike) work in. `clone` makes it; `compose_step` runs one compose action; `close` cleans up."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from . import (
    checks,
    compose_policy,
    config,
    engine,
    git,
    git_credentials,
    interrupt,
    registry,
    state,
    workspace,
)
from .cluster import Cluster
from .compose import Compose, ComposeError, ComposeModel, check_contract, unique_project

# Settings whole: a checkout builds its Cluster (Cluster.of) and reads
# the delivery, services (images, service name) and registry sections
from .config import Settings
from .log import Log
from .providers import for_settings
from .redaction import redact
from .runner import StepFailed, beside

GIT_TIMEOUT = 600  # seconds a git command of a checkout may take (a clone of a big repository)
DOWN_RETRY = 120  # seconds the clean-up tries to take a compose project down


@dataclass
class Checkout:
    """One run's checkout and compose project; the version names the image it builds."""

    settings: Settings
    repo: str
    ref: str = "HEAD"
    version: str | None = None
    dry_run: bool = False
    log: Log = print
    on_line: Callable[[str], None] | None = None
    workdir: Path | None = None
    commit: str = ""
    # A whole run takes the compose project down once, after staging (or in cleanup), instead
    # of after every compose step; steps run alone always take it down.
    defer_down: bool = False
    compose_left: bool = False  # the project may have containers or networks up
    teardown: Future | None = None  # that down, running beside the steps that don't need it
    commands: list[str] = field(default_factory=list)
    project: str = ""
    model: ComposeModel | None = None  # the compose file as compose reads it (`contract()`)
    _cluster: Cluster | None = None
    _naming: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _untrack: Callable[[], object] | None = field(default=None, repr=False)

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster.of(self.settings).discover()
        return self._cluster

    @property
    def image(self) -> str:
        """The image name every node uses for the cluster's registry."""
        return registry.local_ref(self.settings, self.settings.services.app_image)

    @property
    def ref_tag(self) -> str:
        return registry.local_ref(
            self.settings, self.settings.services.app_image, self.version or ""
        )

    def starting(self, what: str) -> None:
        """Say that a piece of a step's work begins now (`unit tests running`): on a long step
        the user sees which part runs, and a caller (the fault tests) knows the step is inside
        its work. Silent in a dry run, which lists the commands instead."""
        if not self.dry_run:
            self.log(what)

    def record(self, argv: Sequence[str], runs_in_dry_run: bool = False) -> None:
        self.commands.append(shlex.join(argv))
        if self.dry_run:
            self.log(("running: " if runs_in_dry_run else "would run: ") + shlex.join(argv))

    def compose(self, host_ip: str = "") -> Compose:
        if self.workdir is None:
            raise StepFailed("no checkout: run the checkout step first")
        ep = self.cluster.endpoints.get(self.settings.cluster.cd_node)
        if ep is None:
            raise StepFailed(
                f"CD node {self.settings.cluster.cd_node} is not running: run `inv provision`"
            )
        return self._compose(self.workdir, engine.docker_env(ep), host_ip)

    def _compose(self, workdir: Path, docker_env: dict[str, str], host_ip: str = "") -> Compose:
        s = self.settings
        env = {
            "IMAGE": self.image,
            "VERSION": self.version or "",
            "BASE_IMAGE": s.services.base_image,
            "HOST_IP": host_ip,
        }
        return Compose(
            workdir / s.delivery.compose_file,
            self.project_name(),
            docker_env,
            env,
            dry_run=self.dry_run,
            on_line=self.on_line,
            pass_env=s.delivery.pass_env,
            timeout=s.delivery.test_timeout,
        )

    def contract(self) -> ComposeModel:
        """The compose file's model, read once (compose reads files only: no engine needed),
        with the environment the steps give compose; ContractError when it lacks the book's
        contract services or reaches outside the checkout (`compose_policy`: the files it
        names are checked before compose reads them), naming the file as the user gave it."""
        if self.model is None:
            if self.workdir is None:
                raise StepFailed("no checkout: run the checkout step first")
            name = self.settings.delivery.compose_file
            policy = compose_policy.Policy.of(self.settings, self.workdir)
            compose_policy.check_files(policy, name)
            model = check_contract(self._compose(self.workdir, {}).model(), name)
            compose_policy.check_model(policy, name, model.config)
            self.model = model
        return self.model

    def project_name(self) -> str:
        """One compose project per run, unique so that concurrent runs do not collide; fixed
        once even when two steps ask at the same time (the build beside the unit tests)."""
        with self._naming:
            self.project = self.project or unique_project(
                f"{self.settings.stack.stack_name}-{self.version}"
            )
        return self.project

    def docker_argv(self, *args: str) -> list[str]:
        """The docker CLI command equivalent to an SDK call on the CD node (for --dry-run)."""
        return [
            "docker",
            "-H",
            self.cluster.endpoints[self.settings.cluster.cd_node].docker_host,
            *args,
        ]

    # -- making it --------------------------------------------------------------------------
    def clone(self) -> str:
        """Clone the repository at the ref into the workspace (seen by the nodes at the same
        path); the version: given, else the git tag, else the short commit id."""
        s = self.settings
        repo = self.repo  # DeliverySettings.repo: the project directory when REPO is empty
        state.private_dir(s.delivery.workspace_dir)
        # A signal between mkdtemp's mkdir and the assignment would leave a checkout that no
        # clean-up knows of: it waits until the directory is ours to remove.
        with interrupt.deferred():
            dest = Path(
                tempfile.mkdtemp(prefix=f"{s.stack.stack_name}-", dir=s.delivery.workspace_dir)
            )
            self.workdir = dest
        if Path(repo).is_dir() and not (Path(repo) / ".git").exists():
            if self.ref != "HEAD":
                raise StepFailed(
                    f"{repo} is not a git repository: --ref {self.ref} cannot be checked out"
                )
            shutil.copytree(repo, dest, dirs_exist_ok=True)
            if not self.version:
                raise StepFailed(f"{repo} is not a git repository: give --version")
        else:
            # A dry run checks out too: it changes nothing outside the workspace, and gives the
            # version and the compose file the other steps print commands for.
            # Shown and recorded without the credentials a URL may hold; git gets `--` and
            # `--end-of-options` so that no repository or ref is read as an option.
            self.record(
                ["git", "clone", "--quiet", "--", redact(repo), str(dest)], runs_in_dry_run=True
            )
            # The URL's credentials go through git's environment: none in argv or .git/config.
            _git(["clone", "--quiet", "--", git_credentials.url(repo), str(dest)], repo=repo)
            commit = _commit_of(dest, self.ref, redact(repo))
            self.record(
                ["git", "-C", str(dest), "checkout", "--quiet", "--detach", commit],
                runs_in_dry_run=True,
            )
            _git(["checkout", "--quiet", "--detach", commit], dest)
            if not self.version:
                try:
                    self.version = _git(["describe", "--tags", "--exact-match"], dest)
                except StepFailed:
                    self.version = _git(["rev-parse", "--short", "HEAD"], dest)
        check_version(self.version)
        if not checks.inside(dest, s.delivery.compose_file).is_file():
            raise StepFailed(f"{s.delivery.compose_file} not found in {redact(repo)} at {self.ref}")
        self.commit = _git(["rev-parse", "HEAD"], dest) if (dest / ".git").exists() else ""
        # Containers on the CD node run as root: let them read the checkout whatever the umask.
        dest.chmod(0o755)
        if not for_settings(s).shares_workspace:
            self.record(["docker", "cp", str(dest), f"{s.cluster.cd_node}:{dest}"])
            if not self.dry_run:
                size = workspace.upload(
                    self.cluster.client(s.cluster.cd_node), dest, s.registry.registry_image
                )
                self.log(f"copied the checkout to {s.cluster.cd_node} ({size // 1024} KiB)")
        return (
            f"{redact(repo)} at {self.ref} ({self.commit[:7] or 'no git'}) as version "
            f"{self.version}"
        )

    # -- the compose project -----------------------------------------------------------------
    def compose_step(
        self, action: Callable[[Compose], object], host_ip: str = "", defer: bool = False
    ) -> None:
        """One compose action in the project; down at once unless `defer` in a whole run."""
        self.torn_down()  # a down still running on this project ends before it is used again
        try:
            self.contract()  # also a checkout no delivery checked (deploy's production tests)
        except ComposeError as exc:
            raise StepFailed(str(exc)) from None
        c = self.compose(host_ip)
        down = not (defer and self.defer_down)
        self.compose_left = True
        if self._untrack is None:  # named if a signal's clean-up is cut short
            self._untrack = interrupt.track(
                lambda: (
                    f"compose project {self.project} on {self.settings.cluster.cd_node}"
                    if self.compose_left
                    else ""
                )
            )
        try:
            with c.session(down=down):
                action(c)
            self.compose_left = not down
        except ComposeError as exc:
            raise StepFailed(str(exc), exc.result.tail() if exc.result else "") from None
        finally:
            self._noted(c)

    def _noted(self, c: Compose) -> None:
        self.commands += c.commands()
        if self.dry_run:
            for cmd in c.commands():
                self.log("would run: " + cmd)

    def take_down(self, quiet: bool = False) -> None:
        """The project down, after steps that left it up (no signal handling here: it also
        runs off the main thread). A down that fails leaves the project marked as up.
        quiet: its output is not shown live (it would read as the output of the step it runs
        beside)."""
        c = self.compose()
        if quiet:
            c.on_line = None
        try:
            self.compose_left = not c.down(check=False).ok
        finally:
            self._noted(c)

    def tear_down_beside(self) -> None:
        """Start the project's down on a thread; `torn_down()` waits for it. A dry run lists
        it in order instead."""
        if self.dry_run:
            self.take_down()
            return
        self.teardown = beside(self.take_down, quiet=True)

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

    def close(self) -> None:
        """After a run, also a failed or interrupted one: the compose project and the checkout
        go; failures are logged, never raised (they must not hide the run's own result). A
        CD node's engine that went away (restarted) gets DOWN_RETRY seconds to come back (after
        a signal: what is left of the clean-up's time)."""
        self.torn_down()
        deadline = time.monotonic() + interrupt.remaining(DOWN_RETRY)
        while self.compose_left and not self.dry_run:
            try:
                self.take_down()
            except Exception as exc:
                self.log(f"could not take the compose project {self.project} down: {exc}")
            if not self.compose_left or time.monotonic() > deadline:
                break
            self.log(
                f"the compose project {self.project} is not down yet: trying again "
                f"(the CD node's engine may be restarting)"
            )
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            self._cluster = None  # its engine may answer on another address when back
        if self.compose_left and not self.dry_run:
            self.log(
                f"left behind: compose project {self.project} on {self.settings.cluster.cd_node} "
                f"(remove it with `docker compose -p {self.project} down`)"
            )
        if self._untrack:
            self._untrack()
            self._untrack = None
        if self.workdir and self.workdir.exists():
            s = self.settings
            if not self.dry_run and not for_settings(s).shares_workspace:
                try:
                    workspace.remove(
                        self.cluster.client(s.cluster.cd_node),
                        self.workdir,
                        s.registry.registry_image,
                    )
                except Exception as exc:
                    self.log(f"could not remove the checkout from {s.cluster.cd_node}: {exc}")
            shutil.rmtree(self.workdir, ignore_errors=True)


def check_version(version: str | None) -> str:
    """The version rule of the env files (`config.pinned_version`), as a failed step."""
    try:
        return config.pinned_version(version or "")
    except ValueError as exc:
        raise StepFailed(f"version {version!r} is refused: {exc}") from None


def _commit_of(checkout: Path, ref: str, shown_repo: str) -> str:
    """The commit a ref names in a fresh clone: a tag, a commit, or a branch (the clone has
    the remote's other branches as origin/NAME). `git checkout` of git 2.39 knows no
    `--end-of-options`, `rev-parse` does: the checkout then gets a commit id."""
    for name in (ref, f"origin/{ref}"):
        found = _git(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"],
            checkout,
            check=False,
        )
        if found:
            return found
    raise StepFailed(f"--ref {ref}: no such branch, tag or commit in {shown_repo}")


def _git(args: Sequence[str], cwd: Path | None = None, check: bool = True, repo: str = "") -> str:
    """git that never waits for an answer (`git.run`) nor longer than GIT_TIMEOUT, with `repo`'s
    credentials when it fetches from it; its output, "" when it fails and not `check`."""
    try:
        proc = git.run(args, GIT_TIMEOUT, cwd, repo)
    except subprocess.TimeoutExpired:
        raise StepFailed(
            f"`{shlex.join(['git', *args])}` did not finish within {GIT_TIMEOUT}s"
        ) from None
    if proc.returncode != 0 and check:
        lines = proc.stderr.strip().splitlines() or ["?"]
        raise StepFailed(
            redact(f"`{shlex.join(['git', *args])}` failed: {lines[-1]}"),
            redact("\n".join(lines[-20:])) if len(lines) > 1 else "",
        )
    return proc.stdout.strip() if proc.returncode == 0 else ""
