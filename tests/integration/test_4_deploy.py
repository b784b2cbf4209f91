"""`inv deploy --env prod`: exact-digest promotion, automatic rollback, locks, history.
Real lab, real CLI; the production cluster is driven exactly as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from cdtasks import records, rollout
from cdtasks.cluster import Cluster

from .conftest import manager_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STACK = "go-demo"  # STACK_NAME: the release's lock, history and delivered records
SERVICE = f"{STACK}_main"  # the Swarm service that runs the sample's image (demo/stack.yml)


def _manager(lab, env):
    return manager_of(Cluster.of(lab.settings(env)).discover())


def _task_images(manager, service=SERVICE):
    svc = manager.api.inspect_service(service)
    tasks = manager.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
    return [t["Spec"]["ContainerSpec"]["Image"] for t in tasks if t["Status"]["State"] == "running"]


@pytest.fixture(scope="module")
def delivered(stack, tmp_path_factory):
    """Version 2.0 delivered through prod-like, so production can take it."""
    reports = tmp_path_factory.mktemp("reports")
    stack.inv("deliver", "--version", "2.0", extra_env={"CDTASKS_REPORTS_DIR": str(reports)})
    record = [
        r for r in rollout.delivered(_manager(stack, "test"), STACK) if r["version"] == "2.0"
    ][-1]
    return stack, record, reports


def _release_plan(lab, *flags: str) -> dict:
    """`inv plan --version 2.0 --json` (production by default): the release's plan."""
    proc = lab.inv("plan", "--version", "2.0", "--json", *flags)
    return json.loads(proc.stdout)["prod"]


def test_deploy_promotes_the_digest_verified_on_prod_like(delivered):
    lab, record, reports = delivered
    # Before: the plan names the digest production runs and the one it will run.
    spec = _manager(lab, "prod").api.inspect_service(SERVICE)["Spec"]
    running = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    plan = lab.inv("plan", "--env", "prod", "--version", "2.0").stdout
    print(f"\n`inv plan --env prod --version 2.0` before the deploy:\n{plan}")
    assert record["digest"][:19] in plan and running.partition("@")[0] in plan, plan
    assert "update" in plan and "localhost:5000/go-demo:2.0" in plan, plan
    (svc,) = _release_plan(lab)["services"]
    assert svc["service"] == SERVICE and svc["changes"] and svc["replicas"] == 3
    assert svc["digest_after"] == record["digest"] and svc["before"] == running
    proc = lab.inv("deploy", "--env", "prod", extra_env={"CDTASKS_REPORTS_DIR": str(reports)})
    assert "deployed (2.0" in proc.stdout
    prod = _manager(lab, "prod")
    images = _task_images(prod)
    assert len(images) == 3, images
    # Every production replica runs exactly the digest that passed prod-like, pinned by digest.
    assert all(i.endswith("@" + record["digest"]) for i in images), images
    assert all(i.endswith("@" + record["digest"]) for i in _task_images(_manager(lab, "test")))
    hist = lab.inv("history", "--env", "prod").stdout
    assert "2.0" in hist and "deployed" in hist and record["digest"][:19] in hist
    # After: the same plan changes nothing, and the way back is what ran before.
    plan = lab.inv("plan", "--version", "2.0").stdout
    assert "runs 2.0 already: nothing to change" in plan, plan
    after = _release_plan(lab, "--env", "prod")
    assert not after["services"][0]["changes"] and after["rollback"] == {SERVICE: running}


def test_a_version_that_never_passed_prod_like_is_refused(delivered):
    lab, _, _ = delivered
    before = _task_images(_manager(lab, "prod"))
    proc = lab.inv("deploy", "--env", "prod", "--version", "9.9.9", check=False)
    assert proc.returncode == 2
    assert "9.9.9 never passed prod-like" in proc.stderr
    assert "Traceback" not in proc.stderr
    plan = lab.inv("plan", "--version", "9.9.9", check=False)
    assert plan.returncode == 2 and plan.stdout == "", plan.stdout
    line = plan.stderr.strip().splitlines()[-1]
    assert "9.9.9 never passed prod-like" in line and "--force" not in line, plan.stderr
    assert _task_images(_manager(lab, "prod")) == before


