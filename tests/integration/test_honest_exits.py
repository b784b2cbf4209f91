"""Honest exits where no cluster answers: an environment whose lab was never provisioned (a name
of this test only, so no machine of any lab matches), run as a user runs the tasks. No lab is
made; the Docker engine answers that there is no machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def inv(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDTASKS_", "DOCKER_"))}
    env.update(
        CDTASKS_LAB_NAME=f"cdtnone{uuid.uuid4().hex[:6]}",
        CDTASKS_STATE_DIR=str(tmp_path),
        CDTASKS_REPORTS_DIR=str(tmp_path / "reports"),
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=ROOT,
            env=env,
            text=True,
            capture_output=True,
            timeout=120,
        )

    run.state_dir = tmp_path
    run.lab = env["CDTASKS_LAB_NAME"]
    return run


def test_status_without_machines_exits_3_and_says_so(inv):
    proc = inv("status")
    assert proc.returncode == 3, proc
    assert "no machine runs in test, prod: `inv provision` creates them" in proc.stderr
    assert "no machine" not in proc.stdout  # no table of machines that are not there
    proc = inv("status", "--env", "prod", "--json")
    assert proc.returncode == 3 and "`inv provision --env prod`" in proc.stderr
    assert json.loads(proc.stdout)["prod"]["nodes"] == []


def test_history_from_the_local_log_says_so_and_how_old_it_is(inv):
    log = inv.state_dir / "history" / f"{inv.lab}-prod-go-demo.jsonl"
    proc = inv("history", "--env", "prod")
    assert proc.returncode == 0, proc
    assert "warning: prod's cluster did not answer; showing the local log" in proc.stderr
    assert "never written on this machine" in proc.stderr
    log.parent.mkdir()
    log.write_text(
        json.dumps(
            {
                "time": "2026-11-29T10:00:00Z",
                "user": "ci",
                "kind": "deploy",
                "version": "1.1",
                "image": "",
                "digest": "",
                "result": "deployed",
                "rolled_back": False,
                "seconds": 1.0,
            }
        )
        + "\n"
    )
    os.utime(log, (time.time() - 3 * 3600 - 300,) * 2)
    proc = inv("history", "--env", "prod", "--json")
    assert proc.returncode == 0, proc
    assert "last written 3h 5m ago" in proc.stderr and "this machine's runs only" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["source"].startswith(f"local log {log}, last written 3h 5m ago")
    assert [d["version"] for d in doc["deployments"]] == ["1.1"]


def test_report_into_a_directory_that_does_not_exist_is_refused(inv):
    missing = inv.state_dir / "no" / "such"
    proc = inv("report", "--output", str(missing / "page.html"))
    assert proc.returncode == 2, proc
    assert proc.stderr.strip() == (
        f"error: --output {missing / 'page.html'}: directory {missing} does not exist"
    )
    assert not missing.parent.exists()
    proc = inv("report", "--output", str(inv.state_dir))
    assert proc.returncode == 2 and "is a directory: name the file" in proc.stderr


def test_invokes_own_usage_errors_exit_1_as_the_readme_says(inv):
    proc = inv("deliver", "--no-such-flag")
    assert proc.returncode == 1 and "No idea what '--no-such-flag' is!" in proc.stderr
    readme = (ROOT / "README.md").read_text()
    assert "| 1 | a usage error Invoke found" in readme
