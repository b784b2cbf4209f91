"""The error budget on the lab, under steady real load through each cluster's proxy: a normal
delivery and deployment record the requests the proxy served and no error; a release whose
application answers the load with 500 (and passes the production tests) is rolled back by
`--max-errors 0`, and production keeps its digest."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from cdtasks import records, stack
from cdtasks.cluster import Cluster

from .conftest import manager_of

ROOT = Path(__file__).resolve().parents[2]
LOAD_PATH = "/demo/hello?delay=0"  # 200 from go-demo_main; the broken release answers it 500
STACK = "go-demo"  # STACK_NAME: the release's history
SERVICE = f"{STACK}_main"  # the Swarm service that runs the sample's image (demo/stack.yml)
PACE = 0.05  # seconds between two requests of one cluster's load


class Load(threading.Thread):
    """GET LOAD_PATH through every proxy node of a cluster in turn, paced, until stopped;
    counts what the clients got."""

    def __init__(self, urls: list[str]):
        super().__init__(daemon=True)
        self.urls, self.halt = urls, threading.Event()
        self.sent, self.statuses = 0, {}

    def run(self) -> None:
        with requests.Session() as http:
            http.headers["Connection"] = "close"
            while not self.halt.is_set():
                url = self.urls[self.sent % len(self.urls)]
                try:
                    status = str(http.get(url + LOAD_PATH, timeout=5).status_code)
                except requests.RequestException as exc:
                    status = type(exc).__name__
                self.sent += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.halt.wait(PACE)


def proxy_urls(lab, env: str) -> list[str]:
    s = lab.settings(env)
    nodes = stack.proxy_nodes(Cluster.of(s).discover(), s.services)
    assert nodes, f"no proxy task runs in {env}"
    return [f"http://127.0.0.1:{lab.http_port(n)}" for n in nodes]


@pytest.fixture(scope="module")
def load(stack):
    """Steady load through both clusters' proxies for the whole module."""
    loads = [Load(proxy_urls(stack, env)) for env in ("test", "prod")]
    for one in loads:
        one.start()
    yield stack
    for one in loads:
        one.halt.set()
        one.join(10)
    print(f"\nload: {[(one.sent, one.statuses) for one in loads]}")


def _images(lab, env: str) -> list[str]:
    manager = manager_of(Cluster.of(lab.settings(env)).discover())
    svc = manager.api.inspect_service(SERVICE)
    tasks = manager.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
    return [t["Spec"]["ContainerSpec"]["Image"] for t in tasks if t["Status"]["State"] == "running"]


def test_a_normal_release_records_requests_and_no_error(load, tmp_path):
    lab = load
    time.sleep(3)  # the load is flowing before the rollouts start
    proc = lab.inv(
        "deliver",
        "--version",
        "2.0",
        "--deploy",
        "--max-errors",
        "0",
        extra_env={"CDTASKS_REPORTS_DIR": str(tmp_path), "COLUMNS": "250"},
    )
    for suite in ("deliver", "deploy"):
        budget = json.loads((tmp_path / f"{suite}.json").read_text())["meta"]["budget"]
        print(f"{suite}: {budget['requests']} requests, {budget['errors']} errors")
        assert budget["measured"] is True, budget
        assert budget["requests"] > 0 and budget["errors"] == 0, budget
        assert budget["max_errors"] == 0 and budget["series"]
    assert " requests, 0 errors (budget 0)" in proc.stdout  # the step table's detail
    history = json.loads(lab.inv("history", "--env", "prod", "--json").stdout)["deployments"]
    assert history[-1]["result"] == "deployed" and history[-1]["budget"]["errors"] == 0
    lab.inv(
        "report",
        "--output",
        str(tmp_path / "releases.html"),
        extra_env={"CDTASKS_REPORTS_DIR": str(tmp_path)},
    )
    assert '<svg class="budget"' in (tmp_path / "releases.html").read_text()


def _answers_500_to_the_load(lab, tmp_path: Path, version: str) -> None:
    """Build and push (no prod-like) a version that passes its health check and the production
    tests (/demo/hello, /demo/person) but answers the load's requests with 500."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "demo", repo / "demo")
    server = repo / "demo" / "app" / "server.py"
    text = server.read_text()
    good = "        if delay:\n            self.sleep(delay)\n"
    assert good in text
    server.write_text(
        text.replace(good, '        if "delay" in query:\n            return 500, "no\\n"\n')
    )
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "500 under load"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    lab.inv("checkout", "--repo", str(repo), "--version", version)
    lab.inv("build")
    lab.inv("publish")


def test_over_budget_the_release_is_rolled_back(load, tmp_path):
    lab = load
    _answers_500_to_the_load(lab, tmp_path, "2.1-500")
    before = _images(lab, "prod")
    assert len(before) == 3 and len({i.partition("@")[2] for i in before}) == 1
    proc = lab.inv(
        "deploy",
        "--env",
        "prod",
        "--version",
        "2.1-500",
        "--force",
        "--max-errors",
        "0",
        check=False,
        extra_env={"CDTASKS_REPORTS_DIR": str(tmp_path), "COLUMNS": "250"},
    )
    assert proc.returncode == 20, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "error budget exceeded: " in proc.stdout and " errors > 0 over " in proc.stdout
    after = _images(lab, "prod")
    assert sorted(after) == sorted(before)  # production keeps its digest, every replica
    manager = manager_of(Cluster.of(lab.settings("prod")).discover())
    entry = records.load(manager, "history", STACK)[-1]
    print(f"over budget: {entry['budget']['errors']} errors of {entry['budget']['requests']}")
    assert entry["result"] == "failed, rolled back" and entry["version"] == "2.1-500"
    assert entry["steps"]["rollout"] == "FAILED" and entry["steps"]["rollback"] == "ok"
    assert entry["budget"]["errors"] > 0 and entry["budget"]["max_errors"] == 0
    assert entry["budget"]["worst_second"] > 0
