"""Faults on the real lab: runs interrupted (Ctrl-C to the process group as a terminal sends it,
SIGTERM to the process as a CI server sends it, SIGKILL), nodes and engines killed under a
running release. Each case checks the end state it must leave: the exit code, nothing left on
the CD node (compose projects, checkouts), no lock held, and records that say what really runs.

The README's "What happens when..." table is written from these cases.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

from cdtasks import deployment, records
from cdtasks.cluster import Cluster
from cdtasks.rollout import delivered

from .conftest import Run, git, manager_of, sample_repository

ROOT = Path(__file__).resolve().parents[2]
STACK = "go-demo"  # STACK_NAME: the release's lock and delivered records
SERVICE = f"{STACK}_main"  # the Swarm service that runs the sample's image (demo/stack.yml)
CD_NODE = "swarm-test-1"
STEPS = ("checkout", "unit", "build", "staging", "publish", "prodlike", "prodtest")
COMPOSE_LABEL = "com.docker.compose.project"


# -- helpers ------------------------------------------------------------------------------------
def manager(lab, env="test"):
    return manager_of(Cluster.of(lab.settings(env)).discover())


def compose_leftovers(lab) -> list[str]:
    cd = Cluster.of(lab.settings("test")).discover().client(CD_NODE)
    flt = {"label": COMPOSE_LABEL}
    return [f"container {c.name}" for c in cd.containers.list(all=True, filters=flt)] + [
        f"network {n.name}" for n in cd.networks.list(filters=flt)
    ]


_EARLIER: set[str] = set()  # checkouts there before this test (step-by-step runs keep theirs)


@pytest.fixture(autouse=True)
def _earlier_checkouts(lab):
    # Per test: one test's leftover fails that test, not every test after it.
    _EARLIER.clear()
    _EARLIER.update(_all_checkouts(lab))


def _all_checkouts(lab) -> list[str]:
    ws = lab.settings("test").delivery.workspace_dir
    return sorted(p.name for p in ws.iterdir() if p.is_dir()) if ws.exists() else []


def checkouts(lab) -> list[str]:
    """Checkouts made since this test began and still in the workspace."""
    return [name for name in _all_checkouts(lab) if name not in _EARLIER]


def lock_holder(lab, env="test"):
    mgr = manager(lab, env)
    found = mgr.api.configs(filters={"name": records.lock_name(STACK)})
    return [c for c in found if c["Spec"]["Name"] == records.lock_name(STACK)]


def spec_image(lab, env="test") -> str:
    return manager(lab, env).api.inspect_service(SERVICE)["Spec"]["TaskTemplate"]["ContainerSpec"][
        "Image"
    ]


def running_images(lab, env) -> list[str]:
    mgr = manager(lab, env)
    svc = mgr.api.inspect_service(SERVICE)
    tasks = mgr.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
    return sorted(
        t["Spec"]["ContainerSpec"]["Image"] for t in tasks if t["Status"]["State"] == "running"
    )


def history(lab, env="prod") -> list[dict]:
    """The history `inv history` shows (runs merged), read through the library."""
    return deployment.history(lab.settings(env))[0]


def wait_for_replicas(lab, env, timeout=180):
    """Every replica of the service runs the spec's image (after a fault, Swarm settles)."""
    deadline = time.monotonic() + timeout
    while True:
        want, images = spec_image(lab, env), running_images(lab, env)
        if images and all(i == want for i in images):
            return want
        if time.monotonic() > deadline:
            raise AssertionError(f"{env}: {images} never all on {want}")
        time.sleep(1)


def assert_clean(lab):
    assert compose_leftovers(lab) == []
    assert checkouts(lab) == []
    assert lock_holder(lab, "test") == []


@pytest.fixture(scope="module")
def repo(stack, tmp_path_factory) -> str:
    """The sample at HEAD as a repository of its own, plus a commit whose image fails its
    Swarm health check (it passes unit and staging tests, which do not wait for health)."""
    return str(sample_repository(tmp_path_factory.mktemp("fault-repo"), "demo"))


@pytest.fixture(scope="module")
def sick_repo(repo, tmp_path_factory) -> str:
    """A commit of the sample whose health check always fails."""
    path = Path(repo)
    git(path, "checkout", "--quiet", "-b", "sick")
    check = path / "demo/app/healthcheck.py"
    check.write_text(
        "import sys\nprint('DELIBERATELY-UNHEALTHY: /demo/hello not checked')\nsys.exit(1)\n"
    )
    git(path, "commit", "--quiet", "-am", "a health check that always fails")
    git(path, "checkout", "--quiet", "main")
    return "sick"


