"""Deployment logic without a cluster: which version is deployed (from the versions that passed
prod-like), what a run's outcome is, and its final history entry against an in-memory manager;
the cluster side runs in tests/integration/test_4_deploy.py."""

from __future__ import annotations

import json
import os
import signal
import time
from types import SimpleNamespace

import pytest

from cdtasks import deployment, records
from cdtasks.config import load
from cdtasks.deployment import Deployment, DeploymentError, choose, outcome
from cdtasks.gateway import Service
from cdtasks.interrupt import Interrupted, signals_as_interrupt
from cdtasks.runner import StepResult


@pytest.fixture
def envs(tmp_path):
    (tmp_path / "base.env").write_text("REGISTRY_PORT=5100\n")  # both clusters' registries
    (tmp_path / "prod.env").write_text("APP_IMAGE=shop\nSTACK_NAME=shop\n")
    (tmp_path / "test.env").write_text("STACK_NAME=shop\nREPO=https://example.invalid/shop.git\n")
    return load("prod", environ={}, env_dir=tmp_path), load("test", environ={}, env_dir=tmp_path)


def passed(*versions):
    return [
        {
            "version": v,
            "image": f"localhost:5000/shop:{v}",
            "digest": f"sha256:{i}",
            "repo": "r",
            "commit": "c",
        }
        for i, v in enumerate(versions)
    ]


# -- which version -------------------------------------------------------------------------------
def test_the_last_version_that_passed_is_the_default(envs):
    records = passed("1.0", "1.1", "1.2")
    assert choose(Deployment(*envs), records) is records[-1]


def test_a_named_version_is_its_last_record(envs):
    records = passed("1.0", "1.1", "1.0")
    assert choose(Deployment(*envs, version="1.0"), records) is records[2]


def test_nothing_passed_yet_is_refused_with_what_to_do(envs):
    with pytest.raises(DeploymentError, match="no version of shop has passed .* --force"):
        choose(Deployment(*envs), [])


def test_a_version_that_never_passed_is_refused_naming_those_that_did(envs):
    with pytest.raises(
        DeploymentError, match=r"version 2.0 never passed prod-like \(passed: 1.0, 1.1\)"
    ):
        choose(Deployment(*envs, version="2.0"), passed("1.1", "1.0"))


def test_force_deploys_a_version_from_the_target_registry(envs):
    prod, test = envs
    record = choose(Deployment(prod, test, version="2.0", force=True), passed("1.1"))
    assert record["version"] == "2.0" and record["digest"] == ""
    assert record["image"] == "localhost:5100/shop:2.0"  # the production cluster's registry
    assert (
        record["repo"] == test.delivery.repo
    )  # production tests come from the source's repository


@pytest.mark.parametrize("version", ["latest", "", "1.0 beta"])
def test_a_refused_version_stops_before_any_cluster_is_asked(envs, version):
    with pytest.raises(DeploymentError, match="refused"):
        deployment.prepare(Deployment(*envs, version=version))


def test_inv_plan_refuses_a_version_that_never_passed_before_asking_production(envs, monkeypatch):
    """One line, exit 2 (DeploymentError); --force is no flag of `inv plan`, so not offered."""
    monkeypatch.setattr(deployment, "passed", lambda d: passed("1.0", "1.1"))
    monkeypatch.setattr(deployment, "Cluster", None)  # production is not asked
    with pytest.raises(DeploymentError) as refused:
        deployment.plan(Deployment(*envs, version="9.9"))
    assert str(refused.value) == (
        "version 9.9 never passed prod-like (passed: 1.0, 1.1); deliver it first"
    )
    with pytest.raises(DeploymentError, match="refused"):
        deployment.plan(Deployment(*envs, version="latest"))


# -- outcome -------------------------------------------------------------------------------------
NAMES = ("rollout", "prodtest", "rollback", "prodtest-after-rollback")


def results(*oks):
    return [StepResult(NAMES[i], ok, 1.0) for i, ok in enumerate(oks)]


@pytest.mark.parametrize(
    "kind, rolled_back, oks, expected",
    [
        ("deploy", False, (True, True), "deployed"),
        ("rollback", False, (True, True), "rolled back"),
        ("deploy", False, (True, False), "failed"),  # --no-rollback
        ("deploy", True, (True, False, True, True), "failed, rolled back"),
        ("deploy", True, (False, True, False), "failed, rollback failed"),
        ("deploy", True, (True, False, True, False), "failed, rollback failed"),
    ],
)
def test_outcome(envs, kind, rolled_back, oks, expected):
    d = Deployment(*envs, kind=kind, rolled_back=rolled_back)
    assert outcome(d, results(*oks)) == expected


