"""`inv services` against the real lab: the sample stack (demo/stack.yml, STACK_NAME go-demo):
go-demo_main, its database go-demo_db and the proxy go-demo_proxy in both clusters, placed and
sized as each env file's STACK_VARIABLES say, answering through each cluster's proxy; made as
`docker stack deploy` would (the CLI on a manager shows it as the stack go-demo); created once
(a second run changes nothing), drift shown by --check, bad input refused, and a service that
cannot be scheduled diagnosed in Swarm's own words."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
import uuid

import pytest
import requests

from cdtasks.cluster import Cluster

from .conftest import PROD_MANAGER, ROOT, TEST_MANAGER, manager_of, on_manager

TEST_NODES = ("swarm-test-1", "swarm-test-2", "swarm-test-3")
PROD_NODES = ("swarm-1", "swarm-2", "swarm-3")
MB = 1024 * 1024
NS = 1_000_000_000
WIDE = {"COLUMNS": "200"}  # keep rich from wrapping table cells
STACK = "go-demo"  # STACK_NAME: the stack's Swarm services are STACK_main, STACK_db, STACK_proxy
MAIN, DB, PROXY = f"{STACK}_main", f"{STACK}_db", f"{STACK}_proxy"
SAMPLE = ROOT / "demo" / "stack.yml"
NAMESPACE = "com.docker.stack.namespace"
# test.env's STACK_VARIABLES, to change one of them at a time in the process environment.
TEST_VARIABLES = {
    "PLACEMENT": "'node.labels.env == prod-like'",
    "REPLICAS": "2",
    "PROXY_REPLICAS": "2",
}


def stack_variables(**changed: str) -> dict[str, str]:
    """CDTASKS_STACK_VARIABLES: test.env's, with `changed` over them."""
    words = {**TEST_VARIABLES, **changed}
    return {"CDTASKS_STACK_VARIABLES": " ".join(f"{k}={v}" for k, v in words.items())}


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
    nodes = sorted(set(running_on(manager(lab, env), PROXY)))
    assert nodes, f"no proxy task runs in {env}"
    return [f"http://127.0.0.1:{lab.http_port(n)}" for n in nodes]