@pytest.fixture(scope="module")
def silent_repo(repo) -> str:
    """A commit of the sample whose health check fails and prints nothing (`CMD false`)."""
    path = Path(repo)
    git(path, "checkout", "--quiet", "-b", "silent", "main")
    dockerfile = path / "demo/Dockerfile"
    dockerfile.write_text(
        re.sub(r"(?m)^(HEALTHCHECK .*) CMD .*$", r"\1 CMD false", dockerfile.read_text())
    )
    git(path, "commit", "--quiet", "-am", "a health check that fails silently")
    git(path, "checkout", "--quiet", "main")
    return "silent"


def deliver(lab, repo, version, tmp_path, *extra) -> Run:
    return Run(
        lab,
        ["deliver", "--repo", repo, "--version", version, *extra],
        {"CDTASKS_REPORTS_DIR": str(tmp_path)},
    )


# -- deliver interrupted in every step ----------------------------------------------------------
# The progress line a step says when its work begins (checkout: its start line): a signal
# after it lands inside that work, or later if the work is short.
WORK_STARTED = {
    "checkout": r"checkout \.\.\.",
    "unit": r"unit tests running",
    "build": r"building \S+(, \S+)*",
    "staging": r"staging tests running",
    "publish": r"pushing \S+",
    "prodlike": r"\S+: \d+/\d+ replicas on the new image \(updating\)",
    "rollout": r"\S+: \d+/\d+ replicas on the new image \(updating\)",
    "prodtest": r"production tests running against \S+",
}
# In a whole run the build runs beside the unit tests: a signal then stops the unit tests (the
# build beside them is undone).
STARTS_WITH = {"build": "unit"}


def inside(run: Run, title: str, step: str) -> str:
    """Wait until `step` of the run (`[title]` lines) says its work began."""
    return run.wait_for(rf"^\[{title}\] {WORK_STARTED[step]}$")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
@pytest.mark.parametrize("step", STEPS)
def test_deliver_interrupted_in_each_step_leaves_nothing_and_claims_nothing(
    stack, repo, tmp_path, step, how
):
    version = f"int-{step}-{how}"
    before = spec_image(stack)
    run = deliver(stack, repo, version, tmp_path)
    inside(run, "deliver", step)
    run.ctrl_c() if how == "ctrl-c" else run.signal(signal.SIGTERM)
    code = run.finish()
    assert code == (130 if how == "ctrl-c" else 143), run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "interrupted" in run.stdout
    report = json.loads((tmp_path / "deliver.json").read_text())
    statuses = {r["name"]: r for r in report["steps"]}
    stopped = next(n for n in STEPS if statuses[n]["status"] != "ok")
    # A short step may end before the signal lands: the run then stops in a later one.
    assert STEPS.index(stopped) >= STEPS.index(STARTS_WITH.get(step, step)), statuses
    assert statuses[stopped]["status"] == "interrupted", statuses
    assert "interrupted" in statuses[stopped]["detail"]
    assert all(statuses[n]["status"] == "skipped" for n in STEPS[STEPS.index(stopped) + 1 :])
    assert_clean(stack)
    # The version is never recorded as verified, and prod-like runs one image on every replica.
    assert version not in [d["version"] for d in delivered(manager(stack), STACK)]
    now = wait_for_replicas(stack, "test")
    if STEPS.index(stopped) < STEPS.index("prodlike"):
        assert now == before


# -- the prod-like gate cannot be skipped ----------------------------------------------------------
def test_prodtest_without_prodlike_is_refused_and_records_nothing(stack, repo, tmp_path):
    """`inv publish` then `inv prodtest` alone: prod-like still runs the old version, so the
    tests would verify it, not the new one."""
    env = {"CDTASKS_REPORTS_DIR": str(tmp_path)}
    before = spec_image(stack)
    stack.inv("checkout", "--repo", repo, "--version", "gate-1", extra_env=env)
    try:
        for step in ("unit", "build", "staging", "publish"):
            stack.inv(step, extra_env=env)
        proc = stack.inv("prodtest", check=False, extra_env=env)
    finally:
        workdir = json.loads(
            next(stack.settings("test").delivery.workspace_dir.glob("*.release.json")).read_text()
        )["workdir"]
        subprocess.run(["rm", "-rf", workdir], check=False)
    assert proc.returncode == 17, proc.stdout + proc.stderr
    assert f"runs {before}, not " in proc.stdout + proc.stderr  # names what runs
    assert "gate-1 is not recorded as verified" in proc.stdout + proc.stderr
    assert "gate-1" not in [d["version"] for d in delivered(manager(stack), STACK)]
    assert spec_image(stack) == before
    assert lock_holder(stack, "test") == []


