"""`inv services` against the real lab: go-demo, its database and the proxy in both clusters,
placed and sized as each env file says, answering through each cluster's proxy; created once
(a second run changes nothing), drift shown by --check, bad input refused, and a service that
cannot be scheduled diagnosed in Swarm's own words."""

from __future__ import annotations

import contextlib
import re
import time
import uuid

import pytest
import requests

from cdtasks.cluster import Cluster

from .conftest import manager_of

TEST_NODES = ("swarm-test-1", "swarm-test-2", "swarm-test-3")
PROD_NODES = ("swarm-1", "swarm-2", "swarm-3")
MB = 1024 * 1024
NS = 1_000_000_000
WIDE = {"COLUMNS": "200"}  # keep rich from wrapping table cells


def manager(lab, env: str):
    return manager_of(Cluster.of(lab.settings(env)).discover())


def running_on(client, service: str) -> list[str]:
    """Hostnames of the nodes running the service's tasks that should run (one per task)."""
    names = {n["ID"]: n["Description"]["Hostname"] for n in client.api.nodes()}
    tasks = client.api.tasks(filters={"service": service, "desired-state": "running"})
    assert all(t["Status"]["State"] == "running" for t in tasks), [
        (t["Status"]["State"], t["Status"].get("Err")) for t in tasks
    ]
    return sorted(names[t["NodeID"]] for t in tasks)


def proxy_urls(lab, env: str) -> list[str]:
    nodes = sorted(set(running_on(manager(lab, env), "proxy")))
    assert nodes, f"no proxy task runs in {env}"
    return [f"http://127.0.0.1:{lab.http_port(n)}" for n in nodes]


