"""Watchers under pressure, on the real lab, run as a user runs them: two `inv watch` started
together on one repository run each commit once; trickling connections do not keep a signed
push from being answered; `nohup inv watch &` survives SIGHUP (a plain one exits 129)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from cdtasks import watch

from .conftest import (
    ROOT,
    SECRET,
    Lab,
    Watcher,
    free_port,
    git,
    sample_repository,
    webhook_watcher,
)
from .test_6_watch import ANCHOR, BROKEN, edit, watch_rows

TOOL_TRACEBACK = re.compile(r'File "[^"]*/(cdtasks|invoke)/')


def broken_commit(repo: Path, message: str) -> str:
    """A commit whose unit tests fail: the shortest whole run of a delivery."""
    test_server = repo / "demo/tests/unit/test_server.py"
    edit(test_server, ANCHOR, BROKEN.replace("broken", f"broken_{len(message)}") + ANCHOR)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_two_watchers_started_together_run_each_commit_once(stack: Lab, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    sample_repository(repo)
    commits = [broken_commit(repo, "first for two watchers")]
    args = ("--repo", str(repo), "--branch", "main", "--interval", "1")
    pair = [
        Watcher(stack, tmp_path / f"reports-{i}", tmp_path / f"watch-{i}.log", *args)
        for i in (1, 2)
    ]
    started = time.monotonic()

    def ran(commit: str) -> None:
        deadline = time.monotonic() + 900
        while not any(f"commit {commit[:12]}: FAILED" in w.text() for w in pair):
            assert time.monotonic() < deadline, [w.text()[-2000:] for w in pair]
            assert all(w.proc.poll() is None for w in pair), [w.text()[-2000:] for w in pair]
            time.sleep(0.5)

    try:
        for w in pair:
            w.wait_for("following main", 300)
        ran(commits[0])
        commits.append(broken_commit(repo, "second for two watchers"))
        ran(commits[1])
        time.sleep(3)  # a few more polls of both: nothing runs again
    finally:
        codes = [w.stop() for w in pair]
    print(f"\ntwo commits, two watchers: {time.monotonic() - started:.0f}s")
    assert codes == [128 + signal.SIGTERM] * 2, codes
    logs = [w.text() for w in pair]
    for commit in commits:
        runners = [i for i, text in enumerate(logs) if f"new commit {commit[:12]}" in text]
        assert len(runners) == 1 and logs[runners[0]].count(f"new commit {commit[:12]}") == 1, (
            commit,
            logs,
        )
        other = logs[1 - runners[0]]
        assert f"commit {commit[:12]} of main was taken" in other, other[-3000:]
        assert f"commit {commit[:12]}: FAILED" not in other
        events = sorted(r["event"] for r in watch_rows(stack, repo) if r["commit"] == commit)
        assert events == ["finished", "taken"], (commit, events)
        saved = [
            p
            for i in (1, 2)
            for p in (tmp_path / f"reports-{i}" / watch.RUNS_DIR).glob(f"*-{commit[:12]}.json")
        ]
        assert len(saved) == 1, saved
        doc = json.loads(saved[0].read_text())
        assert doc["code"] == 12 and [r["suite"] for r in doc["reports"]] == ["deliver"], doc
    for text in logs:  # the unit tests' own tracebacks are shown; none of the tool's
        assert not TOOL_TRACEBACK.search(text), text[-3000:]


class Trickle(threading.Thread):
    """A client that sends a request one byte every `every` seconds; `cut` when the server
    closed it, and after how long."""

    def __init__(self, port: int, every: float):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.every, self.cut, self.answer = every, None, b""
        self.opened = time.monotonic()
        self.stop = threading.Event()

    def run(self):
        request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
        try:
            for byte in request:
                self.sock.sendall(bytes([byte]))
                if self.stop.wait(self.every):
                    return
                self.sock.setblocking(False)
                try:
                    self.answer += self.sock.recv(1000)
                except BlockingIOError:
                    continue
                finally:
                    self.sock.setblocking(True)
                self.cut = time.monotonic() - self.opened
                return
        except OSError:
            self.cut = time.monotonic() - self.opened
        finally:
            self.sock.close()


def test_trickling_connections_do_not_keep_a_signed_push_waiting(lab: Lab, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    sample_repository(repo)  # no branch yet: the watcher waits for one, nothing runs
    port = free_port()
    hook = webhook_watcher(lab, tmp_path / "reports", tmp_path / "watch.log", repo, port)
    trickles: list[Trickle] = []
    try:
        hook.wait_for("following main", 300)
        trickles = [Trickle(port, 2.0) for _ in range(24)]
        for t in trickles:
            t.start()
        # Clients that leave early, in the middle of their headers or their body.
        for partial in (
            b"POST / HTTP/1.1\r\nContent-Le",
            b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab",
        ):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(partial)
        time.sleep(3)
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        sign = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        asked = time.monotonic()
        right = requests.post(
            f"http://127.0.0.1:{port}/",
            data=body,
            timeout=30,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-Hub-Signature-256": "sha256=" + sign,
            },
        )
        answered = time.monotonic() - asked
        print(f"\nsigned push answered in {answered:.2f}s beside {len(trickles)} trickling clients")
        assert right.status_code == 202 and answered < 2.0, (right.status_code, answered)
        for t in trickles:
            t.join(40)
        cuts = sorted(t.cut for t in trickles if t.cut is not None)
        print(f"trickling clients cut after {cuts[0]:.1f}..{cuts[-1]:.1f}s")
        assert len(cuts) == len(trickles) and cuts[-1] < 20, cuts
        assert all(t.answer.startswith(b"HTTP/1.0 408") for t in trickles), {
            t.answer[:40] for t in trickles
        }
        hook.wait_for("webhook: 202 to 127.0.0.1: checking main", 30)
        assert hook.proc.poll() is None
    finally:
        for t in trickles:
            t.stop.set()
        hook.stop()
    assert "Traceback" not in hook.text(), hook.text()[-3000:]  # clients that left early


def test_nohup_keeps_the_watcher_through_sighup_and_a_plain_one_exits_129(lab: Lab, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    sample_repository(repo)  # no branch yet: the watcher waits for one, nothing runs
    argv = [
        sys.executable,
        "-m",
        "invoke",
        "watch",
        "--repo",
        str(repo),
        "--branch",
        "main",
        "--interval",
        "1",
    ]
    procs = {}
    try:
        for name, prefix in (("nohup", ["nohup"]), ("plain", [])):
            log = tmp_path / f"{name}.log"
            procs[name] = (
                subprocess.Popen(
                    prefix + argv,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                    env=lab.env,
                ),
                log,
            )
        for proc, log in procs.values():
            deadline = time.monotonic() + 300
            while "following main" not in log.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
            proc.send_signal(signal.SIGHUP)
        plain, log = procs["plain"]
        assert plain.wait(60) == 128 + signal.SIGHUP, log.read_text()[-3000:]
        nohup, log = procs["nohup"]
        time.sleep(3)
        assert nohup.poll() is None, log.read_text()[-3000:]
        nohup.send_signal(signal.SIGTERM)
        assert nohup.wait(60) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