# -- a failure on prod-like leaves it as it was ---------------------------------------------------
def test_failed_health_check_on_prod_like_rolls_back_and_names_the_check(
    stack, repo, sick_repo, tmp_path
):
    before = wait_for_replicas(stack, "test")
    run = deliver(stack, repo, "sick-1", tmp_path, "--ref", sick_repo)
    code = run.finish()
    assert code == 16, run.stdout
    assert "DELIBERATELY-UNHEALTHY" in run.stdout + run.stderr  # the check's own output
    assert "no task reported an error" not in run.stdout
    assert re.search(
        r"health check failed: .*exit code 1, \d+ failed probes? in a row", run.stdout
    ), run.stdout
    # Back on the image it ran before, on every replica, and the summary says so.
    assert wait_for_replicas(stack, "test") == before
    assert f"prod-like runs {before}" in run.stdout
    assert_clean(stack)


def test_a_health_check_that_prints_nothing_is_named_by_command_and_exit_code(
    stack, repo, silent_repo, tmp_path
):
    before = wait_for_replicas(stack, "test")
    run = deliver(stack, repo, "silent-1", tmp_path, "--ref", silent_repo)
    code = run.finish()
    assert code == 16, run.stdout
    assert "no task reported an error" not in run.stdout
    assert re.search(
        r"health check failed: no output \(`false`: exit code 1, \d+ failed "
        r"probes? in a row\)",
        run.stdout,
    ), run.stdout
    assert wait_for_replicas(stack, "test") == before
    assert_clean(stack)


# -- deploy interrupted, killed -------------------------------------------------------------------
@pytest.fixture(scope="module")
def verified(stack, repo, tmp_path_factory) -> str:
    """A version delivered through prod-like that production does not run yet."""
    reports = tmp_path_factory.mktemp("reports")
    stack.inv(
        "deliver",
        "--repo",
        repo,
        "--version",
        "faults-1",
        extra_env={"CDTASKS_REPORTS_DIR": str(reports)},
    )
    return "faults-1"


def _deploy(lab, version, tmp_path, *extra) -> Run:
    return Run(
        lab,
        ["deploy", "--env", "prod", "--version", version, *extra],
        {"CDTASKS_REPORTS_DIR": str(tmp_path)},
    )


def _fresh_version(lab, repo, tmp_path, version) -> str:
    lab.inv(
        "deliver",
        "--repo",
        repo,
        "--version",
        version,
        extra_env={"CDTASKS_REPORTS_DIR": str(tmp_path)},
    )
    return version


@pytest.mark.parametrize(
    "where,how", [("rollout", "ctrl-c"), ("rollout", "sigterm"), ("prodtest", "sigterm")]
)
def test_deploy_interrupted_records_interrupted_and_what_runs(stack, repo, tmp_path, where, how):
    version = _fresh_version(stack, repo, tmp_path, f"dep-{where}-{how}")
    run = _deploy(stack, version, tmp_path)
    inside(run, "deploy", where)
    run.ctrl_c() if how == "ctrl-c" else run.signal(signal.SIGTERM)
    code = run.finish()
    assert code == (130 if how == "ctrl-c" else 143)
    assert "Traceback" not in run.stderr
    last = history(stack)[-1]
    assert last["version"] == version
    assert last["result"] == "interrupted", last
    assert last["running"], last  # the image each replica ran when the run stopped
    assert lock_holder(stack, "prod") == []
    # An interrupted deployment is never a target of `inv rollback`.
    assert "deployed" not in run.stdout


