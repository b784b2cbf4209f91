"""Releases of a stack, against the real lab: the team's repository (tests/apps/team-stack, its
delivery compose file `docker-compose-ci.yml` building team-api as `app` and team-worker) is
delivered as one release: api, worker and the migration job (on the API's image) move together
to the new digests on prod-like (the store and the proxy untouched); a release whose worker fails
only under Swarm (it exits at once; compose staging never runs it) brings api and the job back
too (exit 16, the history names each, before and after); `inv rollback` moves them back to the
release before. The job as a gate: test_6_stack_job."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import TEAM, WIDE, app_repository, deliver_team, git, spec_images

RELEASED = ("team_api", "team_migrate", "team_worker")
UNTOUCHED = ("team_store", "team_proxy")
IMAGES = {"team_api": "team-api", "team_migrate": "team-api", "team_worker": "team-worker"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The team's repository as a git repository of its own: main (version 1.1 of both
    images), and branch broken whose worker exits as soon as it starts."""
    work = app_repository(TEAM, tmp_path_factory.mktemp("team"), "the team's repository")
    git(work, "checkout", "--quiet", "-b", "broken")
    worker = work / "worker" / "worker.py"
    worker.write_text('raise SystemExit("worker: broken on purpose")\n' + worker.read_text())
    git(work, "commit", "--quiet", "-am", "a worker that never starts")
    git(work, "checkout", "--quiet", "main")
    return work


def specs(team) -> dict[str, str]:
    return spec_images(team, RELEASED + UNTOUCHED)


def deliver(team, repo, ref: str, version: str):
    return deliver_team(team, repo, ref, version)


def history(team) -> list[dict]:
    return json.loads(team.inv("history", "--env", "test", "--json").stdout)["deployments"]


def test_a_release_updates_api_and_worker_together(team, repo, tmp_path):
    before = specs(team)
    proc = deliver(team, repo, "main", "1.1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    # The error budget read the proxy's backend of the released api (backend `api`).
    assert "errors not measured" not in proc.stdout, proc.stdout[-3000:]
    assert re.search(r"\d+ requests, \d+ errors", proc.stdout), proc.stdout[-3000:]
    after = specs(team)
    for name in RELEASED:
        image = f"localhost:5000/{IMAGES[name]}:1.1@sha256:"
        assert after[name].startswith(image), after
    for name in UNTOUCHED:
        assert after[name] == before[name], (name, before[name], after[name])
    last = history(team)[-1]
    assert last["result"] == "deployed" and last["service"] == "team"
    assert {p["service"]: p["image"] for p in last["services"]} == {n: after[n] for n in RELEASED}
    # The release page: each service of the release with its digest, running and recorded.
    out = tmp_path / "releases.html"
    team.inv("report", "--env", "test", "--prod-env", "test", "--output", str(out))
    html = out.read_text()
    for name in RELEASED:
        digest = after[name].partition("@")[2][:19]
        assert f"{name} {digest}" in html, (name, digest)  # the release's row, each service
        assert f"{name} from " in html  # its replicas over time
    team.release_1_1 = {n: after[n] for n in RELEASED}
    team.release_1_0 = {n: before[n] for n in RELEASED}
    # The release owns those images now: the stack file's 1.0 is no drift, nothing to update.
    # (A config generation that only the services' previous specs used before the release may
    # now be retired: housekeeping, not a service change.)
    plan = json.loads(team.inv("plan", "--env", "test", "--json", extra_env=WIDE).stdout)
    assert [c for c in plan["test"]["changes"] if c["action"] != "retire"] == [], plan
    team.inv("services", "--env", "test", "--update", extra_env=WIDE)
    assert specs(team) == after
    check = team.inv("services", "--env", "test", "--check", check=False, extra_env=WIDE)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_worker_failing_under_swarm_brings_api_back_too(team, repo):
    proc = deliver(team, repo, "broken", "1.2")
    assert proc.returncode == 16, proc.stdout[-3000:]
    assert "rolling update of team_worker ended paused" in proc.stdout + proc.stderr
    now = specs(team)
    assert {n: now[n] for n in RELEASED} == team.release_1_1
    last = history(team)[-1]
    assert last["result"] == "failed, rolled back", last
    parts = {p["service"]: p for p in last["services"]}
    assert sorted(parts) == list(RELEASED)
    for name in RELEASED:
        assert parts[name]["previous"] == team.release_1_1[name]
        assert parts[name]["image"].startswith(f"localhost:5000/{IMAGES[name]}:1.2@")


def test_rollback_moves_both_back(team):
    proc = team.inv("rollback", "--env", "test", "--test-env", "test", check=False, extra_env=WIDE)
    print(proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    now = specs(team)
    assert {n: now[n] for n in RELEASED} == team.release_1_0
    last = history(team)[-1]
    assert last["kind"] == "rollback" and last["result"] == "rolled back", last
    assert {p["service"]: p["image"] for p in last["services"]} == team.release_1_0
