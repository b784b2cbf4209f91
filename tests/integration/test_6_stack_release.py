"""Releases of a stack, against the real lab: the team's repository (tests/apps/team-stack, its
delivery compose file `docker-compose-ci.yml` building team-api as `app` and team-worker) is
delivered as one release: api, worker and the migration job (on the API's image) move together
to the new digests on prod-like (the store and the proxy untouched); a release whose worker fails
only under Swarm (it exits at once; compose staging never runs it) brings api and the job back
too (exit 16, the history names each, before and after), so does one whose API Swarm rolled back
by itself (its failure_action), and so does a release whose production tests fail (exit 17); `inv rollback` moves them back to the release before. The job as a gate:
test_6_stack_job."""

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
    images), branch broken whose worker exits as soon as it starts, and branch prodfail whose
    production tests fail (its staging tests pass: the same checks against staging-dep)."""
    work = app_repository(TEAM, tmp_path_factory.mktemp("team"), "the team's repository")
    git(work, "checkout", "--quiet", "-b", "broken")
    worker = work / "worker" / "worker.py"
    worker.write_text('raise SystemExit("worker: broken on purpose")\n' + worker.read_text())
    git(work, "commit", "--quiet", "-am", "a worker that never starts")
    git(work, "checkout", "--quiet", "-b", "swarmrollback", "main")
    server = work / "api" / "server.py"
    server.write_text(
        "import os\n"
        'if os.path.exists("/run/secrets/api_token"):  # only under Swarm: staging has no secret\n'
        '    raise SystemExit("api: broken under Swarm on purpose")\n' + server.read_text()
    )
    git(work, "commit", "--quiet", "-am", "an API that exits at once where its secret is")
    git(work, "checkout", "--quiet", "-b", "prodfail", "main")
    (work / "checks" / "functional_production.py").write_text(
        "import os\nimport unittest\n\n\n"
        "class Production(unittest.TestCase):\n"
        "    def test_fails_outside_staging_on_purpose(self):\n"
        '        self.assertTrue(os.environ["HOST_IP"].startswith("staging-dep"), "prod fails")\n'
    )
    git(work, "add", "checks/functional_production.py")
    git(work, "commit", "--quiet", "-m", "production tests that fail (staging passes)")
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


def all_back_on_1_1(team, version: str) -> None:
    """Every service of the failed release `version` runs 1.1 again, and the history's entry
    names each with its image before (1.1) and after (`version`)."""
    now = specs(team)
    assert {n: now[n] for n in RELEASED} == team.release_1_1
    last = history(team)[-1]
    assert last["result"] == "failed, rolled back" and last["version"] == version, last
    parts = {p["service"]: p for p in last["services"]}
    assert sorted(parts) == list(RELEASED)
    for name in RELEASED:
        assert parts[name]["previous"] == team.release_1_1[name]
        assert parts[name]["image"].startswith(f"localhost:5000/{IMAGES[name]}:{version}@")


def test_a_worker_failing_under_swarm_brings_api_back_too(team, repo):
    proc = deliver(team, repo, "broken", "1.2")
    assert proc.returncode == 16, proc.stdout[-3000:]
    assert "rolling update of team_worker ended paused" in proc.stdout + proc.stderr
    all_back_on_1_1(team, "1.2")


def test_a_rollback_swarm_did_by_itself_is_a_failure_and_brings_the_worker_back(team, repo):
    """The API's update_config says failure_action: rollback. Its new tasks die under Swarm only
    (staging passes), so Swarm rolls the API back by itself, and `docker stack deploy` would
    exit 0 (docker/cli#6752): here the release failed (16), and the worker and the job, whose
    updates went well, come back to 1.1 too."""
    proc = deliver(team, repo, "swarmrollback", "1.4")
    assert proc.returncode == 16, proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    assert re.search(r"rolling update of team_api ended rollback_\w+: Swarm rolled back to", out)
    all_back_on_1_1(team, "1.4")


def test_failing_production_tests_bring_every_service_back(team, repo):
    """The release rolls out (the job first), then the production tests fail: every member goes
    back to 1.1 (exit 17, prodtest's), the step says so and the history names each with its
    image before and after."""
    proc = deliver(team, repo, "prodfail", "1.3")
    assert proc.returncode == 17, proc.stdout[-3000:]
    assert "1.3 is not recorded as verified; rolled back on every replica" in proc.stdout
    all_back_on_1_1(team, "1.3")


def test_rollback_moves_both_back(team):
    proc = team.inv("rollback", "--env", "test", "--test-env", "test", check=False, extra_env=WIDE)
    print(proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    now = specs(team)
    assert {n: now[n] for n in RELEASED} == team.release_1_0
    last = history(team)[-1]
    assert last["kind"] == "rollback" and last["result"] == "rolled back", last
    assert {p["service"]: p["image"] for p in last["services"]} == team.release_1_0
