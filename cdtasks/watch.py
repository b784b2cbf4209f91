"""Following a branch: each new commit is delivered once (and deployed, if asked), by a `run`
callable the caller gives. What was taken and how it ended is kept as records on the cluster
(kind `watch`), so a restarted watcher, or one on another machine, never runs a commit twice.

A commit is recorded as `taken` before its run starts and `finished` after: a `taken` without
`finished` is a run in progress elsewhere, or one its watcher did not see to its end (a crash, a
killed process); it is reported, not run again. Taking is a claim (`records.claim`): of two
watchers, on one machine or two, only one takes a commit, and each looks at fresh records
before it tries. Only the newest commit of a branch is taken: commits pushed while a run is in
progress are skipped for the last of them.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import git, git_credentials, records
from .interrupt import deferred, exit_code
from .redaction import redact

KIND = "watch"
GIT_TIMEOUT = 60  # seconds for one `git ls-remote` (a URL that hangs must not stop the watcher)
BACKOFF_MAX = 300.0  # seconds between two tries while the cluster or the repository does not answer
RUNS_DIR = "runs"  # under REPORTS_DIR: one JSON file per finished run, for the release page
RESULT_CHARS = 300  # a record is a Swarm config (500 KB at most): the result text is cut to this


class WatchError(RuntimeError):
    """Something the watcher waits out: the cluster or the repository does not answer."""


class SourceError(WatchError):
    """The repository or the branch cannot be read (unreachable, no such branch)."""


class StoreError(WatchError):
    """The cluster that keeps the records does not answer."""


@dataclass(frozen=True)
class RunResult:
    """What a run of one commit gave: its exit code, one line saying how it ended, and the JSON
    reports it wrote (`deliver`, `deploy`: the documents of `report.write_reports`)."""

    code: int
    text: str
    reports: tuple[dict, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 0


# -- git ------------------------------------------------------------------------------------------
def _git(args: Sequence[str], timeout: float | None = None, repo: str = "") -> str:
    """A git command that never asks for anything (`git.run`), within `timeout` seconds
    (GIT_TIMEOUT unless given); `repo`'s credentials through its environment."""
    timeout = timeout or GIT_TIMEOUT
    try:
        proc = git.run(args, timeout, repo=repo)
    except subprocess.TimeoutExpired:
        raise SourceError(f"`git {args[0]}` got no answer in {timeout:g}s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SourceError(f"`git {args[0]}` failed: {redact(last)}")
    return proc.stdout


def check_branch(branch: str) -> str:
    """A branch name git accepts (`git check-ref-format --branch`), else ValueError."""
    try:
        _git(["check-ref-format", "--branch", branch], timeout=10)
    except SourceError:
        raise ValueError(f"{branch!r} is not a valid branch name") from None
    return branch


def default_branch(repo: str) -> str:
    """The branch the repository's HEAD points at (what a clone checks out)."""
    for line in _git(
        ["ls-remote", "--symref", "--end-of-options", git_credentials.url(repo), "HEAD"], repo=repo
    ).splitlines():
        if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
            return line[len("ref: refs/heads/") : -len("\tHEAD")]
    raise SourceError(
        f"{redact(repo)} has no default branch (its HEAD is detached): give the branch"
    )


def head(repo: str, branch: str) -> str:
    """The newest commit of a branch, for a local path or a URL alike."""
    ref = f"refs/heads/{branch}"
    for line in _git(
        ["ls-remote", "--end-of-options", git_credentials.url(repo), ref], repo=repo
    ).splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    raise SourceError(f"no branch {branch} in {redact(repo)}")


def subject(repo: str, commit: str) -> str:
    """The commit's first line, when the repository is a local path (a URL would need a fetch)."""
    if not Path(repo).is_dir():
        return ""
    try:
        line = _git(
            ["-C", repo, "log", "-1", "--format=%s", "--end-of-options", commit], timeout=10
        ).strip()
    except SourceError:
        return ""
    return "".join(c for c in line if c.isprintable())  # no terminal escapes reach the log


# -- the records ----------------------------------------------------------------------------------
class RecordStore:
    """The watch records of a service on a cluster; `connect` gives its gateway and is
    asked again after a failure (the cluster may have come back through another manager)."""

    def __init__(self, connect: Callable[[], Any], service: str):
        self._connect = connect
        self._manager: Any = None
        self.service = service

    def _call(self, fn: Callable):
        try:
            if self._manager is None:
                self._manager = self._connect()
            return fn(self._manager)
        except Exception as exc:  # any engine, API or transport error: the cluster does not answer
            self._manager = None
            raise StoreError(
                f"the cluster does not answer ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else '-'})"
            ) from None

    def load(self) -> list[dict]:
        return self._call(lambda m: records.load(m, KIND, self.service))

    def put(self, data: Mapping) -> None:
        self._call(lambda m: records.put(m, KIND, self.service, data, group=_newest_kept))

    def take(self, data: Mapping) -> bool:
        """Record `taken` for a commit unless a watcher did already (False then): atomic."""
        key = "\0".join(str(data[k]) for k in ("repo", "branch", "commit"))
        return self._call(lambda m: records.claim(m, KIND, self.service, key, data))


def _newest_kept(row: Mapping) -> tuple:
    """Pruning keeps each branch's newest `taken` (a quiet branch's head stays taken) and
    `finished`."""
    return (row.get("repo"), row.get("branch"), row.get("event"))


@dataclass
class Runs:
    """The commits of one repository and branch the watchers took, from the records."""

    taken: dict[str, dict] = field(default_factory=dict)  # commit -> its `taken` record
    finished: dict[str, dict] = field(default_factory=dict)  # commit -> its `finished` record

    @classmethod
    def of(cls, rows: Sequence[Mapping], repo: str, branch: str) -> Runs:
        runs = cls()
        for row in rows:
            kept = {"taken": runs.taken, "finished": runs.finished}.get(row.get("event", ""))
            if kept is not None and row.get("repo") == repo and row.get("branch") == branch:
                kept[row.get("commit", "")] = dict(row)
        return runs

    def unfinished(self) -> list[dict]:
        return [r for c, r in self.taken.items() if c not in self.finished]


def pairs(rows: Sequence[Mapping]) -> list[dict]:
    """Every watched commit, oldest first: its `taken` record with the `finished` fields (`code`,
    `result`, `seconds`...) added, or `result: unfinished`."""
    ended = {
        (r.get("repo"), r.get("branch"), r.get("commit")): r
        for r in rows
        if r.get("event") == "finished"
    }
    out = []
    for r in rows:
        if r.get("event") == "taken":
            end = ended.get((r.get("repo"), r.get("branch"), r.get("commit")))
            out.append(
                {
                    **r,
                    **(
                        end
                        or {
                            "result": "unfinished (the watcher stopped during its run)",
                            "code": None,
                        }
                    ),
                    "taken_at": r.get("time"),
                }
            )
    return out


def summary(reports: Sequence[Mapping]) -> str:
    """One line for a run from its reports: each suite's state, and the first failed step."""
    parts = []
    for doc in reports:
        meta = doc.get("meta") or {}
        state = meta.get("result") or meta.get("state") or ("ok" if doc.get("ok") else "failed")
        failed = next((s for s in doc.get("steps", []) if s.get("status") == "FAILED"), None)
        parts.append(
            f"{doc.get('suite')}: {state}"
            + (f" (failed at {failed['name']}: {failed.get('detail', '')})" if failed else "")
        )
    return "; ".join(parts)


def read_reports(places: Sequence[tuple[Path, str]], since: float) -> tuple[dict, ...]:
    """The JSON reports (`directory/suite.json`) written at or after `since` (a time.time())."""
    out = []
    for directory, suite in places:
        path = Path(directory) / f"{suite}.json"
        try:
            if path.stat().st_mtime >= since:
                out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):  # not written by this run, or half written: not its report
            continue
    return tuple(out)