def get(url: str, timeout: float = 30, method: str = "GET") -> requests.Response:
    """The first answer below 500 from go-demo_main through the proxy (HAProxy finds fresh tasks
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
    placed = {s: running_on(client, s) for s in (MAIN, PROXY, DB)}
    print(f"test placement: {placed}")
    assert len(placed[MAIN]) == 2 and len(placed[PROXY]) == 2 and len(placed[DB]) == 1
    for service, nodes in placed.items():
        assert set(nodes) <= {"swarm-test-2", "swarm-test-3"}, f"{service} on {nodes}"
    for service in placed:
        spec = client.api.inspect_service(service)["Spec"]
        assert spec["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.env == prod-like"]


def test_prod_services_as_prod_env_says(stack):
    client = manager(stack, "prod")
    placed = {s: running_on(client, s) for s in (MAIN, PROXY, DB)}
    print(f"prod placement: {placed}")
    specs = {s: client.api.inspect_service(s)["Spec"] for s in placed}

    def reserved(s):
        return ((specs[s]["TaskTemplate"].get("Resources") or {}).get("Reservations") or {}).get(
            "MemoryBytes", 0
        )

    assert specs[PROXY]["Mode"]["Replicated"]["Replicas"] == 3 and len(placed[PROXY]) == 3
    assert specs[MAIN]["Mode"]["Replicated"]["Replicas"] == 3 and len(placed[MAIN]) == 3
    assert specs[DB]["Mode"]["Replicated"]["Replicas"] == 1
    # prod.env's STACK_VARIABLES: APP_MEMORY=50M DB_MEMORY=150M; the proxy reserves none.
    assert reserved(MAIN) == 50 * MB
    assert reserved(DB) == 150 * MB
    assert reserved(PROXY) == 0
    for s in specs:
        assert specs[s]["TaskTemplate"]["Placement"]["Constraints"] == ["node.labels.env == prod"]
    # From the stack file: 5 s between two tasks, the new one first, 10 s to stop.
    assert specs[MAIN]["UpdateConfig"]["Delay"] == 5 * NS
    assert specs[MAIN]["UpdateConfig"]["Order"] == "start-first"
    assert specs[MAIN]["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 10 * NS
    # Host-mode port 80 (no IPVS here): one proxy per node, so all three nodes serve.
    assert placed[PROXY] == list(PROD_NODES)


@pytest.mark.parametrize("env, node", [("test", TEST_MANAGER), ("prod", PROD_MANAGER)])
def test_docker_stack_services_shows_the_sample_stack(stack, env, node):
    """The docker CLI on a manager sees what `inv services` made as the stack go-demo: its
    services, its two networks and the proxy's configuration, named after their content."""
    rows = {
        r["Name"]: r
        for r in map(
            json.loads,
            on_manager(
                stack, "stack", "services", STACK, "--format", "{{json .}}", node=node
            ).splitlines(),
        )
    }
    print(env, rows)
    assert sorted(rows) == sorted([MAIN, DB, PROXY])
    replicas = {"test": 2, "prod": 3}[env]
    assert rows[MAIN]["Replicas"].startswith(f"{replicas}/{replicas}"), rows[MAIN]
    assert rows[PROXY]["Replicas"].startswith(f"{replicas}/{replicas}"), rows[PROXY]
    assert rows[DB]["Replicas"].startswith("1/1"), rows[DB]
    assert STACK in on_manager(stack, "stack", "ls", "--format", "{{.Name}}", node=node).split()

    def labelled(kind: str) -> list[str]:
        return sorted(
            on_manager(
                stack,
                *(kind, "ls", "--filter", f"label={NAMESPACE}={STACK}", "--format", "{{.Name}}"),
                node=node,
            ).split()
        )

    assert labelled("network") == [f"{STACK}_default", f"{STACK}_proxy"]
    cfg = (ROOT / "demo" / "proxy" / "haproxy.cfg").read_bytes()
    config = f"{STACK}_haproxy-{hashlib.sha256(cfg).hexdigest()[:10]}"
    assert config in labelled("config")
    spec = manager(stack, env).api.inspect_service(PROXY)["Spec"]
    assert [c["ConfigName"] for c in spec["TaskTemplate"]["ContainerSpec"]["Configs"]] == [config]


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
    assert "test: services match stack.yml" in proc.stdout

    proc = stack.inv(
        "services",
        "--env",
        "test",
        "--check",
        check=False,
        extra_env={**WIDE, **stack_variables(REPLICAS="3")},
    )
    print(proc.stdout)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert re.search(rf"{MAIN}\W+deploy\.replicas\W+3\W+2\W", proc.stdout), proc.stdout
    # --check changed nothing.
    spec = manager(stack, "test").api.inspect_service(MAIN)["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2


def test_latest_tag_is_refused(stack, tmp_path):
    """A copy of the sample's stack file (its proxy configuration beside it) whose database
    image is tagged latest."""
    shutil.copytree(ROOT / "demo" / "proxy", tmp_path / "proxy")
    text = SAMPLE.read_text()
    assert text.count("image: cdtasks/redis:7.0") == 1
    latest = tmp_path / "stack.yml"
    latest.write_text(text.replace("image: cdtasks/redis:7.0", "image: cdtasks/redis:latest"))
    proc = stack.inv(
        "services",
        "--env",
        "test",
        check=False,
        extra_env={"CDTASKS_STACK_FILE": str(latest)},
    )
    print(proc.stderr.strip())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(latest) in proc.stderr and "service db: image" in proc.stderr
    assert "cdtasks/redis:latest" in proc.stderr and "latest" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unschedulable_service_is_diagnosed(stack):
    """The sample stack under a namespace of its own, placed where no node is."""
    name = f"gdx{uuid.uuid4().hex[:6]}"
    label = f"{NAMESPACE}={name}"
    client = manager(stack, "test")
    try:
        started = time.monotonic()
        proc = stack.inv(
            "services",
            "--env",
            "test",
            check=False,
            extra_env={
                "CDTASKS_STACK_NAME": name,
                **stack_variables(PLACEMENT="'node.labels.env == nowhere'"),
                "CDTASKS_SERVICES_TIMEOUT": "15",
                "CDTASKS_PROXY_PORT": "81",
            },
        )
        print(proc.stderr.strip().splitlines()[-1])
        print(f"diagnosed after {time.monotonic() - started:.1f}s wall")
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert "no suitable node" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        # Leave the stack as it was: what this run created (services, then networks and config).
        for svc in client.api.services(filters={"label": label}):
            # Not created when the tool refused early.
            with contextlib.suppress(Exception):
                client.api.remove_service(svc["ID"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            nets = client.api.networks(filters={"label": label})
            for net in nets:
                with contextlib.suppress(Exception):  # still in use by tasks being removed
                    client.api.remove_network(net["Id"])
            if not nets:
                break
            time.sleep(1)
        for conf in client.api.configs(filters={"label": label}):
            client.api.remove_config(conf["ID"])
    left = {s["Spec"]["Name"] for s in client.api.services()}
    assert left == {"registry", MAIN, DB, PROXY}
    assert not client.api.networks(filters={"label": label})
    assert stack.inv("services", "--env", "test", "--check", check=False).returncode == 0
