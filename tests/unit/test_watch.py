"""The watcher against a real git repository made here, a fake `run` and records kept by a fake
manager with the Swarm config API records.py uses (pure logic: no engine)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cdtasks import watch
from cdtasks.gateway import Unreachable
from cdtasks.interrupt import Interrupted, signals_as_interrupt
from cdtasks.watch import RecordStore, RunResult, Runs, SourceError, Watcher

WAIT = 20.0  # seconds a test waits for the watcher thread to do what it should


# -- a real repository --------------------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "app"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "dev@example.org")
    git(path, "config", "user.name", "dev")
    commit(path, "first")
    return path


_n = itertools.count()


def commit(repo: Path, message: str) -> str:
    (repo / "file.txt").write_text(f"{message} {next(_n)}\n")
    git(repo, "add", "file.txt")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


# -- records: conftest's in-memory Swarm config API, behind a real docker-py client ----------
class Flaky:
    """A manager whose next `down` calls fail, as a cluster that does not answer."""

    def __init__(self, swarm):
        self.swarm, self.down = swarm, 0

    def __getattr__(self, name):
        if self.down:
            self.down -= 1
            raise Unreachable("manager unreachable")
        return getattr(self.swarm, name)


@pytest.fixture()
def manager(swarm_manager) -> Flaky:
    return Flaky(swarm_manager)


def store_of(manager) -> RecordStore:
    return RecordStore(lambda: manager, "go-demo")


def rows(manager: Flaky) -> list[dict]:
    """What the cluster holds, read without the failures, in Raft order."""
    store = manager.swarm.store
    return [
        store.data(cid)
        for cid, _ in sorted(store.configs.items(), key=lambda kv: kv[1]["Version"]["Index"])
    ]


class FakeRun:
    """Records the commits it is asked to run; `codes` gives an exit code per commit; `gate`
    holds a run until the test lets it end."""

    def __init__(self, codes=None):
        self.commits: list[str] = []
        self.codes = codes or {}
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def __call__(self, commit: str) -> RunResult:
        self.commits.append(commit)
        self.started.set()
        if self.gate:
            assert self.gate.wait(WAIT)
        time.sleep(0.002)  # records are ordered by their millisecond (records.put's names)
        code = self.codes.get(commit, 0)
        return RunResult(
            code,
            f"run of {commit[:7]}: {'ok' if code == 0 else 'failed'}",
            ({"suite": "deliver", "ok": code == 0, "meta": {"repo": "x"}, "steps": []},),
        )


def until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Running:
    """A watcher serving on a thread (signals are the main thread's: not used here)."""

    def __init__(self, w: Watcher):
        self.w = w
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        try:
            self.w.serve()
        except BaseException as exc:  # noqa: B036 - the test reads it
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.w.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def make(repo: Path, manager, run, lines: list[str], **kw) -> Watcher:
    return Watcher(
        str(repo),
        "main",
        store_of(manager),
        run,
        interval=kw.pop("interval", 0.02),
        log=lines.append,
        **kw,
    )


# -- git -----------------------------------------------------------------------------------------
def test_head_and_default_branch_of_a_local_repository(repo: Path):
    assert watch.head(str(repo), "main") == git(repo, "rev-parse", "HEAD")
    assert watch.default_branch(str(repo)) == "main"
    assert watch.subject(str(repo), git(repo, "rev-parse", "HEAD")) == "first"
    assert watch.subject(str(repo), commit(repo, "\x1b[2Jred\x07 alert")) == "[2Jred alert"
    assert watch.subject("https://example.org/x.git", "0" * 40) == ""  # a URL: no fetch for it


def test_a_missing_branch_or_repository_is_one_line(repo: Path, tmp_path: Path):
    with pytest.raises(SourceError, match="no branch nope in"):
        watch.head(str(repo), "nope")
    with pytest.raises(SourceError, match="`git ls-remote` failed"):
        watch.head(str(tmp_path / "missing"), "main")
    # a user-given repository that looks like an option is taken as a repository
    with pytest.raises(SourceError, match="failed"):
        watch.head(f"--upload-pack=touch {tmp_path}/pwned", "main")
    assert not (tmp_path / "pwned").exists()


def test_a_repository_that_does_not_answer_is_given_up_with_its_helpers(monkeypatch):
    # `ext::` runs a command as the remote's transport: one that never answers
    for name, value in (
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "protocol.ext.allow"),
        ("GIT_CONFIG_VALUE_0", "always"),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(watch, "GIT_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(SourceError, match="`git ls-remote` got no answer in 0.5s"):
        watch.head("ext::sh -c sleep% 37.5", "main")
    assert time.monotonic() - started < 10
    left = subprocess.run(["pgrep", "-f", "sleep 37.5"], capture_output=True, text=True)
    assert left.stdout.strip() == ""  # the helper went with git


def test_branch_names_are_checked_by_git():
    assert watch.check_branch("feature/x") == "feature/x"
    for bad in ("a..b", "-x", "x y", ""):
        with pytest.raises(ValueError, match="not a valid branch name"):
            watch.check_branch(bad)


def test_credentials_in_urls_are_scrubbed_from_json_values():
    assert watch.scrub({"r": ["https://a:b@h/"], "n": 1, "t": None}) == {
        "r": ["https://***@h/"],
        "n": 1,
        "t": None,
    }


# -- the loop ------------------------------------------------------------------------------------
def test_each_new_commit_runs_once_in_order(repo: Path, manager):
    run, lines = FakeRun(), []
    first = git(repo, "rev-parse", "HEAD")
    payloads = []
    with Running(make(repo, manager, run, lines, after=[payloads.append])):
        until(lambda: len(payloads) == 1, "the first commit's run")
        second = commit(repo, "second")
        until(lambda: len(payloads) == 2, "the second commit's run")
        third = commit(repo, "third")
        until(lambda: len(payloads) == 3, "the third commit's run")
        # The next poll finds the third taken: nothing runs twice.
        until(lambda: f"main at {third[:12]}: already taken" in " ".join(lines), "the next poll")
    assert run.commits == [first, second, third]
    events = [(r["event"], r["commit"]) for r in rows(manager)]
    assert events == [
        ("taken", first),
        ("finished", first),
        ("taken", second),
        ("finished", second),
        ("taken", third),
        ("finished", third),
    ]
    assert [p["subject"] for p in payloads] == ["first", "second", "third"]
    assert all(p["code"] == 0 and p["ok"] and p["reports"] for p in payloads)


def test_the_newest_of_commits_pushed_during_a_run_is_taken_next(repo: Path, manager):
    run, lines = FakeRun(), []
    run.gate = threading.Event()
    first = git(repo, "rev-parse", "HEAD")
    with Running(make(repo, manager, run, lines)):
        assert run.started.wait(WAIT)
        commit(repo, "b")
        commit(repo, "c")
        newest = commit(repo, "d")
        run.gate.set()
        until(lambda: len(run.commits) == 2 and len(rows(manager)) == 4, "the next run")
        until(lambda: f"main at {newest[:12]}: already taken" in " ".join(lines), "the next poll")
    assert run.commits == [first, newest]


def test_a_failing_commit_is_reported_and_the_next_still_runs(repo: Path, manager):
    first = git(repo, "rev-parse", "HEAD")
    run, lines = FakeRun({first: 14}), []
    with Running(make(repo, manager, run, lines)):
        until(lambda: len(rows(manager)) == 2, "the failed run's record")
        second = commit(repo, "fix")
        until(lambda: len(rows(manager)) == 4, "the next run")
    finished = [r for r in rows(manager) if r["event"] == "finished"]
    assert [(r["commit"], r["code"], r["ok"]) for r in finished] == [
        (first, 14, False),
        (second, 0, True),
    ]
    assert any(f"commit {first[:12]}: FAILED (exit 14)" in line for line in lines)


def test_a_run_that_raises_is_a_failed_run_not_the_end_of_the_watcher(repo: Path, manager):
    def broken(commit):
        raise RuntimeError("boom")

    lines = []
    result = make(repo, manager, broken, lines).check()
    assert (result.code, result.text) == (1, "error: RuntimeError: boom")


def test_a_restart_does_not_run_a_commit_again(repo: Path, manager):
    run, lines = FakeRun(), []
    assert make(repo, manager, run, lines).check().ok
    again, said = FakeRun(), []
    restarted = make(repo, manager, again, said)
    assert restarted.check() is None and restarted.check() is None
    assert again.commits == []
    head = git(repo, "rev-parse", "HEAD")
    assert said == [f"main at {head[:12]}: already taken, waiting for the next commit"]  # once


def test_an_unfinished_commit_is_reported_not_run_again(repo: Path, manager):
    lines = []
    head = git(repo, "rev-parse", "HEAD")
    store_of(manager).put(
        {
            "repo": str(repo),
            "branch": "main",
            "commit": head,
            "event": "taken",
            "time": "2026-01-01T00:00:00+00:00",
            "user": "u",
            "host": "h",
            "pid": 42,
        }
    )
    run = FakeRun()
    assert make(repo, manager, run, lines).check() is None
    assert run.commits == []
    said = [line for line in lines if f"commit {head[:12]} of main was taken at 2026-01-01" in line]
    assert len(said) == 1 and "u@h (pid 42), not run here" in said[0], lines
    assert make(repo, manager, run, lines).check() is None
    paired = watch.pairs(rows(manager))
    assert paired[0]["result"].startswith("unfinished") and paired[0]["code"] is None


def test_two_watchers_take_a_commit_once(repo: Path, manager):
    """One runs it; the other, looking at fresh records during that run, leaves it; a third
    whose look was stale (taken between its look and its take) loses the claim."""
    head = git(repo, "rev-parse", "HEAD")
    first, second, third, lines = FakeRun(), FakeRun(), FakeRun(), []
    first.gate = threading.Event()
    a = make(repo, manager, first, lines)
    b = make(repo, manager, second, lines)
    stale = make(repo, manager, third, lines)
    stale.store.load = lambda: []  # read before `a` took the commit
    with Running(a):
        assert first.started.wait(WAIT)
        assert b.check() is None and stale.check() is None
        first.gate.set()
        until(lambda: len(rows(manager)) == 2, "the run's end")
    assert first.commits == [head] and second.commits == [] and third.commits == []
    assert [(r["event"], r["commit"]) for r in rows(manager)] == [
        ("taken", head),
        ("finished", head),
    ]
    assert len([line for line in lines if f"commit {head[:12]} of main was taken" in line]) == 2
    assert len([line for line in lines if f"new commit {head[:12]}" in line]) == 1


def test_records_of_other_branches_and_repositories_do_not_count(repo: Path):
    head = git(repo, "rev-parse", "HEAD")
    base = {"commit": head, "event": "taken"}
    runs = Runs.of(
        [
            {**base, "repo": str(repo), "branch": "dev"},
            {**base, "repo": "/elsewhere", "branch": "main"},
            {**base, "repo": str(repo), "branch": "main", "event": "unfinished"},
        ],
        str(repo),
        "main",
    )
    assert runs.taken == {} and runs.finished == {}


def test_pruning_keeps_each_branchs_last_taken_and_finished(repo: Path, manager, monkeypatch):
    """Records beyond KEEP go at each new one, but a quiet branch's head stays taken (it is not
    run again) and the busy branch's newest `taken` and `finished` stay."""
    monkeypatch.setattr(watch.records, "KEEP", 3)
    git(repo, "branch", "quiet")
    quiet_head = git(repo, "rev-parse", "quiet")
    quiet = Watcher(str(repo), "quiet", store_of(manager), FakeRun(), log=lambda line: None)
    assert quiet.check().ok
    busy, lines = FakeRun(), []
    w = make(repo, manager, busy, lines)
    w.check()
    for n in range(3):
        commit(repo, f"busy {n}")
        assert w.check().ok
    newest = busy.commits[-1]
    assert [(r["branch"], r["event"], r["commit"]) for r in rows(manager)] == [
        ("quiet", "taken", quiet_head),
        ("quiet", "finished", quiet_head),
        ("main", "finished", busy.commits[-2]),
        ("main", "taken", newest),
        ("main", "finished", newest),
    ]
    again = FakeRun()
    assert Watcher(str(repo), "quiet", store_of(manager), again).check() is None
    assert make(repo, manager, again, []).check() is None
    assert again.commits == []


def test_once_gives_the_runs_exit_code_then_nothing_new(repo: Path, manager):
    head = git(repo, "rev-parse", "HEAD")
    lines = []
    w = make(repo, manager, FakeRun({head: 16}), lines)
    assert w.check().code == 16
    assert w.check() is None


def test_a_silent_cluster_is_waited_out_with_a_growing_delay_and_said(repo: Path, manager):
    run, lines = FakeRun(), []
    manager.down = 3  # load fails, then twice more
    with Running(make(repo, manager, run, lines, interval=0.02)):
        until(lambda: len(rows(manager)) == 2, "the run after the cluster came back")
    said = [line for line in lines if "does not answer" in line]
    assert len(said) == 3
    assert (
        said[0]
        == "the cluster does not answer (Unreachable: manager unreachable): trying again in 0.02s"
    )
    assert said[1].endswith("trying again in 0.04s") and said[2].endswith("trying again in 0.08s")
    assert "the cluster and the repository answer again" in lines
    assert len(run.commits) == 1


def test_the_end_of_a_run_the_cluster_missed_is_recorded_later(repo: Path, manager):
    first = git(repo, "rev-parse", "HEAD")
    lines = []

    def run(commit):
        manager.down = 1  # the cluster goes away during the run
        return RunResult(0, "ok")

    w = make(repo, manager, run, lines)
    assert w.check().ok
    assert [r["event"] for r in rows(manager)] == ["taken"]
    assert any("could not record the end of" in line for line in lines)
    commit(repo, "next")
    w.run = FakeRun()
    w.check()
    assert [(r["event"], r["commit"]) for r in rows(manager)][:2] == [
        ("taken", first),
        ("finished", first),
    ]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_is_recorded_and_the_interruption_goes_on(
    repo: Path, signum, code, manager
):
    lines = []
    payloads = []

    def run(commit):
        raise Interrupted(signum)

    with pytest.raises(Interrupted):
        make(repo, manager, run, lines, after=[payloads.append]).check()
    finished = next(r for r in rows(manager) if r["event"] == "finished")
    assert (finished["code"], finished["result"]) == (code, "interrupted")
    assert payloads[0]["code"] == code


def test_a_failing_after_hook_is_said_and_the_watcher_goes_on(repo: Path, manager):
    def bad_hook(payload):
        raise OSError("disk full")

    lines = []
    assert make(repo, manager, FakeRun(), lines, after=[bad_hook]).check().ok
    assert "after the run: OSError: disk full" in lines


def test_woken_watcher_checks_at_once_without_polling(repo: Path, manager, monkeypatch):
    run, lines, reads = FakeRun(), [], []
    real_head = watch.head
    monkeypatch.setattr(watch, "head", lambda *a: reads.append(real_head(*a)) or reads[-1])
    w = make(repo, manager, run, lines, interval=0)
    with Running(w):
        # the first run, then the branch read again at once after it; then it waits
        until(lambda: len(reads) == 2, "the read after the first run")
        newest = commit(repo, "pushed")
        time.sleep(0.2)
        assert len(run.commits) == 1  # no polling with interval 0
        w.wake.set()
        until(lambda: len(run.commits) == 2, "the run after the push")
    assert run.commits[-1] == newest


def test_credentials_never_reach_records_or_payloads(tmp_path: Path, repo: Path, manager):
    lines, payloads = [], []
    w = make(
        repo,
        manager,
        lambda c: RunResult(1, "clone https://bob:t0ken@h/x failed"),
        lines,
        after=[payloads.append],
    )
    w.check()
    text = repr(rows(manager)) + repr(payloads) + repr(lines)
    assert "t0ken" not in text and "https://***@h/x" in text


def test_summary_and_reports_of_a_run(tmp_path: Path):
    doc = {
        "suite": "deliver",
        "ok": False,
        "meta": {"state": "prod-like runs x"},
        "steps": [{"name": "unit", "status": "FAILED", "detail": "2 failed"}],
    }
    assert (
        watch.summary([doc, {"suite": "deploy", "ok": True, "meta": {"result": "deployed"}}])
        == "deliver: prod-like runs x (failed at unit: 2 failed); deploy: deployed"
    )
    (tmp_path / "deliver.json").write_text('{"suite": "deliver"}')
    (tmp_path / "deploy.json").write_text("{half")
    assert watch.read_reports([(tmp_path, "deliver"), (tmp_path, "deploy")], 0) == (
        {"suite": "deliver"},
    )
    assert watch.read_reports([(tmp_path, "deliver")], time.time() + 60) == ()
    for i in (3, 1, 2):  # the order they ran in, whatever their commits
        watch.save_run(tmp_path / "runs", {"commit": f"{i}" * 40, "n": i})
    assert [r["n"] for r in watch.saved_runs(tmp_path / "runs", last=2)] == [1, 2]


def test_a_signal_while_the_end_is_written_comes_after_the_record(repo: Path, manager):
    """SIGTERM arriving in the middle of writing `finished`: the record is written whole, then
    the watcher is interrupted (the commit is not left "unfinished")."""
    head = git(repo, "rev-parse", "HEAD")
    lines, store = [], store_of(manager)
    put = store.put

    def put_with_a_signal(data):
        if data["event"] == "finished":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # without deferral the handler raises here, before the write
        put(data)

    store.put = put_with_a_signal
    w = Watcher(str(repo), "main", store, FakeRun(), log=lines.append)
    with pytest.raises(Interrupted) as err, signals_as_interrupt():
        w.check()
    assert err.value.signum == signal.SIGTERM
    assert [(r["event"], r["commit"], r.get("code")) for r in rows(manager)] == [
        ("taken", head, None),
        ("finished", head, 0),
    ]
