"""`inv watch` and `inv report` on the real lab, run as a user runs them (`inv ...`, the watcher
as a background process): a commit of this project is delivered once by `--once`; a repository
gets three commits (good, failing unit tests, good) while `inv watch --deploy` follows it, is
restarted in the middle and never runs a commit twice, the good ones reach production in order
and the broken one never does; a push notification with a wrong signature starts nothing; the
release page lists every commit with its result."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from cdtasks import records, services, watch
from cdtasks.cluster import Cluster

from .conftest import (
    ROOT,
    SECRET,
    Lab,
    Watcher,
    free_port,
    git,
    manager_of,
    sample_repository,
    webhook_watcher,
)

ANCHOR = "    def test_hello_with_delay(self):"  # in demo/tests/unit/test_server.py
BROKEN = (
    "    def test_deliberately_broken(self):\n"  # a unit test that fails, inserted before it
    '        self.assertEqual(server.HELLO, "DELIBERATE-UNIT-FAILURE")\n\n'
)


def inv_watch(lab: Lab, reports, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return lab.inv(
        *args, check=False, timeout=timeout, extra_env={"CDTASKS_REPORTS_DIR": str(reports)}
    )


def manager(lab: Lab, env: str = "test"):
    return manager_of(Cluster.of(lab.settings(env)).discover())


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: expected {old!r} once"
    path.write_text(text.replace(old, new))


def app_service(s) -> str:
    """The Swarm service that runs the sample's image: the stack's `main` (demo/stack.yml)."""
    return f"{s.stack.stack_name}_main"


def watch_rows(lab: Lab, repo: Path) -> list[dict]:
    s = lab.settings("test")
    return [
        r
        for r in records.load(manager(lab), watch.KIND, s.stack.stack_name)
        if r.get("repo") == str(repo.resolve())
    ]


def prod_images(lab: Lab, timeout: float = 60) -> list[str]:
    """The images of the prod service's running tasks, once Swarm has settled on one image."""
    mgr, service = manager(lab, "prod"), app_service(lab.settings("prod"))
    deadline = time.monotonic() + timeout
    while True:
        tasks = mgr.api.tasks(filters={"service": service, "desired-state": "running"})
        images = [
            t["Spec"]["ContainerSpec"]["Image"] for t in tasks if t["Status"]["State"] == "running"
        ]
        if (len(set(images)) == 1 and len(images) == len(tasks)) or time.monotonic() > deadline:
            return images
        time.sleep(1)