def get(url: str, timeout: float = 30, method: str = "GET") -> requests.Response:
    """The first answer below 500 from go-demo through the proxy (HAProxy finds fresh tasks
    within about a second); after `timeout`, the last answer, or the last error raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = requests.request(method, url, timeout=5)
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
        else:
            if r.status_code < 500 or time.monotonic() > deadline:
                return r
        time.sleep(0.5)


@pytest.mark.parametrize("env", ["test", "prod"])
def test_go_demo_answers_through_every_proxy(stack, env):
    for base in proxy_urls(stack, env):
        started = time.monotonic()
        r = get(f"{base}/demo/hello")
        print(f"{env} {base}/demo/hello: {r.status_code} after {time.monotonic() - started:.2f}s")
        assert r.status_code == 200
        assert r.text == "hello, world!\n"


def test_persons_are_stored_per_cluster(stack):
    """PUT through one proxy, read through every proxy of the same cluster; the other cluster
    has its own database."""
    names = {}
    for env in ("test", "prod"):
        urls = proxy_urls(stack, env)
        names[env] = f"probe-{env}-{uuid.uuid4().hex[:8]}"
        r = get(f"{urls[0]}/demo/person?name={names[env]}", method="PUT")
        assert r.status_code == 200, r.text
        for base in urls:
            r = get(f"{base}/demo/person")
            assert r.status_code == 200, r.text
            assert names[env] in r.text.split(), r.text
    test_persons = get(f"{proxy_urls(stack, 'test')[0]}/demo/person").text.split()
    assert names["prod"] not in test_persons


def test_test_cluster_runs_services_on_the_prod_like_nodes(stack):
    client = manager(stack, "test")
    placed = {s: running_on(client, s) for s in ("go-demo", "proxy", "go-demo-db")}
    print(f"test placement: {placed}")
    assert (
        len(placed["go-demo"]) == 2 and len(placed["proxy"]) == 2 and len(placed["go-demo-db"]) == 1
    )
    for service, nodes in placed.items():
        assert set(nodes) <= {"swarm-test-2", "swarm-test-3"}, f"{service} on {nodes}"
    for service in placed:
        spec = client.api.inspect_service(service)["Spec"]
        assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.env == prod-like"]


def test_prod_services_as_prod_env_says(stack):
    client = manager(stack, "prod")
    placed = {s: running_on(client, s) for s in ("go-demo", "proxy", "go-demo-db")}
    print(f"prod placement: {placed}")
    specs = {s: client.api.inspect_service(s)["Spec"] for s in placed}

    def reserved(s):
        return ((specs[s]["TaskTemplate"].get("Resources") or {}).get("Reservations") or {}).get(
            "MemoryBytes", 0
        )

    assert specs["proxy"]["Mode"]["Replicated"]["Replicas"] == 3 and len(placed["proxy"]) == 3
    assert specs["go-demo"]["Mode"]["Replicated"]["Replicas"] == 3 and len(placed["go-demo"]) == 3
    assert specs["go-demo-db"]["Mode"]["Replicated"]["Replicas"] == 1
    assert reserved("go-demo") == 50 * MB
    assert reserved("go-demo-db") == 150 * MB
    assert reserved("proxy") == 0
    for s in specs:
        assert not (specs[s]["TaskTemplate"].get("Placement") or {}).get("Constraints"), s
    assert specs["go-demo"]["UpdateConfig"]["Delay"] == 5 * NS
    # Host-mode port 80 (no IPVS here): one proxy per node, so all three nodes serve.
    assert placed["proxy"] == list(PROD_NODES)


def test_second_run_changes_nothing(stack):
    started = time.monotonic()
    proc = stack.inv("services", extra_env=WIDE)
    print(proc.stdout)
    print(f"second `inv services`: {time.monotonic() - started:.1f}s wall")
    assert "test: nothing to change" in proc.stdout.splitlines()
    assert "prod: nothing to change" in proc.stdout.splitlines()


def test_check_reports_drift(stack):
    proc = stack.inv("services", "--env", "test", "--check", check=False, extra_env=WIDE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test: services match test.env" in proc.stdout

    proc = stack.inv(
        "services",
        "--env",
        "test",
        "--check",
        check=False,
        extra_env={**WIDE, "CDTASKS_APP_REPLICAS": "3"},
    )
    print(proc.stdout)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert re.search(r"go-demo\W+replicas\W+3\W+2\W", proc.stdout), proc.stdout
    # --check changed nothing.
    spec = manager(stack, "test").api.inspect_service("go-demo")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2


def test_latest_tag_is_refused(stack):
    proc = stack.inv(
        "services",
        "--env",
        "test",
        check=False,
        extra_env={"CDTASKS_DB_IMAGE": "cdtasks/redis:latest"},
    )
    print(proc.stderr.strip())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "DB_IMAGE" in proc.stderr and "latest" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unschedulable_service_is_diagnosed(stack):
    names = {
        "CDTASKS_APP_SERVICE": "gd-x",
        "CDTASKS_DB_SERVICE": "gd-x-db",
        "CDTASKS_PROXY_SERVICE": "px-x",
    }
    client = manager(stack, "test")
    try:
        started = time.monotonic()
        proc = stack.inv(
            "services",
            "--env",
            "test",
            check=False,
            extra_env={
                **names,
                "CDTASKS_CONSTRAINT": "node.labels.env == nowhere",
                "CDTASKS_SERVICES_TIMEOUT": "15",
                "CDTASKS_PROXY_PORT": "81",
                "CDTASKS_PROXY_ADMIN_PORT": "0",
            },
        )
        print(proc.stderr.strip().splitlines()[-1])
        print(f"diagnosed after {time.monotonic() - started:.1f}s wall")
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert "no suitable node" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        # Leave the stack as it was: what this run created (services, then network and config).
        for svc in names.values():
            # Not created when the tool refused early.
            with contextlib.suppress(Exception):
                client.api.remove_service(svc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                client.api.remove_network("gd-x")
                break
            except Exception as exc:  # noqa: BLE001
                if "not found" in str(exc).lower() or "No such network" in str(exc):
                    break
                time.sleep(1)  # still in use by tasks being removed
        for conf in client.api.configs(filters={"name": "px-x-cfg-"}):
            client.api.remove_config(conf["ID"])
    left = {s["Spec"]["Name"] for s in client.api.services()}
    assert left == {"registry", "go-demo", "go-demo-db", "proxy"}
    assert stack.inv("services", "--env", "test", "--check", check=False).returncode == 0