def test_a_failed_canary_names_its_figure_and_an_interrupted_one_is_interrupted(envs):
    d = Deployment(*envs)
    why = "23.4 % errors > 1 % over 412 requests (step 1/2 at 10 %)"
    assert outcome(d, [StepResult("canary", False, 9.0, why)]) == f"canary aborted: {why}"
    stopped = StepResult("canary", False, 3.0, "interrupted", interrupted=True)
    assert outcome(d, [stopped]) == "interrupted"
    passed_canary = StepResult("canary", True, 9.0, "canary passed")
    assert outcome(d, [passed_canary, *results(True, True)]) == "deployed"


def test_no_step_or_no_production_test_is_never_deployed(envs):
    d = Deployment(*envs)
    assert outcome(d, []) == "failed"
    assert outcome(d, results(True)) == "failed"  # the rollout alone proves nothing


def test_an_interrupted_run_is_interrupted_whatever_ran_before(envs):
    d = Deployment(*envs)
    stopped = StepResult("prodtest", False, 1.0, "interrupted", interrupted=True)
    assert outcome(d, [*results(True), stopped]) == "interrupted"
    assert outcome(d, [], KeyboardInterrupt()) == "interrupted"  # stopped outside a step
    assert outcome(d, results(True, True), KeyboardInterrupt()) == "interrupted"


def test_a_run_that_lost_its_lock_is_never_deployed(envs):
    from cdtasks.records import LockLost

    d = Deployment(*envs)
    assert outcome(d, results(True), LockLost("taken over")) == "stopped, lock lost"


# -- history: a run's started entry and its final one ------------------------------------------
def entry(run, result, lock=""):
    return {"run": run, "result": result, "version": run, **({"lock": lock} if lock else {})}


def test_a_finished_run_shows_once_with_its_final_result():
    rows = [entry("a", "started", "t1"), entry("a", "deployed")]
    assert deployment.merge_runs(rows, None) == [entry("a", "deployed")]


def test_a_started_run_without_its_final_entry_is_unfinished_unless_its_holder_lives():
    rows = [entry("a", "started", "t1"), entry("a", "interrupted"), entry("b", "started", "t2")]
    assert [r["result"] for r in deployment.merge_runs(rows, None)] == ["interrupted", "unfinished"]
    assert [r["result"] for r in deployment.merge_runs(rows, "t1")] == ["interrupted", "unfinished"]
    assert [r["result"] for r in deployment.merge_runs(rows, "t2")] == ["interrupted", "running"]


def test_entries_of_older_versions_without_a_run_id_are_kept():
    old = {"result": "deployed", "version": "1.0"}
    assert deployment.merge_runs([old, entry("b", "started", "t")], None)[0] == old