@pytest.fixture(scope="module")
def head() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_watch_once_delivers_the_newest_commit_once(stack: Lab, head: str, tmp_path):
    branch = watch.default_branch(str(ROOT))
    first = inv_watch(stack, tmp_path, "watch", "--once", "--branch", branch)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"new commit {head[:12]} on {branch}" in first.stderr
    s = stack.settings("test")
    mgr = manager(stack)
    mine = [r for r in records.load(mgr, watch.KIND, s.stack.stack_name) if r["commit"] == head]
    assert sorted(r["event"] for r in mine) == ["finished", "taken"]
    assert next(r for r in mine if r["event"] == "finished")["code"] == 0
    assert records.load(mgr, "delivered", s.stack.stack_name)[-1]["commit"] == head

    again = inv_watch(stack, tmp_path, "watch", "--once", "--branch", branch)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no new commit" in again.stdout and "new commit" not in again.stderr

    [saved] = (tmp_path / watch.RUNS_DIR).glob(f"*-{head[:12]}.json")
    assert json.loads(saved.read_text())["reports"][0]["suite"] == "deliver"

    assert (tmp_path / "releases.html").is_file()  # kept current by the watcher
    out = tmp_path / "page" / "releases.html"
    out.parent.mkdir()  # `inv report` refuses a directory that does not exist
    shown = inv_watch(stack, tmp_path, "report", "--output", str(out), timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    html = out.read_text()
    running = services.current_image(mgr, app_service(s))
    assert head[:7] in running and running.partition("@")[0] in html
    assert head[:12] in html and running.partition("@")[2][:19] in html


def test_watch_deploys_good_commits_in_order_and_never_a_broken_one(stack: Lab, tmp_path):
    repo, reports = tmp_path / "repo", tmp_path / "reports"
    repo.mkdir()
    sample_repository(repo)  # no commit yet: the watcher waits for the first
    test_server = repo / "demo/tests/unit/test_server.py"
    history_before = len(
        json.loads(stack.inv("history", "--env", "prod", "--json").stdout)["deployments"]
    )
    args = ("--repo", str(repo), "--branch", "main", "--deploy", "--interval", "2")
    commits: dict[str, str] = {}
    watchers: list[Watcher] = []
    started = time.monotonic()
    try:
        first = Watcher(stack, reports, tmp_path / "watch-1.log", *args)
        watchers.append(first)
        first.wait_for("following main", 300)

        git(repo, "add", "-A")
        git(repo, "commit", "--quiet", "-m", "good one")
        commits["good"] = git(repo, "rev-parse", "HEAD")
        first.wait_for(f"new commit {commits['good'][:12]}", 300)

        # The next commit arrives during the first one's run: it is taken right after.
        edit(test_server, ANCHOR, BROKEN + ANCHOR)
        git(repo, "commit", "--quiet", "-am", "break a unit test")
        commits["broken"] = git(repo, "rev-parse", "HEAD")
        first.wait_for(f"commit {commits['good'][:12]}: ok", 1200)
        first.wait_for(f"commit {commits['broken'][:12]}: FAILED", 900)
        # The page is the last thing after a run: wait for it before stopping between commits.
        page = reports / "releases.html"
        deadline = time.monotonic() + 300
        while not (
            page.is_file()
            and len(list((reports / watch.RUNS_DIR).glob("*.json"))) == 2
            and page.stat().st_mtime
            >= max(p.stat().st_mtime for p in (reports / watch.RUNS_DIR).glob("*.json"))
        ):
            assert time.monotonic() < deadline, first.text()[-3000:]
            time.sleep(0.5)
        print(f"\ngood and broken run after {time.monotonic() - started:.0f}s")
        code = first.stop()
        assert code == 128 + signal.SIGTERM, (code, first.text()[-3000:])

        # Restarted: the head (broken) was taken by the first watcher; it is not run again.
        second = Watcher(stack, reports, tmp_path / "watch-2.log", *args)
        watchers.append(second)
        second.wait_for("following main", 300)
        # Its first look at the branch: the head was taken before the restart.
        second.wait_for(f"main at {commits['broken'][:12]}: already taken", 120)
        assert "new commit" not in second.text(), second.text()[-3000:]

        edit(test_server, BROKEN + ANCHOR, ANCHOR)
        git(repo, "commit", "--quiet", "-am", "unit tests fixed")
        commits["fixed"] = git(repo, "rev-parse", "HEAD")
        second.wait_for(f"new commit {commits['fixed'][:12]}", 120)
        second.wait_for(f"commit {commits['fixed'][:12]}: ok", 1200)
        print(f"fixed one deployed after {time.monotonic() - started:.0f}s")
        code = second.stop()
        assert code == 128 + signal.SIGTERM, (code, second.text()[-3000:])
        logs = first.text() + second.text()
        assert "new commit" not in second.text().replace(f"new commit {commits['fixed'][:12]}", "")
    finally:
        for w in watchers:
            w.stop()

    # One `taken` and one `finished` per commit, across both watchers.
    rows = watch_rows(stack, repo)
    for name, commit in commits.items():
        mine = sorted(r["event"] for r in rows if r["commit"] == commit)
        assert mine == ["finished", "taken"], (name, mine)
    ended = {r["commit"]: r for r in rows if r["event"] == "finished"}
    assert ended[commits["good"]]["code"] == 0 and ended[commits["fixed"]]["code"] == 0
    assert ended[commits["broken"]]["code"] == 12, ended[commits["broken"]]
    assert "failed at unit" in ended[commits["broken"]]["result"], ended[commits["broken"]]
    assert f"commit {commits['broken'][:12]}: FAILED (exit 12)" in logs

    # Production got the good ones, in order, by the digest delivered; never the broken one.
    s = stack.settings("test")
    by_commit = {
        r["commit"]: r for r in records.load(manager(stack), "delivered", s.stack.stack_name)
    }
    assert commits["broken"] not in by_commit
    deployments = json.loads(stack.inv("history", "--env", "prod", "--json").stdout)["deployments"]
    new = deployments[history_before:]
    assert [(d["digest"], d["result"]) for d in new] == [
        (by_commit[commits["good"]]["digest"], "deployed"),
        (by_commit[commits["fixed"]]["digest"], "deployed"),
    ], new
    images = prod_images(stack)
    assert images and all(
        i.endswith("@" + by_commit[commits["fixed"]]["digest"]) for i in images
    ), images

    # The page lists the three commits with their results.
    out = tmp_path / "page.html"
    shown = inv_watch(stack, reports, "report", "--output", str(out), timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    html = out.read_text()
    for commit in commits.values():
        assert commit[:12] in html, commit
    for subject in ("good one", "break a unit test", "unit tests fixed", "failed at unit"):
        assert subject in html, subject
    # Each run's timeline from measured starts (steps in order; the build, started beside the
    # unit tests, may round 0.1 s below them).
    assert "steps laid end to end" not in html
    [good_run] = [
        r for r in watch.saved_runs(reports / watch.RUNS_DIR) if r["commit"] == commits["good"]
    ]
    for doc in good_run["reports"]:
        starts = [(s["name"], s["started"]) for s in doc["steps"]]
        assert all(isinstance(at, float) for _, at in starts), starts
        after = [at for name, at in starts if name != "build"]
        assert after == sorted(after), starts
    print(
        "step starts of the good run:",
        [
            (s["name"], s["started"], round(s["seconds"], 1))
            for doc in good_run["reports"]
            for s in doc["steps"]
        ],
    )

    # A push notification: a wrong signature gets 401 and starts nothing; the right one a run
    # (of a commit whose unit tests fail again: the shortest run).
    port = free_port()
    hook = webhook_watcher(stack, reports, tmp_path / "watch-3.log", repo, port)
    try:
        hook.wait_for("following main", 300)
        hook.wait_for(": already taken, waiting for the next commit", 120)  # its first look
        edit(test_server, ANCHOR, BROKEN + ANCHOR)
        git(repo, "commit", "--quiet", "-am", "pushed")
        pushed = git(repo, "rev-parse", "HEAD")
        body = json.dumps({"ref": "refs/heads/main", "after": pushed}).encode()
        sign = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
        url = f"http://127.0.0.1:{port}/"
        wrong = requests.post(
            url,
            data=body,
            timeout=30,
            headers={**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64},
        )
        assert wrong.status_code == 401, wrong.text
        # What the watcher said it did with that request (never a wake-up: the unit tests of
        # webhook check that in-process).
        hook.wait_for("webhook: 401 to 127.0.0.1: missing or wrong signature", 60)
        assert "new commit" not in hook.text(), hook.text()[-3000:]
        assert not [r for r in watch_rows(stack, repo) if r["commit"] == pushed]
        right = requests.post(
            url, data=body, timeout=30, headers={**headers, "X-Hub-Signature-256": "sha256=" + sign}
        )
        assert right.status_code == 202, right.text
        hook.wait_for(f"new commit {pushed[:12]}", 60)
        hook.wait_for(f"commit {pushed[:12]}: FAILED", 900)
        assert SECRET not in hook.text()
    finally:
        hook.stop()
    assert sorted(r["event"] for r in watch_rows(stack, repo) if r["commit"] == pushed) == [
        "finished",
        "taken",
    ]
    print(f"whole scenario {time.monotonic() - started:.0f}s")