def _broken_version(lab, tmp_path, version: str) -> None:
    """Build and push (no prod-like) a version whose hello answers wrongly: healthy for Swarm,
    failing the production tests."""
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "demo"), repo / "demo")
    server = repo / "demo" / "app" / "server.py"
    text = server.read_text()
    assert "hello, world!" in text
    server.write_text(text.replace("hello, world!", "hello, broken!"))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "broken hello"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    lab.inv("checkout", "--repo", str(repo), "--version", version)
    lab.inv("build")
    lab.inv("publish")


def test_failing_production_tests_roll_back_automatically(delivered, tmp_path):
    lab, record, reports = delivered
    _broken_version(lab, tmp_path, "2.1-broken")
    good = _task_images(_manager(lab, "prod"))
    assert all(i.endswith(record["digest"]) for i in good)
    start = time.monotonic()
    proc = lab.inv(
        "deploy",
        "--env",
        "prod",
        "--version",
        "2.1-broken",
        "--force",
        check=False,
        extra_env={"CDTASKS_REPORTS_DIR": str(reports)},
    )
    print(f"\nfailing deploy + automatic rollback: {time.monotonic() - start:.1f}s")
    assert proc.returncode == 20, proc.stdout + proc.stderr
    assert "failed, rolled back" in proc.stdout
    # Back on the previous digest, every replica.
    images = _task_images(_manager(lab, "prod"))
    assert len(images) == 3 and all(i.endswith("@" + record["digest"]) for i in images), images
    entry = records.load(_manager(lab, "prod"), "history", STACK)[-1]
    assert entry["version"] == "2.1-broken" and entry["rolled_back"] is True
    assert entry["result"] == "failed, rolled back"
    assert entry["steps"] == {
        "rollout": "ok",
        "prodtest": "FAILED",
        "rollback": "ok",
        "prodtest-after-rollback": "ok",
    }


def test_a_second_deploy_is_refused_while_one_holds_the_lock(delivered):
    lab, _, _ = delivered
    prod = _manager(lab, "prod")
    held = records.Lock(prod, STACK, "2.0", holder={**records.identity(), "user": "alice"})
    with held.acquire(0):
        proc = lab.inv("deploy", "--env", "prod", check=False)
        assert proc.returncode == 22
        assert "being deployed by alice@" in proc.stderr and "2.0" in proc.stderr
    assert records.lock_state(prod, STACK) is None


def test_a_lock_whose_holder_died_expires(delivered):
    lab, _, _ = delivered
    prod = _manager(lab, "prod")
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = {**records.identity(), "user": "bob", "pid": dead.pid}
    records.Lock(prod, STACK, "2.0", holder=holder).acquire(0, heartbeat=False)
    proc = lab.inv("deploy", "--env", "prod", check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"taking over the lock of {STACK} from bob@" in proc.stderr
    assert records.lock_state(prod, STACK) is None


def test_rollback_by_hand_and_history(delivered, tmp_path):
    lab, record, _ = delivered
    lab.inv("rollback", "--env", "prod", "--version", "1.0")
    images = _task_images(_manager(lab, "prod"))
    assert all(":1.0@" in i for i in images) and len(images) == 3, images
    lab.inv("rollback", "--env", "prod")  # back to the last good deployment: 2.0
    images = _task_images(_manager(lab, "prod"))
    assert all(i.endswith("@" + record["digest"]) for i in images), images
    hist = lab.inv("history", "--env", "prod").stdout
    assert hist.count("rollback") >= 2 and "failed, rolled back" in hist


def test_bad_input_and_a_missing_service(delivered):
    lab, _, _ = delivered
    proc = lab.inv("deploy", "--env", "prod", "--version", "latest", check=False)
    assert proc.returncode == 2 and "latest" in proc.stderr
    # A stack whose services production lacks (a namespace `inv services` never made), given a
    # version that exists in the registry: named as missing before anything changes.
    proc = lab.inv(
        "deploy",
        "--env",
        "prod",
        "--version",
        "2.0",
        "--force",
        check=False,
        extra_env={"CDTASKS_STACK_NAME": "no-such-stack"},
    )
    assert proc.returncode == 4 and "inv services" in proc.stderr and "Traceback" not in proc.stderr
    assert "no-such-stack_main" in proc.stderr, proc.stderr
    assert records.lock_state(_manager(lab, "prod"), "no-such-stack") is None