def test_deploy_killed_mid_rollout_is_recorded_unfinished_and_the_next_recovers(
    stack, repo, tmp_path
):
    version = _fresh_version(stack, repo, tmp_path, "dep-killed")
    run = _deploy(stack, version, tmp_path)
    inside(run, "deploy", "rollout")
    run.signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    assert lock_holder(stack, "prod")  # nobody could release it
    # The next deployment recovers the lock of the dead holder at once, not after its expiry.
    started = time.monotonic()
    again = stack.inv("deploy", "--env", "prod", "--version", version, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.monotonic() - started < 120
    rows = history(stack)
    killed = [r for r in rows if r["version"] == version and r["result"] != "deployed"]
    assert killed and killed[0]["result"] == "unfinished", rows[-3:]
    assert rows[-1]["version"] == version and rows[-1]["result"] == "deployed"
    assert lock_holder(stack, "prod") == []


@pytest.mark.parametrize("victim", ["swarm-3", "swarm-1"])  # a manager; the leader
def test_deploy_survives_a_production_node_killed_mid_rollout(stack, repo, tmp_path, victim):
    version = _fresh_version(stack, repo, tmp_path, f"dep-kill-{victim}")
    run = _deploy(stack, version, tmp_path)
    inside(run, "deploy", "rollout")
    docker.from_env().containers.get(stack.container(victim)).kill()
    code = run.finish(900)
    try:
        assert "Traceback" not in run.stderr
        last = history(stack)[-1]
        assert last["version"] == version
        if code == 0:
            assert last["result"] == "deployed"
            assert all(i.endswith(last["digest"]) for i in running_images(stack, "prod"))
        else:
            assert code in (20, 21), run.stdout
            assert last["result"].startswith("failed")
        assert lock_holder(stack, "prod") == []
    finally:
        stack.inv("provision", "--env", "prod")  # repairs the node for the tests after this one
    wait_for_replicas(stack, "prod")


# -- the registry and the CD node's engine under a delivery ---------------------------------------
def test_registry_task_killed_during_publish(stack, repo, tmp_path):
    before = spec_image(stack)
    run = deliver(stack, repo, "reg-killed", tmp_path)
    run.wait_for(r"^\[deliver\] publish \.\.\.$")
    cd = Cluster.of(stack.settings("test")).discover().client(CD_NODE)
    for c in cd.containers.list(filters={"label": "com.docker.swarm.service.name=registry"}):
        c.kill()
    code = run.finish()
    assert "Traceback" not in run.stderr
    assert code in (0, 15), run.stdout  # pushed after Swarm restarted it, or failed at publish
    if code == 15:
        assert "reg-killed" not in [d["version"] for d in delivered(manager(stack), STACK)]
        assert spec_image(stack) == before
    assert_clean(stack)
    wait_for_replicas(stack, "test")


def test_cd_engine_restarted_during_staging(stack, repo, tmp_path):
    before = spec_image(stack)
    run = deliver(stack, repo, "engine-restart", tmp_path)
    # Once staging-dep is being started (its tests follow). Killed at once and started again:
    # on a quiet machine staging's tests take only seconds, a graceful stop could let them
    # finish first.
    run.wait_for(r"^\[deliver\] starting staging-dep$")
    docker.from_env().containers.get(stack.container(CD_NODE)).restart(timeout=0)
    code = run.finish()
    try:
        assert "Traceback" not in run.stderr
        assert code == 14, run.stdout
        assert spec_image(stack) == before
        assert checkouts(stack) == []
        assert lock_holder(stack, "test") == []
    finally:
        stack.inv("provision", "--env", "test")
    assert compose_leftovers(stack) == []


# -- the clean-up after a signal is bounded -------------------------------------------------------
# Last in this file: one case freezes the CD node's engine.
SLEEPING_UNIT = 'command: ["sleep", "600"]'  # PID 1 ignores SIGTERM: `down` must kill it


@pytest.fixture(scope="module")
def slow_repo(stack, tmp_path_factory) -> str:
    """The sample whose unit tests and build (beside them) each take ten minutes."""
    path = sample_repository(tmp_path_factory.mktemp("slow-repo"))
    compose = path / "demo/docker-compose-test-local.yml"
    unit_cmd = "command: python3 -m unittest discover -s tests/unit -t . -v"
    assert unit_cmd in compose.read_text()
    compose.write_text(compose.read_text().replace(unit_cmd, SLEEPING_UNIT))
    dockerfile = path / "demo/Dockerfile"
    dockerfile.write_text(
        dockerfile.read_text().replace("COPY app/", "RUN sleep 600\nCOPY app/", 1)
    )
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "unit tests and build that take ten minutes")
    return str(path)


