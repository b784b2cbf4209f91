"""`--json`: one JSON document on stdout and nothing else, in the shapes the README documents
(status, history, and the deliver/deploy/rollback report that is also written to REPORTS_DIR).
The library calls behind the tasks are replaced: this is the task layer's output only."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from invoke import Config, Context, Exit

from cdtasks import cluster, delivery, deployment, ns
from cdtasks.budget import Budget
from cdtasks.gateway import Node
from cdtasks.runner import StepResult
from cdtasks.tasks import cluster as cluster_tasks
from cdtasks.tasks import common
from cdtasks.tasks import delivery as delivery_tasks
from cdtasks.tasks import deployment as deployment_tasks

REPORT_KEYS = {"suite", "ok", "seconds", "meta", "steps"}
STEP_KEYS = {"name", "status", "ok", "skipped", "seconds", "started", "detail", "output_tail"}


@pytest.fixture
def c(tmp_path, monkeypatch) -> Context:
    """A task Context for a project in tmp_path with env/test.env and env/prod.env."""
    monkeypatch.delenv("CDTASKS_ENV_DIR", raising=False)
    monkeypatch.delenv("CDTASKS_PROJECT_DIR", raising=False)
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "test.env").write_text("")
    (tmp_path / "env" / "prod.env").write_text(
        "NODES=swarm-1\nCD_NODE=swarm-1\nSSH_KEY=/keys/hunter2hunter2\n"
    )  # a secret-looking key
    cfg = Config(project_location=str(tmp_path))
    cfg.load_collection(ns.configuration())
    return Context(cfg)


def one_document(stdout: str):
    """stdout holds exactly one JSON document, on one line."""
    assert stdout.count("\n") == 1 and stdout.endswith("\n"), stdout
    return json.loads(stdout)


def test_status_json(c, monkeypatch, capsys):
    def status(s):
        if s.env == "prod":
            return cluster.Status("prod", (), ("swarm-1",), ())
        return cluster.Status(
            "test",
            (
                Node(
                    "id1",
                    "swarm-test-1",
                    "manager",
                    "ready",
                    labels={},
                    leader=True,
                    reachability="reachable",
                    addr="10.0.0.2",
                ),
                Node("id2", "swarm-test-2", "worker", "down", "drain", {"env": "prod-like"}),
            ),
            ("swarm-test-3",),
            (
                ("go-demo", "replicated", "2/2", "localhost:5000/go-demo:1.0", ""),
                ("team_migrate", "replicated-job", "0/1", "t:1", "task: non-zero exit (1)"),
            ),
        )

    monkeypatch.setattr(cluster, "status", status)
    with pytest.raises(Exit) as exc:  # prod has no machine: said, and exit 3 after the JSON
        cluster_tasks.status(c, json=True)
    assert exc.value.code == 3 and "`inv provision --env prod`" in exc.value.message
    out = capsys.readouterr()
    doc = one_document(out.out)
    assert list(doc) == ["test", "prod"]  # every environment, test first
    assert doc["prod"] == {"nodes": [], "missing": ["swarm-1"], "services": []}
    assert doc["test"]["nodes"] == [
        {
            "node": "swarm-test-1",
            "role": "manager",
            "leader": True,
            "status": "ready",
            "availability": "active",
            "reachability": "reachable",
            "labels": {},
        },
        {
            "node": "swarm-test-2",
            "role": "worker",
            "leader": False,
            "status": "down",
            "availability": "drain",
            "reachability": "",
            "labels": {"env": "prod-like"},
        },
    ]
    assert doc["test"]["missing"] == ["swarm-test-3"]
    assert doc["test"]["services"] == [
        {
            "service": "go-demo",
            "mode": "replicated",
            "replicas": "2/2",
            "image": "localhost:5000/go-demo:1.0",
            "errors": "",
        },
        {
            "service": "team_migrate",
            "mode": "replicated-job",
            "replicas": "0/1",
            "image": "t:1",
            "errors": "task: non-zero exit (1)",
        },
    ]


def test_history_json(c, monkeypatch, capsys):
    rows = [
        {
            "time": "2026-11-29T10:00:00Z",
            "user": "ci",
            "env": "prod",
            "service": "go-demo",
            "kind": "deploy",
            "version": "1.1",
            "image": "localhost:5000/go-demo:1.1@sha256:ab",
            "digest": "sha256:ab",
            "previous": "",
            "result": "deployed",
            "rolled_back": False,
            "seconds": 21.5,
            "steps": {"deploy": "ok"},
        }
    ]
    monkeypatch.setattr(deployment, "history", lambda s: (rows, "cluster"))
    deployment_tasks.history(c, json=True)
    doc = one_document(capsys.readouterr().out)
    assert doc == {"env": "prod", "service": "go-demo", "source": "cluster", "deployments": rows}


@pytest.mark.parametrize("result, code", [("deployed", 0), ("failed, rolled back", 20)])
def test_deploy_json_is_the_report_file(c, monkeypatch, capsys, tmp_path, result, code):
    prod = common.settings(c, "prod")
    entry = {"env": "prod", "version": "1.1", "result": result, "digest": "sha256:ab"}
    results = [StepResult("deploy", True, 2.0), StepResult("prodtest", code == 0, 1.0, "x")]
    monkeypatch.setattr(deployment, "run", lambda d, progress: (entry, results))
    d = SimpleNamespace(
        service="go-demo",
        prod=prod,
        test=common.settings(c, "test"),
        image="localhost:5000/go-demo:1.1",
    )
    if code:
        with pytest.raises(Exit) as exc:
            deployment_tasks._deployed(d, "deploy", json=True)
        assert exc.value.code == code
    else:
        deployment_tasks._deployed(d, "deploy", json=True)
    out = capsys.readouterr()
    doc = one_document(out.out)
    assert set(doc) == REPORT_KEYS and doc["suite"] == "deploy" and doc["ok"] is (code == 0)
    assert all(set(step) == STEP_KEYS for step in doc["steps"])
    assert doc["meta"] == entry
    assert doc == json.loads((tmp_path / "reports" / "deploy.json").read_text())
    assert "reports: " in out.err and f"go-demo on prod: {result}" in out.err


def test_deliver_json_is_the_report_file_with_secrets_redacted(c, monkeypatch, capsys, tmp_path):
    s = common.settings(c, "prod")
    monkeypatch.setattr(delivery, "state_after", lambda d, results: "nothing left behind")
    d = SimpleNamespace(
        settings=s,
        version="1.1",
        ref="HEAD",
        repo=s.delivery.repo,
        digest="sha256:ab",
        targets={"go-demo": "localhost:5000/go-demo:1.1@sha256:ab"},
        previous={"go-demo": "localhost:5000/go-demo:1.0"},
        dry_run=False,
        commands=[["docker", "push", "x"]],
        budget=Budget(True, requests=412, errors=0, seconds=14.0, series=((0, 30, 0),)),
    )
    results = [StepResult("checkout", True, 1.0, "key /keys/hunter2hunter2")]
    delivery_tasks._finish(d, results, "deliver", json=True)
    out = capsys.readouterr()
    doc = one_document(out.out)
    assert "hunter2hunter2" not in out.out and "***" in doc["steps"][0]["detail"]
    assert set(doc) == REPORT_KEYS and doc["suite"] == "deliver" and doc["ok"] is True
    assert set(doc["meta"]) == {
        "env",
        "service",
        "version",
        "ref",
        "repo",
        "digest",
        "services",
        "budget",
        "state",
        "dry_run",
        "commands",
    }
    # the release's services, each with its image before and after (issue 17 point 10)
    assert doc["meta"]["services"] == [
        {
            "service": "go-demo",
            "image": "localhost:5000/go-demo:1.1@sha256:ab",
            "previous": "localhost:5000/go-demo:1.0",
        }
    ]
    # prod-like's error budget, as the history keeps production's
    assert doc["meta"]["budget"] == d.budget.record()
    assert doc["meta"]["budget"]["series"] == [[0, 30, 0]]
    assert doc["meta"]["repo"] == str(tmp_path)  # REPO empty: the project directory
    assert doc == json.loads((Path(s.delivery.reports_dir) / "deliver.json").read_text())
    assert "nothing left behind" in out.err and "reports: " in out.err


def test_without_json_the_tables_stay_on_stdout(c, monkeypatch, capsys):
    monkeypatch.setattr(deployment, "history", lambda s: ([], "cluster"))
    deployment_tasks.history(c)
    out = capsys.readouterr().out
    assert "deployments of go-demo" in out and "no deployments yet" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_every_json_flag_is_documented():
    """Every task that prints tables takes --json with help; the README names each."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in ("deliver", "deploy", "rollback", "status", "history", "services", "lock"):
        assert "json" in ns.tasks[name].help, name
        assert f"`inv {name} --json`" in readme, name
    assert "json" in ns.tasks["watch"].help and "`inv watch --once --json`" in readme


