"""`inv provision` against the real lab: both clusters as the book lays them out, reached the way
docker-machine users reach theirs (TLS API, strict SSH), the shared registry, idempotence,
repair of a lost machine, and refusal of bad input before anything is created.

Every test reads the clusters through their nodes' own TLS endpoints (the docker SDK) or runs the
CLI as a user would (`lab.inv`). Tests run in file order; the repair test goes last because it
removes a machine."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import docker
import paramiko
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cdtasks import engine, registry
from cdtasks.cluster import Cluster

from .conftest import manager_of, probe_registries

TEST_NODES = ("swarm-test-1", "swarm-test-2", "swarm-test-3")
PROD_NODES = ("swarm-1", "swarm-2", "swarm-3")
NODES = {"test": TEST_NODES, "prod": PROD_NODES}
LAB_LABEL = "io.cdtasks.lab"
REGISTRY_IMAGE = "cdtasks/registry-slim:2.8.2"
MB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def cluster(lab, env: str) -> Cluster:
    return Cluster.of(lab.settings(env)).discover()


def node_list(client) -> dict[str, dict]:
    """hostname -> node attrs, as one manager sees the swarm (every entry, stale ones included)."""
    out: dict[str, dict] = {}
    for n in client.api.nodes():
        name = n["Description"]["Hostname"]
        assert name not in out, f"two entries for {name} in the node list"
        out[name] = n
    return out


def assert_healthy_swarm(nodes: dict[str, dict], expected: tuple[str, ...]) -> None:
    assert sorted(nodes) == sorted(expected)
    for name, n in nodes.items():
        assert n["Status"]["State"] == "ready", f"{name}: {n['Status']}"
        assert n["Spec"]["Role"] == "manager", f"{name} is a {n['Spec']['Role']}"
        assert n["Spec"]["Availability"] == "active", name
    leaders = [name for name, n in nodes.items() if n["ManagerStatus"].get("Leader")]
    assert len(leaders) == 1, f"leaders: {leaders}"
    for name, n in nodes.items():
        if name not in leaders:
            assert n["ManagerStatus"]["Reachability"] == "reachable", (
                f"{name}: {n['ManagerStatus']}"
            )


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    """Poll until `predicate()` returns without an AssertionError; re-raise the last one."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        try:
            result = predicate()
            print(f"{what}: after {time.monotonic() - started:.1f}s")
            return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(poll)


def lab_objects(name: str) -> dict[str, list[str]]:
    """Everything on the host engine labelled as belonging to lab `name`."""
    host = docker.from_env()
    label = {"label": f"{LAB_LABEL}={name}"}
    return {
        "containers": [c.name for c in host.containers.list(all=True, filters=label)],
        "volumes": [v.name for v in host.volumes.list(filters=label)],
        "networks": [n.name for n in host.networks.list(filters=label)],
    }


def registry_tasks(manager) -> tuple[dict, dict[str, str]]:
    """(service inspect, hostname -> state of its task that should run there)."""
    svc = manager.api.inspect_service("registry")
    names = {n["ID"]: n["Description"]["Hostname"] for n in manager.api.nodes()}
    tasks = manager.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
    return svc, {names[t["NodeID"]]: t["Status"]["State"] for t in tasks}


