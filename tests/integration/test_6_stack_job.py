"""A release's job as a gate, against the real lab: the team's `migrate` (a replicated-job on
the team-api image) runs to completion on the release's new digest before api and worker are
updated; a migration that fails stops the release (exit 16) with the last lines of its output
and nothing else changed; one that hangs is stopped at JOB_TIMEOUT the same way, and left not
running (its previous spec back: the hanging task goes, the previous run completes again)."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from .conftest import TEAM, app_repository, deliver_team, git, on_manager, spec_images

JOB = "team_migrate"
SERVICES = ("team_api", "team_worker")
IMAGES = {"team_api": "team-api", "team_migrate": "team-api", "team_worker": "team-worker"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The team's repository: main, and branches whose migration fails or hangs."""
    work = app_repository(TEAM, tmp_path_factory.mktemp("team"), "the team's repository")
    migrate = work / "api" / "migrate.py"
    original = migrate.read_text()
    for branch, head in (
        (
            "failing",
            'print("migration 2: adding column owner", flush=True)\n'
            'raise SystemExit("migration 2 failed: column owner exists")\n',
        ),
        (
            "hanging",
            'import time as _t\nprint("migration 3: waiting for a table lock", flush=True)\n'
            "_t.sleep(3600)\n",
        ),
    ):
        git(work, "checkout", "--quiet", "-b", branch, "main")
        migrate.write_text(head + original)
        git(work, "commit", "--quiet", "-am", f"a migration that {branch.removesuffix('ing')}s")
    git(work, "checkout", "--quiet", "main")
    return work


def specs(team) -> dict[str, str]:
    return spec_images(team, (JOB, *SERVICES))


def tasks(team, service: str) -> list[dict]:
    ids = on_manager(team, "service", "ps", "-q", "--no-trunc", service).split()
    return json.loads(on_manager(team, "inspect", *ids)) if ids else []


def when(stamp: str) -> datetime:
    """An Engine API time (nanoseconds, trailing zeros cut) as a datetime."""
    return datetime.fromisoformat(re.sub(r"(\.\d{1,6})\d*", r"\1", stamp).replace("Z", "+00:00"))


def last_history(team) -> dict:
    return json.loads(team.inv("history", "--env", "test", "--json").stdout)["deployments"][-1]


def unchanged(team, before: dict[str, str]) -> None:
    """Every service of the release runs the image it ran before, the job's spec too, and no
    task of the job runs."""
    assert specs(team) == before
    for svc in SERVICES:
        running = [t for t in tasks(team, svc) if t["Status"]["State"] == "running"]
        assert running and {t["Spec"]["ContainerSpec"]["Image"] for t in running} == {before[svc]}
    assert not [t for t in tasks(team, JOB) if t["Status"]["State"] == "running"]


def test_the_job_runs_to_completion_on_the_new_digest_before_the_services(team, repo):
    proc = deliver_team(team, repo, "main", "2.1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    after = specs(team)
    for name, image in IMAGES.items():
        assert after[name].startswith(f"localhost:5000/{image}:2.1@sha256:"), after
    assert after[JOB] == after["team_api"]  # the same digest the API runs
    run = [t for t in tasks(team, JOB) if t["Spec"]["ContainerSpec"]["Image"] == after[JOB]]
    done = [t for t in run if t["Status"]["State"] == "complete"]
    assert done, run
    new_api = [
        t
        for t in tasks(team, "team_api")
        if t["Spec"]["ContainerSpec"]["Image"] == after["team_api"]
    ]
    assert new_api
    finished = max(when(t["Status"]["Timestamp"]) for t in done)
    assert finished <= min(when(t["CreatedAt"]) for t in new_api), (done, new_api)
    assert "team_migrate: job completed on" in proc.stderr
    last = last_history(team)
    assert last["result"] == "deployed"
    assert {p["service"]: p["image"] for p in last["services"]} == after
    team.job_release = after


def test_a_failing_job_stops_the_release_with_its_output_and_nothing_else_changes(team, repo):
    before = team.job_release
    proc = deliver_team(team, repo, "failing", "2.2")
    assert proc.returncode == 16, proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    assert "job team_migrate failed on localhost:5000/team-api:2.2@sha256:" in out
    assert "migration 2 failed: column owner exists" in out
    # the lines before the last, of its last attempt only (Swarm made 4: max_attempts 3)
    assert out.count("migration 2: adding column owner") == 1, out[-3000:]
    unchanged(team, before)
    # the undo put back the job alone, and names it alone: api and worker never changed
    assert f"rolled back on every replica: team_migrate runs {before[JOB]}" in out, out[-3000:]
    assert "team_api runs" not in out and "team_worker runs" not in out, out[-3000:]
    # the state line: the job (put back, run again on 2.1) ran to completion; no "no replica"
    assert re.search(
        r"^prod-like runs .*; team_migrate: job completed on localhost:5000/team-api:2\.1@",
        proc.stdout,
        re.M,
    ), proc.stdout[-3000:]
    last = last_history(team)
    assert last["result"].startswith("failed"), last
    parts = {p["service"]: p for p in last["services"]}
    assert (
        parts[JOB]["image"].startswith("localhost:5000/team-api:2.2@")
        and parts[JOB]["previous"] == before[JOB]
    )


def test_a_hanging_job_is_stopped_at_the_timeout_and_nothing_else_changes(team, repo):
    before = team.job_release
    proc = deliver_team(team, repo, "hanging", "2.3", {"CDTASKS_JOB_TIMEOUT": "20"})
    assert proc.returncode == 16, proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    assert "job team_migrate did not complete on localhost:5000/team-api:2.3@" in out
    assert "within 20s (JOB_TIMEOUT)" in out
    assert "migration 3: waiting for a table lock" in out
    assert re.search(r"team_migrate: job running \(\d+s\)", proc.stderr), proc.stderr[-2000:]
    unchanged(team, before)
    assert last_history(team)["result"].startswith("failed")