def test_services_json_with_drift_exits_5_after_the_document(c, monkeypatch, capsys):
    from cdtasks import stack
    from cdtasks.tasks import services as services_tasks

    def ensure(s, log, check, update):
        drift = (stack.Drift("go-demo", "replicas", "2", "3"),) if s.env == "prod" else ()
        return SimpleNamespace(done=(), drift=drift)

    monkeypatch.setattr(stack, "ensure", ensure)
    with pytest.raises(Exit) as exc:
        services_tasks.services(c, check=True, json=True)
    assert exc.value.code == 5
    doc = one_document(capsys.readouterr().out)
    assert doc == {
        "test": {"done": [], "drift": []},
        "prod": {
            "done": [],
            "drift": [{"service": "go-demo", "field": "replicas", "wanted": "2", "running": "3"}],
        },
    }


def test_lock_status_json(c, monkeypatch, capsys):
    from cdtasks import records
    from cdtasks.cluster import Cluster
    from cdtasks.tasks import lock as lock_tasks

    manager = object()
    monkeypatch.setattr(
        Cluster,
        "of",
        classmethod(
            lambda cls, s: SimpleNamespace(
                discover=lambda: SimpleNamespace(gateway=lambda: manager)
            )
        ),
    )
    holder = {
        "user": "ci",
        "host": "h",
        "machine": "m",
        "pid": 7,
        "time": "t",
        "action": "deploying",
        "version": "1.1",
    }
    held = records.LockState(
        "id", 3, "cdtasks-lock-go-demo", {records.EXPIRES_LABEL: "9999999999"}, holder
    )
    monkeypatch.setattr(records, "lock_state", lambda m, svc: held if m is manager else None)
    monkeypatch.setattr(records, "expired", lambda state: "")
    lock_tasks.lock(c, "status", env="prod", json=True)
    out = capsys.readouterr()
    doc = one_document(out.out)
    assert list(doc) == ["prod"] and doc["prod"]["holder"] == holder
    assert doc["prod"]["service"] == "go-demo" and doc["prod"]["expires_in"] > 0
    assert doc["prod"]["expired"] == "" and "locked by ci@h" in out.err
