"""`inv watch --once` and `inv report` on the real lab: a commit of this project is delivered
once, its records live on the test cluster (a second watcher does not run it again), and the
page shows what the clusters run.

The watch tasks are not in tasks.py yet (they are wired after the delivery modules' reshape):
until then they run from their own collection, as `inv` would run them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cdtasks import records, services, watch
from cdtasks.cluster import Cluster

from .conftest import ROOT, Lab

DRIVER = ("import sys; from invoke import Program; from cdtasks.tasks import watch; "
          "Program(namespace=watch.ns).run(['inv', *sys.argv[1:]])")


def inv_watch(lab: Lab, reports, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**lab.env, "CDTASKS_REPORTS_DIR": str(reports)})


@pytest.fixture(scope="module")
def head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_watch_once_delivers_the_newest_commit_once(stack: Lab, head: str, tmp_path):
    branch = watch.default_branch(str(ROOT))
    first = inv_watch(stack, tmp_path, "watch", "--once", "--branch", branch)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"new commit {head[:12]} on {branch}" in first.stderr
    s = stack.settings("test")
    manager = Cluster.of(s).discover().manager()
    mine = [r for r in records.load(manager, watch.KIND, s.app_service) if r["commit"] == head]
    assert sorted(r["event"] for r in mine) == ["finished", "taken"]
    assert next(r for r in mine if r["event"] == "finished")["code"] == 0
    assert records.load(manager, "delivered", s.app_service)[-1]["commit"] == head

    again = inv_watch(stack, tmp_path, "watch", "--once", "--branch", branch)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no new commit" in again.stdout and "new commit" not in again.stderr

    [saved] = (tmp_path / watch.RUNS_DIR).glob(f"*-{head[:12]}.json")
    assert json.loads(saved.read_text())["reports"][0]["suite"] == "deliver"

    assert (tmp_path / "releases.html").is_file()  # kept current by the watcher
    out = tmp_path / "page" / "releases.html"
    shown = inv_watch(stack, tmp_path, "report", "--output", str(out), timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    html = out.read_text()
    running = services.current_image(manager, s.app_service)
    assert head[:7] in running and running.partition("@")[0] in html
    assert head[:12] in html and running.partition("@")[2][:19] in html