# -- each run kept locally for the release page -------------------------------------------------
def save_run(directory: Path, payload: Mapping) -> Path:
    """One JSON file per finished run (with its reports) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%f")
    path = directory / f"{stamp}-{str(payload.get('commit', ''))[:12]}.json"
    path.write_text(json.dumps(dict(payload), indent=2) + "\n", encoding="utf-8")
    return path


def saved_runs(directory: Path, last: int = 20) -> list[dict]:
    """The last runs saved by `save_run`, oldest first (unreadable files are skipped)."""
    out = []
    for path in sorted(Path(directory).glob("*.json"))[-last:]:
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return out


# -- the watcher ----------------------------------------------------------------------------------
@dataclass
class Watcher:
    """Follows `branch` of `repo`; `run(commit)` delivers one commit. `after` callables get each
    finished run's payload (notifications, the page); their failures are said, never fatal."""

    repo: str
    branch: str
    store: RecordStore
    run: Callable[[str], RunResult]
    interval: float = 60.0  # seconds between two polls; 0: only when woken (a webhook)
    after: Sequence[Callable[[dict], None]] = ()
    log: Callable[[str], None] = print
    backoff_max: float = BACKOFF_MAX
    wake: threading.Event = field(default_factory=threading.Event)
    _looked: bool = False  # the records were read once (what was left unfinished is said)
    _told: set[str] = field(default_factory=set)  # commits said to be taken elsewhere
    _mine: set[str] = field(default_factory=set)  # commits this watcher took
    _unwritten: list[dict] = field(default_factory=list)  # finished records the cluster missed
    _stopping: bool = False
    _failing: bool = False  # the last try found the cluster or the repository silent
    _idle_at: str = ""  # the head last said to be taken already (said once, not every poll)

    @property
    def name(self) -> str:
        """The repository as records, logs and pages show it (and tell watchers apart by): a
        local path made absolute, a URL without credentials."""
        return str(Path(self.repo).resolve()) if Path(self.repo).is_dir() else redact(self.repo)

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()

    def _state(self) -> Runs:
        """The records as the cluster has them now (another watcher may have taken a commit)."""
        for row in list(self._unwritten):  # finished records kept while the cluster was away
            self.store.put(row)
            self._unwritten.remove(row)
        runs = Runs.of(self.store.load(), self.name, self.branch)
        if not self._looked:  # the first look: what earlier watchers left unfinished
            self._looked = True
            for r in runs.unfinished():
                self._tell(r)
        return runs

    def _tell(self, taken: Mapping) -> None:
        """Say once that a commit was taken elsewhere and is not run here."""
        commit = str(taken.get("commit", ""))
        if commit in self._told:
            return
        self._told.add(commit)
        who = (
            f"at {taken.get('time')} by {taken.get('user')}@{taken.get('host')} "
            f"(pid {taken.get('pid')})"
            if taken.get("user")
            else "by another watcher"
        )
        self.log(
            f"commit {commit[:12]} of {self.branch} was taken {who}, not run here; it runs "
            f"there, or stopped unfinished (`inv deliver --ref {commit[:12]}` runs it)"
        )

    def check(self) -> RunResult | None:
        """One poll: run the branch's newest commit if no watcher took it yet. None when there
        was nothing new. Raises WatchError when the repository or the cluster does not answer."""
        commit = head(self.repo, self.branch)
        runs = self._state()
        if commit in runs.taken:
            if commit not in runs.finished and commit not in self._mine:
                self._tell(runs.taken[commit])
            if commit != self._idle_at:  # what a watcher (a restarted one too) decided
                self._idle_at = commit
                self.log(
                    f"{self.branch} at {commit[:12]}: already taken, waiting for the next commit"
                )
            return None
        base = {"repo": self.name, "branch": self.branch, "commit": commit}
        taken = {
            **base,
            "event": "taken",
            "time": records.now(),
            "user": getpass.getuser(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "subject": subject(self.repo, commit),
        }
        # Before the run (a restart must not run it again), and only if no watcher took it
        # since our look.
        if not self.store.take(taken):
            self._tell(self._state().taken.get(commit, base))
            return None
        self._mine.add(commit)
        self.log(f"new commit {commit[:12]} on {self.branch}: {taken['subject'] or 'running'}")
        started = time.monotonic()
        try:
            result = self._run(commit)
        except KeyboardInterrupt as exc:
            self._finish(taken, RunResult(exit_code(exc), "interrupted"), started)
            raise
        self._finish(taken, result, started)
        return result

    def _run(self, commit: str) -> RunResult:
        try:
            return self.run(commit)
        except Exception as exc:  # a fault of the run itself: this commit failed, the next may not
            return RunResult(1, f"error: {type(exc).__name__}: {exc}".splitlines()[0])

    def _finish(self, taken: dict, result: RunResult, started: float) -> None:
        text = redact(result.text)
        finished = {k: taken[k] for k in ("repo", "branch", "commit")}
        finished.update(
            event="finished",
            time=records.now(),
            code=result.code,
            ok=result.ok,
            result=text[:RESULT_CHARS],
            seconds=round(time.monotonic() - started, 1),
        )
        try:
            with deferred():  # a signal here would leave the commit "unfinished" for good
                self.store.put(finished)
        except WatchError as exc:
            self.log(
                f"could not record the end of {taken['commit'][:12]} ({exc}): "
                f"recorded when the cluster answers again"
            )
            self._unwritten.append(finished)
        self.log(
            f"commit {taken['commit'][:12]}: {'ok' if result.ok else 'FAILED'} "
            f"(exit {result.code}) {text}"
        )
        payload = {
            **taken,
            **finished,
            "taken_at": taken["time"],
            "result": text,
            "reports": [scrub(r) for r in result.reports],
        }
        for hook in self.after:
            try:
                hook(payload)
            except Exception as exc:  # a notification or the page must not stop the watcher
                self.log(f"after the run: {type(exc).__name__}: {exc}")

    def serve(self) -> None:
        """Poll (or wait to be woken) until `stop()`; a run follows every new commit, and the
        branch is read again at once after each. While the cluster or the repository does not
        answer, it waits longer each time (up to `backoff_max`) and says so. Interruption
        (Ctrl-C, SIGTERM) propagates after the run in progress is recorded."""
        delay = 0.0
        while not self._stopping:
            self.wake.clear()
            try:
                ran = self.check()
            except WatchError as exc:
                delay = min(max(delay * 2, self.interval or 5.0), self.backoff_max)
                self.log(f"{exc}: trying again in {delay:.3g}s")
                self._failing = True
                self.wake.wait(delay)
                continue
            if self._failing:
                self.log("the cluster and the repository answer again")
                self._failing, delay = False, 0.0
            if ran is None and not self._stopping:
                self.wake.wait(self.interval or None)


def scrub(value):
    """A JSON value with credentials in URLs taken out of every string."""
    if isinstance(value, Mapping):
        return {str(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return redact(value) if isinstance(value, str) else value