def table_rows(stdout: str) -> list[list[str]]:
    """Cells of a rich table printed away from a terminal (box-drawing separators)."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        cells = [c for c in cells if c]
        if len(cells) > 1:
            rows.append(cells)
    return rows


WIDE = {"COLUMNS": "200"}  # keep rich from wrapping table cells


# -- the clusters ------------------------------------------------------------------------------
@pytest.mark.parametrize("env", ["test", "prod"])
def test_every_node_sees_three_ready_managers_one_leader(lab, env):
    c = cluster(lab, env)
    assert sorted(c.endpoints) == sorted(NODES[env]), "a machine is missing or not running"
    for node in NODES[env]:
        client = c.client(node)  # TLS, verified against the lab's CA
        info = client.info()
        assert info["Name"] == node
        assert info["Swarm"]["LocalNodeState"] == "active"
        assert info["Swarm"]["ControlAvailable"], f"{node} is not a manager"
        # Every manager sees the same, healthy list.
        assert_healthy_swarm(node_list(client), NODES[env])
    # The two clusters are two swarms, not one.
    other = cluster(lab, "prod" if env == "test" else "test")
    assert manager_of(c).swarm.attrs["ID"] != manager_of(other).swarm.attrs["ID"]


def test_node_labels(lab):
    test = node_list(manager_of(cluster(lab, "test")))
    prod = node_list(manager_of(cluster(lab, "prod")))
    assert test["swarm-test-1"]["Spec"].get("Labels") in ({}, None)
    for node in ("swarm-test-2", "swarm-test-3"):
        assert test[node]["Spec"]["Labels"] == {"env": "prod-like"}, node
    for node in PROD_NODES:
        assert prod[node]["Spec"]["Labels"] == {"env": "prod"}, node


@pytest.mark.parametrize("env", ["test", "prod"])
def test_registry_runs_on_every_node(lab, env):
    svc, tasks = registry_tasks(manager_of(cluster(lab, env)))
    spec = svc["Spec"]
    print(f"{env} registry tasks: {tasks}")
    assert tasks == {n: "running" for n in NODES[env]}
    # No IPVS in the lab's kernel: one task per node publishing in host mode (the mesh elsewhere).
    assert "Global" in spec["Mode"]
    assert spec["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0] == REGISTRY_IMAGE
    assert spec["TaskTemplate"]["Resources"]["Reservations"]["MemoryBytes"] == 100 * MB
    ports = spec["EndpointSpec"]["Ports"]
    assert [(p["PublishedPort"], p["TargetPort"]) for p in ports] == [(5000, 5000)]
    assert ports[0]["PublishMode"] == "host"


def test_image_pushed_via_test_cluster_is_pulled_via_prod(lab):
    """One registry directory behind both clusters' localhost:5000."""
    cd = cluster(lab, "test").client("swarm-test-1")
    prod = cluster(lab, "prod").client("swarm-2")
    token = uuid.uuid4().hex
    ref = f"localhost:5000/probe-{token[:12]}:1"
    # A layer of its own (not one swarm-2 already has), so the pull must fetch it.
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (
            ("Dockerfile", f"FROM {REGISTRY_IMAGE}\nCOPY probe.txt /probe.txt\n"),
            ("probe.txt", token),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            tar.addfile(info, io.BytesIO(data.encode()))
    context.seek(0)
    pushed, _ = cd.images.build(fileobj=context, custom_context=True, tag=ref, rm=True)
    started = time.monotonic()
    for line in cd.images.push(ref, stream=True, decode=True):
        assert "error" not in line, line
    print(f"push via swarm-test-1: {time.monotonic() - started:.1f}s")
    try:
        with pytest.raises(docker.errors.ImageNotFound):
            prod.images.get(ref)
        started = time.monotonic()
        pulled = prod.images.pull(ref)
        print(f"pull via swarm-2: {time.monotonic() - started:.1f}s")
        assert pulled.id == pushed.id
        # The file the push carried, read from the pulled image on swarm-2.
        box = prod.containers.create(ref)
        try:
            stream, _ = box.get_archive("/probe.txt")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                assert tar.extractfile("probe.txt").read().decode() == token
        finally:
            box.remove(force=True)
    finally:
        for client in (cd, prod):
            with contextlib.suppress(docker.errors.NotFound):
                client.images.remove(ref, force=True)


def test_registry_refuses_strangers(lab):
    """Every node's port 5000, from a container on the lab's network that is not a node."""
    nodes = TEST_NODES + PROD_NODES
    host = docker.from_env()
    addresses = [
        host.containers.get(lab.container(n)).attrs["NetworkSettings"]["Networks"][lab.name][
            "IPAddress"
        ]
        for n in nodes
    ]
    found = probe_registries(
        lab.name, addresses, lab.settings("test"), "probe", "1", (LAB_LABEL, lab.name)
    )
    print(found)
    for node, address in zip(nodes, addresses, strict=True):
        assert found[address] | {"repositories": None} == {
            "catalog with auth": 200,
            "repositories": None,
            "catalog": 401,
            "push": 401,
            "overwrite tag": 401,
            "delete": 401,
            "delete with auth": 405,
        }, (node, found[address])


def test_state_is_private(lab):
    """What the tool made under STATE_DIR: directories 0700, keys and credentials 0600."""
    s = lab.settings("test")
    root = s.cluster.state_dir / s.cluster.lab_name
    made = [
        root,
        s.registry.registry_dir,
        s.delivery.workspace_dir,
        registry.auth_dir(s),
        *[p for p in root.rglob("*") if p.is_dir() and s.delivery.workspace_dir not in p.parents],
    ]
    loose = {
        str(d): oct(d.stat().st_mode & 0o777) for d in made if d.stat().st_mode & 0o777 != 0o700
    }
    assert not loose, loose
    names = {
        "ca-key.pem",
        "key.pem",
        "server-key.pem",
        "host_key",
        "id_ed25519",
        "password",
        "htpasswd",
    }
    secret = [p for p in [*root.rglob("*"), *registry.auth_dir(s).iterdir()] if p.name in names]
    assert len(secret) >= 2 + 3 * len(NODES["test"] + NODES["prod"]), secret
    loose = {
        str(f): oct(f.stat().st_mode & 0o777) for f in secret if f.stat().st_mode & 0o777 != 0o600
    }
    assert not loose, loose


# -- reaching a node ---------------------------------------------------------------------------
def test_env_points_the_docker_cli_at_a_node(lab):
    proc = lab.inv("env", "swarm-test-1")
    exports = dict(re.findall(r"^export (\w+)=(.*)$", proc.stdout, re.M))
    print(proc.stdout)
    assert set(exports) == {"DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"}
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", exports["DOCKER_HOST"])
    assert exports["DOCKER_TLS_VERIFY"] == "1"
    # As in the book: point the shell at one node, then at another (the first node's DOCKER_*
    # variables must not be taken for this machine's engine, where the lab runs).
    cli = subprocess.run(
        [
            "bash",
            "-c",
            'eval "$(inv env swarm-test-1)" && '
            'docker node ls --format "{{.Hostname}}" && '
            'eval "$(inv env swarm-test-2)" && docker info --format "{{.Name}}"',
        ],
        cwd=ROOT,
        env=lab.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    *listed, second = cli.stdout.split()
    assert sorted(listed) == list(TEST_NODES)
    assert second == "swarm-test-2"

    # The API port speaks TLS only, and only to holders of the lab's client certificate.
    port = int(exports["DOCKER_HOST"].rsplit(":", 1)[1])
    try:
        r = requests.get(f"http://127.0.0.1:{port}/_ping", timeout=10)
    except requests.RequestException as exc:
        print(f"plain HTTP refused: {exc!r}")
    else:
        print(f"plain HTTP: {r.status_code} {r.text.strip()!r}")
        assert r.status_code == 400 and "HTTPS" in r.text
    cert_path = exports["DOCKER_CERT_PATH"].strip("'")
    with pytest.raises(requests.exceptions.SSLError):
        # Server verified against the lab's CA, but no client certificate offered.
        requests.get(f"https://127.0.0.1:{port}/_ping", verify=f"{cert_path}/ca.pem", timeout=10)


def _tampered_known_hosts(ep, tmp_path):
    """The lab's known_hosts with the node's entry holding another (valid) ed25519 key."""
    entry = f"[127.0.0.1]:{ep.ssh_port}"
    lines = ep.known_hosts.read_text().splitlines()
    assert any(ln.split()[0] == entry for ln in lines), f"{entry} not in {ep.known_hosts}"
    other = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    out = [f"{entry} {other}" if ln.split()[0] == entry else ln for ln in lines]
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(out) + "\n")
    return path


def test_ssh_verifies_the_host_key(lab, tmp_path):
    proc = lab.inv("ssh", "swarm-2", "--cmd", "hostname")
    assert proc.stdout.strip() == "swarm-2"

    ep = cluster(lab, "prod").endpoints["swarm-2"]
    with engine.ssh(ep) as conn:  # control: the same connection with the lab's known_hosts works
        assert conn.run("hostname", hide=True).stdout.strip() == "swarm-2"

    tampered = dataclasses.replace(ep, known_hosts=_tampered_known_hosts(ep, tmp_path))
    with pytest.raises(paramiko.BadHostKeyException) as exc, engine.ssh(tampered) as conn:
        conn.run("hostname", hide=True)
    print(f"tampered known_hosts: {exc.value!r}")

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with (
        pytest.raises(paramiko.SSHException) as exc,
        engine.ssh(dataclasses.replace(ep, known_hosts=empty)) as conn,
    ):
        conn.run("hostname", hide=True)
    print(f"unknown host: {exc.value!r}")


# -- bad input: refused, with the reason, before anything is created ---------------------------
def test_unknown_environment(lab):
    proc = lab.inv("provision", "--env", "staging", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "staging" in proc.stderr and "prod" in proc.stderr and "test" in proc.stderr
    assert "Traceback" not in proc.stderr
    print(proc.stderr.strip())


def test_unknown_node(lab):
    proc = lab.inv("ssh", "nosuch", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "nosuch" in proc.stderr
    assert all(n in proc.stderr for n in TEST_NODES), proc.stderr
    assert "Traceback" not in proc.stderr
    print(proc.stderr.strip())


def test_env_file_with_unknown_key(lab, tmp_path):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "test.env").write_text("BOGUS=1\n")
    name = f"cdt{uuid.uuid4().hex[:6]}"
    proc = lab.inv(
        "provision",
        "--env",
        "test",
        check=False,
        extra_env={"CDTASKS_ENV_DIR": str(env_dir), "CDTASKS_LAB_NAME": name},
    )
    print(proc.stderr.strip())
    assert proc.returncode == 2, proc.stderr
    assert str(env_dir / "test.env") in proc.stderr and "BOGUS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert lab_objects(name) == {"containers": [], "volumes": [], "networks": []}


def test_bad_value_from_process_environment(lab):
    name = f"cdt{uuid.uuid4().hex[:6]}"
    proc = lab.inv(
        "provision",
        "--env",
        "test",
        check=False,
        extra_env={"CDTASKS_REGISTRY_PORT": "abc", "CDTASKS_LAB_NAME": name},
    )
    print(proc.stderr.strip())
    assert proc.returncode == 2, proc.stderr
    assert "REGISTRY_PORT" in proc.stderr and "abc" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert lab_objects(name) == {"containers": [], "volumes": [], "networks": []}


def test_unreachable_docker(lab):
    proc = lab.inv("status", check=False, extra_env={"CDTASKS_DOCKER_HOST": "tcp://127.0.0.1:1"})
    print(proc.stderr.strip())
    assert proc.returncode != 0
    assert "cannot reach Docker at" in proc.stderr and "127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_taken_host_port(lab, tmp_path):
    """LAB_PORT_BASE whose first port (swarm-test-1's ssh) is in use: refused before creating."""
    name = f"cdt{uuid.uuid4().hex[:6]}"
    with socket.socket() as taken:
        while True:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            if port <= 64000:
                break
            taken.close()
            taken = socket.socket()
        taken.listen()
        try:
            proc = lab.inv(
                "provision",
                "--env",
                "test",
                check=False,
                timeout=300,
                extra_env={
                    "CDTASKS_LAB_NAME": name,
                    "CDTASKS_STATE_DIR": str(tmp_path),
                    "CDTASKS_LAB_PORT_BASE": str(port),
                },
            )
            print(proc.stderr.strip())
            assert proc.returncode != 0
            assert "already taken" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr
            assert "Traceback" not in proc.stderr
            assert lab_objects(name) == {"containers": [], "volumes": [], "networks": []}
        finally:
            if any(lab_objects(name).values()):  # only if the tool failed to refuse
                lab.inv(
                    "destroy",
                    "--env",
                    "test",
                    check=False,
                    extra_env={"CDTASKS_LAB_NAME": name, "CDTASKS_STATE_DIR": str(tmp_path)},
                )


# -- idempotence and repair --------------------------------------------------------------------
def test_second_provision_changes_nothing(lab):
    started = time.monotonic()
    proc = lab.inv("provision", extra_env=WIDE)
    seconds = time.monotonic() - started
    print(proc.stdout)
    print(f"second `inv provision` (both clusters): {seconds:.1f}s wall (README target: 3 s)")
    changes = {row[0]: row[1] for row in table_rows(proc.stdout) if row[0] in NODES}
    assert changes == {"test": "none (up to date)", "prod": "none (up to date)"}, proc.stdout
    assert seconds < 20


def test_provision_repairs_a_removed_machine(lab):
    docker.from_env().containers.get(lab.container("swarm-3")).remove(force=True)
    started = time.monotonic()
    proc = lab.inv("provision", "--env", "prod", extra_env=WIDE)
    print(proc.stdout)
    print(f"repair of swarm-3: {time.monotonic() - started:.1f}s wall")
    changes = {row[0]: row[1] for row in table_rows(proc.stdout) if row[0] in NODES}
    assert changes.get("prod", "").isdigit(), proc.stdout  # a count of changes, not "none"

    c = cluster(lab, "prod")
    assert sorted(c.endpoints) == list(PROD_NODES)
    manager = manager_of(c)

    def healthy():
        nodes = node_list(manager)  # exactly three entries: the dead swarm-3's is gone
        assert_healthy_swarm(nodes, PROD_NODES)
        assert nodes["swarm-3"]["Spec"]["Labels"] == {"env": "prod"}
        _, tasks = registry_tasks(manager)
        assert tasks == {n: "running" for n in PROD_NODES}, tasks
        return nodes

    wait_for(healthy, 30, "prod healthy after repair")
    # The new machine is itself a manager of the same swarm.
    info = c.client("swarm-3").info()["Swarm"]
    assert info["LocalNodeState"] == "active" and info["ControlAvailable"]
    assert info["Cluster"]["ID"] == manager.swarm.attrs["ID"]