def test_a_signal_while_the_final_entry_is_written_comes_after_it(
    tmp_path, swarm_manager, monkeypatch
):
    """SIGTERM arriving in the middle of writing a finished run's history entry: the entry is
    written whole, the lock released and the local log written, then the run is interrupted
    (the deployment is not left "unfinished")."""
    (tmp_path / "prod.env").write_text("")
    prod = load("prod", environ={"CDTASKS_STATE_DIR": str(tmp_path / "state")}, env_dir=tmp_path)
    d = Deployment(prod, prod, version="1.2", log=lambda line: None)
    d.cluster = SimpleNamespace(gateway=lambda log=None: swarm_manager)
    lock = records.Lock(swarm_manager, d.service, "1.2").acquire(0)
    real_put = records.put

    def put_with_a_signal(manager, kind, service, entry, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # without deferral the handler raises here, before the write
        real_put(manager, kind, service, entry, **kw)

    monkeypatch.setattr(records, "put", put_with_a_signal)
    with pytest.raises(Interrupted) as err, signals_as_interrupt(lambda line: None):
        deployment.finish(
            d, [StepResult("rollout", True, 1.0), StepResult("prodtest", True, 1.0)], lock
        )
    assert err.value.signum == signal.SIGTERM
    assert [(e["run"], e["result"]) for e in records.load(swarm_manager, "history", d.service)] == [
        (d.run_id, "deployed")
    ]
    assert records.lock_state(swarm_manager, d.service) is None
    local = deployment.local_log(prod).read_text().splitlines()
    assert [json.loads(line)["result"] for line in local] == ["deployed"]


# -- a release of several services: all or nothing ------------------------------------------------
class Progress:
    def step(self, name):
        pass

    def done(self, result):
        pass


def test_a_release_where_one_service_fails_moves_every_service_back(envs, monkeypatch):
    """The worker's rollout fails (the api's succeeded): the rollback step moves both back to
    what they ran before, the api too, and the history entry names each before and after."""
    from cdtasks import rollout
    from cdtasks.runner import StepFailed

    moved = []

    def measured_update(cluster, app, images, log, keep, max_errors=None, lock=None):
        moved.append(dict(images))
        raise StepFailed("rolling update of team_worker ended paused: task exited")

    def update(cluster, app, images, log, lock=None):
        moved.append(dict(images))
        return [rollout.services.Rollout(s, i, "completed", 1.0) for s, i in images.items()]

    monkeypatch.setattr(rollout, "measured_update", measured_update)
    monkeypatch.setattr(rollout, "update", update)
    monkeypatch.setattr(deployment, "_prodtest", lambda d: "production tests passed")
    after = {"team_api": "api:1.2@sha256:a", "team_worker": "worker:1.2@sha256:w"}
    before = {"team_api": "api:1.1@sha256:a0", "team_worker": "worker:1.1@sha256:w0"}
    # both services changed (the api's rollout completed, the worker's paused on its image)
    specs = SimpleNamespace(service=lambda name: Service(name, name, 1, after[name], 1))
    cluster = SimpleNamespace(gateway=lambda log=None: specs)
    d = Deployment(*envs, images=after, before=before, cluster=cluster)
    lock = SimpleNamespace(check=lambda: None)
    steps = deployment.steps(d, lock, Progress())
    assert [(r.name, r.ok) for r in steps] == [
        ("rollout", False),
        ("rollback", True),
        ("prodtest-after-rollback", True),
    ]
    assert moved == [after, before]
    assert outcome(d, steps) == "failed, rolled back"
    entry = deployment._entry(d, outcome(d, steps), steps)
    assert entry["services"] == [
        {"service": "team_api", "image": after["team_api"], "previous": before["team_api"]},
        {
            "service": "team_worker",
            "image": after["team_worker"],
            "previous": before["team_worker"],
        },
    ]


def test_a_canary_of_a_release_with_nothing_behind_the_proxy_is_one_line(monkeypatch):
    from cdtasks import canary_rollout
    from cdtasks.canary import Gate

    def none(cluster, images):
        raise canary_rollout.NoTarget("no released service (team_worker) has a backend in ...")

    monkeypatch.setattr(canary_rollout, "targets", none)
    with pytest.raises(DeploymentError, match=r"^--canary: no released service \(team_worker\)"):
        deployment.canaries(None, {"team_worker": "w"}, Gate((10,), 1, 0), print)


def test_a_stack_s_worker_rolls_with_the_promotion_and_says_so(monkeypatch):
    from cdtasks import canary_rollout
    from cdtasks.canary import Gate

    where = canary_rollout.Targets(
        "team_proxy", (canary_rollout.Target("team_api", "api"),), ("team_worker",), True
    )
    monkeypatch.setattr(canary_rollout, "targets", lambda cluster, images: where)
    checked = []
    monkeypatch.setattr(canary_rollout, "check_proxy", lambda c, w, g: checked.append(w))
    lines: list[str] = []
    assert deployment.canaries(None, {}, Gate((10,), 1, 0), lines.append) is where
    assert checked == [where]
    assert lines == [
        "--canary: team_worker not behind the proxy team_proxy: no canary, rolled out with "
        "the promotion"
    ]


def test_rollback_passes_over_history_of_services_the_cluster_no_longer_runs(envs, monkeypatch):
    """A cluster upgraded from the env-file services: its history names `go-demo`, which the
    stack replaced with `go-demo_main`; rolling back considers only what runs."""
    old = {"result": "deployed", "services": [{"service": "go-demo", "image": "g:1.0"}]}
    ok = [
        {"result": "deployed", "services": [{"service": "shop_main", "image": f"s:{v}"}]}
        for v in ("1.1", "1.2")
    ]
    monkeypatch.setattr(records, "load", lambda m, kind, key: [old, *ok])
    monkeypatch.setattr(deployment.services, "current_image", lambda m, name: "s:1.2")
    manager = SimpleNamespace(services=lambda: [SimpleNamespace(name="shop_main")])
    d = Deployment(*envs, kind="rollback")
    assert deployment.rollback_target(manager, d) == {"shop_main": "s:1.1"}