def _remove_leftovers(lab, before: list[str]) -> None:
    """What a run stopped at once leaves (its compose project, its checkout), removed by hand
    so that the next cases start clean."""
    cd = Cluster.of(lab.settings("test")).discover().client(CD_NODE)
    flt = {"label": COMPOSE_LABEL}
    for c in cd.containers.list(all=True, filters=flt):
        c.remove(force=True)
    for n in cd.networks.list(filters=flt):
        n.remove()
    ws = lab.settings("test").delivery.workspace_dir
    for name in set(checkouts(lab)) - set(before):
        subprocess.run(["rm", "-rf", str(ws / name)], check=False)


def _long_unit(lab, slow_repo, tmp_path, version) -> Run:
    """A delivery of `slow_repo` once its unit container runs and the build beside it began."""
    run = deliver(lab, slow_repo, version, tmp_path)
    inside(run, "deliver", "build")
    inside(run, "deliver", "unit")
    cd = Cluster.of(lab.settings("test")).discover().client(CD_NODE)
    deadline = time.monotonic() + 300
    while not [
        c
        for c in cd.containers.list(
            filters={"label": "com.docker.compose.service=unit", "status": "running"}
        )
        if c.labels.get(COMPOSE_LABEL, "").startswith(f"{STACK}-{version}-")
    ]:
        assert run.proc.poll() is None and time.monotonic() < deadline, run.stderr[-2000:]
        time.sleep(0.5)
    return run


def _sigterm(run: Run, timeout: float) -> tuple[int, float]:
    """SIGTERM to the run: its exit code, and the seconds from the signal to its exit."""
    sent = time.monotonic()
    run.signal(signal.SIGTERM)
    code = run.finish(timeout=timeout)
    return code, time.monotonic() - sent


def _unit_interrupted(tmp_path) -> dict:
    report = json.loads((tmp_path / "deliver.json").read_text())
    return {r["name"]: r["status"] for r in report["steps"]}


def test_sigterm_during_a_long_build_cleans_up_within_the_bound(stack, slow_repo, tmp_path):
    run = _long_unit(stack, slow_repo, tmp_path, "slow-1")
    code, took = _sigterm(run, timeout=120)
    print(f"exited {took:.1f}s after SIGTERM")
    assert code == 143, run.stderr[-2000:]
    assert took < 40, f"the clean-up took {took:.1f}s"
    assert "Traceback" not in run.stderr
    assert _unit_interrupted(tmp_path)["unit"] == "interrupted"
    assert all(_unit_interrupted(tmp_path)[n] == "skipped" for n in STEPS[2:])
    assert_clean(stack)  # the compose project down (the build beside stopped), checkout gone


def test_a_second_signal_ends_the_clean_up_at_once_naming_what_is_left(stack, slow_repo, tmp_path):
    before = checkouts(stack)
    run = _long_unit(stack, slow_repo, tmp_path, "slow-2")
    run.signal(signal.SIGTERM)
    # Inside the clean-up once the unit step is said interrupted: `down` waits 5 s for the
    # sleeping unit container.
    run.wait_for(r"^\[deliver\] unit \.\.\. interrupted")
    code, took = _sigterm(run, timeout=60)
    print(f"exited {took:.1f}s after the second SIGTERM")
    try:
        assert code == 143, run.stderr[-2000:]
        assert took < 5, f"the second signal took {took:.1f}s to end the run"
        assert "SIGTERM received during the clean-up: stopping now" in run.stderr
        if compose_leftovers(stack):
            assert re.search(r"left behind: compose project \S+ on swarm-test-1", run.stderr)
    finally:
        _remove_leftovers(stack, before)


def test_cleanup_against_a_frozen_cd_engine_stops_at_the_bound_naming_the_project(
    stack, slow_repo, tmp_path
):
    """The CD node's engine stops answering when the signal comes: `compose down` and every
    API call would wait (the Engine client's 120 s, TEST_TIMEOUT's 1800 s); the run exits 30 s
    after the signal, naming the compose project it leaves."""
    before = checkouts(stack)
    node = docker.from_env().containers.get(stack.container(CD_NODE))
    run = _long_unit(stack, slow_repo, tmp_path, "slow-3")
    node.pause()
    try:
        code, took = _sigterm(run, timeout=180)
        print(f"exited {took:.1f}s after SIGTERM, the CD engine frozen")
    finally:
        node.unpause()
    try:
        assert code == 143, run.stderr[-2000:]
        assert 25 < took < 40, f"the clean-up took {took:.1f}s"
        assert re.search(r"left behind: compose project \S+ on swarm-test-1", run.stderr)
    finally:
        _remove_leftovers(stack, before)
