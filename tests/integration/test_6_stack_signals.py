"""A stack's release interrupted on the lab (the team's repository: two images released as one):
SIGTERM while its services roll out on prod-like, and while the production tests run against
them. The run exits 143 with no traceback, the version is not recorded as verified, the stack's
lock is free, and the test cluster's history says "interrupted" with the image each replica of
each service ran when the run stopped: never that the previous release still runs."""

from __future__ import annotations

import json
import signal

import pytest

from cdtasks import records
from cdtasks.cluster import Cluster
from cdtasks.rollout import delivered

from .conftest import TEAM, WIDE, Run, app_repository, manager_of

RELEASED = ("team_api", "team_worker")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return app_repository(TEAM, tmp_path_factory.mktemp("team"), "the team's repository")


@pytest.mark.parametrize(
    "where,started",
    [
        ("prodlike", r"team_\w+: \d+/\d+ replicas on the new image \(updating\)"),
        ("prodtest", r"production tests running against test"),
    ],
)
def test_a_stack_release_interrupted_is_recorded_with_what_runs(
    team, repo, tmp_path, where, started
):
    version = f"sig-{where}"
    run = Run(
        team,
        [
            "deliver",
            "--repo",
            str(repo),
            "--version",
            version,
            "--compose-file",
            "docker-compose-ci.yml",
        ],
        {"CDTASKS_REPORTS_DIR": str(tmp_path), **WIDE},
    )
    run.wait_for(rf"^\[deliver\] {started}$", timeout=900)
    run.signal(signal.SIGTERM)
    assert run.finish() == 143, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    report = json.loads((tmp_path / "deliver.json").read_text())
    assert {s["name"]: s["status"] for s in report["steps"]}[where] == "interrupted"
    manager = manager_of(Cluster.of(team.settings("test")).discover())
    assert version not in [d["version"] for d in delivered(manager, "team")]
    lock = records.lock_name("team")
    assert [
        c for c in manager.api.configs(filters={"name": lock}) if c["Spec"]["Name"] == lock
    ] == []
    last = json.loads(team.inv("history", "--env", "test", "--json").stdout)["deployments"][-1]
    assert last["version"] == version and last["result"] == "interrupted", last
    # the release's services (the team's migrate job among them since jobs gate releases)
    assert set(RELEASED) <= {p["service"] for p in last["services"]}, last
    # what each replica of each released service ran when the run stopped, on its node
    running = last["running"]
    for name in RELEASED:
        image = name.replace("_", "-")
        assert any(f"/{image}:" in line and " on swarm-test-" in line for line in running), running
