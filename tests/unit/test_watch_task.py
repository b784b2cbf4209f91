"""`inv watch` as a process: the task's wiring with a fake delivery (`run_delivery`) and a fake
cluster, a real git repository, real signals. Exit codes: the run's with --once, 128 + signal
when stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]  # this checkout

SCRIPT = r"""
import json, sys, time
from invoke import Context, Exit
sys.path.insert(0, sys.argv[1])
import docker
from types import SimpleNamespace
from conftest import BASE, MANAGER_INFO, ConfigStore
from cdtasks import watch
from cdtasks.cluster import Cluster
from cdtasks.gateway import Gateway
from cdtasks.tasks import watch as tw

api = docker.APIClient(base_url=BASE, version="1.41")
api.mount(BASE, ConfigStore())
# the test cluster's manager: records only
manager = Gateway.of_client(SimpleNamespace(api=api, info=lambda: MANAGER_INFO))

class FakeCluster:
    def discover(self):
        return self
    def gateway(self):
        return manager

Cluster.of = classmethod(lambda cls, settings: FakeCluster())
args = json.loads(sys.argv[2])
code, slow = args.pop("code"), args.pop("slow")

def run_delivery(c, env, repo, commit, deploy, prod_env):
    print("running", commit, flush=True)
    time.sleep(slow)
    return watch.RunResult(code, f"fake run of {commit[:7]}", ())

tw.run_delivery = run_delivery
try:
    tw.watch_.body(Context(), **args)
    status = 0
except Exit as exc:  # what invoke's program does with it
    status = exc.code
    if exc.message:
        print(exc.message, file=sys.stderr)
print("records", json.dumps(watch.RecordStore(lambda: manager, "go-demo").load()), flush=True)
sys.exit(status)
"""


@pytest.fixture()
def setup(tmp_path: Path):
    repo = tmp_path / "app"
    repo.mkdir()
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "d@example.org"],
        ["config", "user.name", "d"],
        ["commit", "-q", "--allow-empty", "-m", "one"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    for env in ("test", "prod"):
        (env_dir / f"{env}.env").write_text(
            f"REPORTS_DIR={tmp_path / 'reports'}\nWEBHOOK_SECRET=hook-secret-1234\n"
        )
    return tmp_path, repo, {**os.environ, "CDTASKS_ENV_DIR": str(env_dir)}


def start(setup, **args) -> subprocess.Popen:
    tmp_path, repo, env = setup
    args = {"repo": str(repo), "branch": "main", "code": 0, "slow": 0, **args}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(Path(__file__).parent), json.dumps(args)],
        cwd=PROJECT_DIR,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def records_of(stdout: str) -> list[dict]:
    return json.loads(stdout.split("records ", 1)[1])


def test_once_exits_with_the_runs_code_and_writes_the_page(setup):
    tmp_path = setup[0]
    proc = start(setup, once=True, code=16)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 16, stderr
    assert ": fake run of " in stdout
    assert sorted(r["event"] for r in records_of(stdout)) == ["finished", "taken"]
    assert (tmp_path / "reports" / "releases.html").is_file()
    [saved] = (tmp_path / "reports" / "runs").iterdir()
    assert json.loads(saved.read_text())["code"] == 16


def test_a_missing_branch_is_bad_input(setup):
    proc = start(setup, once=True, branch="nope")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "error: no branch nope in" in stderr


def wait_for(proc: subprocess.Popen, text: str, stream: str = "stdout") -> None:
    deadline = time.monotonic() + 60
    for line in getattr(proc, stream):
        if text in line:
            return
        assert time.monotonic() < deadline
    raise AssertionError(f"{text!r} never said")


def test_sigterm_interrupts_the_run_in_progress_which_is_recorded(setup):
    proc = start(setup, slow=60, interval=1)
    wait_for(proc, "running")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    finished = [r for r in records_of(stdout) if r["event"] == "finished"]
    assert [(r["code"], r["result"]) for r in finished] == [(143, "interrupted")]


def test_ctrl_c_stops_a_watcher_waiting_for_pushes_and_its_server(setup):
    proc = start(setup, listen="127.0.0.1:0")
    wait_for(proc, ": ok (exit 0) fake run of", "stderr")
    # The branch read again after the run: it waits for a push, with no timeout.
    wait_for(proc, "already taken, waiting for the next commit", "stderr")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert sorted(r["event"] for r in records_of(stdout)) == ["finished", "taken"]


def test_once_json_is_one_document_on_stdout_and_the_runs_output_on_stderr(setup):
    proc = start(setup, once=True, code=16, json=True)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 16, stderr
    doc = json.loads(stdout.splitlines()[0])  # the next line is the test script's records
    assert doc["branch"] == "main" and doc["new"] is True and doc["code"] == 16
    assert doc["result"].endswith("fake run of " + records_of(stdout)[0]["commit"][:7])
    assert doc["reports"] == [] and "running" in stderr and "running" not in stdout


def test_json_goes_with_once_only(setup):
    proc = start(setup, json=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--json goes with --once" in stderr
