"""A release's job as a gate, against the real lab: the team's `migrate` (a replicated-job on
the team-api image) runs to completion on the release's new digest before api and worker are
updated; a migration that fails stops the release (exit 16) with the last lines of its output
and nothing else changed; one that hangs is stopped at JOB_TIMEOUT the same way, and left not
running (its previous spec back: the hanging task goes, the previous run completes again).
In production (`inv deploy --env prod`, the team's stack on the production cluster too): the
job runs first there too, and a release whose migration fails only on production's data
(having passed prod-like) is rolled back with nothing else changed (exit 20)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime

import pytest

from .conftest import (
    PROD_MANAGER,
    ROOT,
    TEAM,
    TEAM_ENV_DIR,
    TEST_MANAGER,
    WIDE,
    app_repository,
    deliver_team,
    git,
    on_manager,
    spec_images,
)

JOB = "team_migrate"
SERVICES = ("team_api", "team_worker")
IMAGES = {"team_api": "team-api", "team_migrate": "team-api", "team_worker": "team-worker"}
# The team's production: the lab's production cluster (env/prod.env's nodes), where the
# migration meets production's data (SCHEMA 2); one API replica keeps it light.
PROD_ENV = """NODES=swarm-1,swarm-2,swarm-3
NODE_LABELS=swarm-1:env=prod,swarm-2:env=prod,swarm-3:env=prod
CD_NODE=swarm-1
STACK_FILE=tests/apps/team-stack/stack.yml
STACK_NAME=team
STACK_VARIABLES=REGISTRY=localhost:5000 PLACEMENT='node.labels.env == prod' SCHEMA=2 API_REPLICAS=1
APP_IMAGE=team-api
COMPOSE_FILE=tests/apps/team-stack/docker-compose-ci.yml
PROXY_PORT=8070
"""


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
        (
            "prodfailing",  # passes on prod-like (SCHEMA 1), fails on production's data
            'import os as _os\nprint("migration 4: moving the orders", flush=True)\n'
            'if _os.environ["SCHEMA"] == "2":\n'
            '    raise SystemExit("migration 4 failed: production has orders without owner")\n',
        ),
    ):
        git(work, "checkout", "--quiet", "-b", branch, "main")
        migrate.write_text(head + original)
        git(work, "commit", "--quiet", "-am", f"a migration that {branch.removesuffix('ing')}s")
    git(work, "checkout", "--quiet", "main")
    return work


def specs(team, node: str = TEST_MANAGER) -> dict[str, str]:
    return spec_images(team, (JOB, *SERVICES), node)


def tasks(team, service: str, node: str = TEST_MANAGER) -> list[dict]:
    ids = on_manager(team, "service", "ps", "-q", "--no-trunc", service, node=node).split()
    return json.loads(on_manager(team, "inspect", *ids, node=node)) if ids else []


def when(stamp: str) -> datetime:
    """An Engine API time (nanoseconds, trailing zeros cut) as a datetime."""
    return datetime.fromisoformat(re.sub(r"(\.\d{1,6})\d*", r"\1", stamp).replace("Z", "+00:00"))


def last_history(team) -> dict:
    return json.loads(team.inv("history", "--env", "test", "--json").stdout)["deployments"][-1]


def failure_tail(stdout: str, step: str, prefix: str) -> list[str]:
    """The lines starting with `prefix` that the report printed after `STEP FAILED: ...` (the
    step's last output lines), sorted: a task's stdout and stderr lines may come swapped."""
    after = stdout.partition(f"\n{step} FAILED: ")[2].splitlines()[1:]
    return sorted(line for line in after if line.startswith(prefix))


def unchanged(team, before: dict[str, str], node: str = TEST_MANAGER) -> None:
    """Every service of the release runs the image it ran before, the job's spec too, and no
    task of the job runs (on the test cluster, or the cluster whose manager is `node`)."""
    assert specs(team, node) == before
    for svc in SERVICES:
        running = [t for t in tasks(team, svc, node) if t["Status"]["State"] == "running"]
        assert running and {t["Spec"]["ContainerSpec"]["Image"] for t in running} == {before[svc]}
    assert not [t for t in tasks(team, JOB, node) if t["Status"]["State"] == "running"]


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
    assert failure_tail(proc.stdout, "prodlike", "migration 2") == [
        "migration 2 failed: column owner exists",
        "migration 2: adding column owner",
    ], proc.stdout[-3000:]
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


@pytest.fixture(scope="module")
def production(team, tmp_path_factory):
    """The lab with an env directory holding the team's test.env and PROD_ENV, the team's
    stack made on the production cluster from nothing (`inv services --env prod`); the stack
    goes from there afterwards (the later tests' production runs the book's services)."""
    env_dir = tmp_path_factory.mktemp("team-env")
    shutil.copy(ROOT / TEAM_ENV_DIR / "test.env", env_dir)
    (env_dir / "prod.env").write_text(PROD_ENV)
    lab = type(team)(team.name, team.state_dir, {**team.env, "CDTASKS_ENV_DIR": str(env_dir)})
    started = time.monotonic()
    lab.inv("services", "--env", "prod", extra_env=WIDE)
    print(f"inv services --env prod from nothing: {time.monotonic() - started:.1f}s")
    yield lab
    on_manager(lab, "stack", "rm", "team", node=PROD_MANAGER, check=False)


def deploy(lab, *flags: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    proc = lab.inv("deploy", "--env", "prod", *flags, check=False, timeout=900, extra_env=WIDE)
    print(
        f"\n`inv deploy --env prod {' '.join(flags)}`: exit {proc.returncode} after "
        f"{time.monotonic() - started:.1f}s\n{proc.stdout.strip()}\n{proc.stderr[-3000:]}"
    )
    return proc


def prod_history(lab) -> dict:
    return json.loads(lab.inv("history", "--env", "prod", "--json").stdout)["deployments"][-1]


def test_in_production_the_job_runs_first_on_the_release_that_passed_prod_like(team, production):
    proc = deploy(production, "--version", "2.1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    after = specs(production, PROD_MANAGER)
    assert after == team.job_release, after  # the digests verified on prod-like
    assert "team_migrate: job completed on" in proc.stderr
    done = [
        t
        for t in tasks(production, JOB, PROD_MANAGER)
        if t["Spec"]["ContainerSpec"]["Image"] == after[JOB] and t["Status"]["State"] == "complete"
    ]
    assert done
    assert prod_history(production)["result"] == "deployed"


def test_a_job_failing_in_production_is_rolled_back_and_nothing_else_changes(production, repo):
    proc = deliver_team(production, repo, "prodfailing", "2.4")  # prod-like: SCHEMA 1, it passes
    assert proc.returncode == 0, proc.stdout[-3000:]
    before = specs(production, PROD_MANAGER)
    proc = deploy(production)  # the last version that passed prod-like: 2.4
    assert proc.returncode == 20, proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    assert "job team_migrate failed on localhost:5000/team-api:2.4@sha256:" in out
    assert "migration 4 failed: production has orders without owner" in out
    assert failure_tail(proc.stdout, "rollout", "migration 4") == [  # its last attempt's
        "migration 4 failed: production has orders without owner",
        "migration 4: moving the orders",
    ], proc.stdout[-3000:]
    # the rollback put back the job alone (api and worker never changed), and says so
    assert f"team_migrate on prod: every replica runs {before[JOB]}" in out, out[-3000:]
    unchanged(production, before, PROD_MANAGER)
    last = prod_history(production)
    assert last["result"] == "failed, rolled back" and last["version"] == "2.4", last
    assert last["steps"] == {
        "rollout": "FAILED",
        "rollback": "ok",
        "prodtest-after-rollback": "ok",
    }, last
