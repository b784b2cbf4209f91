"""Every task, unchanged, on the other providers, chosen by PROVIDER= in the env files:

- docker-machine: the stand-in `docker-machine` (tests/standin) on PATH, backed by lab machines;
  the provider code is the one a user runs with the real binary.
- ssh: lab machines (no swarm, nothing of the tool on them) reached as existing servers over SSH
  on their 127.0.0.1 ports, with strict host keys.

The flow is the lab's: provision -> services -> deliver -> deploy -> destroy, on smaller
clusters (2 test nodes, 1 production node) to keep CI time down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import docker
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from dotenv import dotenv_values

from cdtasks import config, engine, rollout, services, stack
from cdtasks.cluster import Cluster
from cdtasks.providers.lab import LAB_LABEL, NODE_LABEL, LabProvider

from .conftest import ROOT, Lab, manager_of, probe_registries

STANDIN = ROOT / "tests" / "standin"
TEST_NODES, PROD_NODES = ("swarm-test-1", "swarm-test-2"), ("swarm-1",)
STACK = "go-demo"  # STACK_NAME: the release's delivered records
SERVICE = f"{STACK}_main"  # the Swarm service that runs the sample's image (demo/stack.yml)
# One proxy per cluster (host-mode port 80 on the one prod-like node and the one prod node): the
# sample stack's variables with PROXY_REPLICAS=1, the rest as each env file sets them.
CLUSTERS = {
    "test": dict(
        NODES=",".join(TEST_NODES),
        CD_NODE="swarm-test-1",
        NODE_LABELS="swarm-test-2:env=prod-like",
        STACK_VARIABLES="PLACEMENT='node.labels.env == prod-like' REPLICAS=2 PROXY_REPLICAS=1",
    ),
    "prod": dict(
        NODES=",".join(PROD_NODES),
        CD_NODE="swarm-1",
        NODE_LABELS="swarm-1:env=prod",
        STACK_VARIABLES="PLACEMENT='node.labels.env == prod' REPLICAS=2 PROXY_REPLICAS=1 "
        "APP_MEMORY=50M DB_MEMORY=150M",
    ),
}


def write_envs(env_dir: Path, per_env: dict[str, dict]) -> None:
    """The project's env files with this world's keys changed."""
    env_dir.mkdir(parents=True, exist_ok=True)
    for env, changes in per_env.items():
        values = {**dotenv_values(ROOT / "env" / f"{env}.env"), **CLUSTERS[env], **changes}
        (env_dir / f"{env}.env").write_text(
            "".join(f"{k}={json.dumps(v) if ' ' in v else v}\n" for k, v in values.items())
        )


class World(Lab):
    """A Lab whose `inv` runs with this world's env files; machines found by their lab."""

    provider: str = ""
    backing_lab: str = ""  # the lab whose containers back the machines or servers

    def node_container(self, node: str):
        found = docker.from_env().containers.list(
            all=True, filters={"label": [f"{LAB_LABEL}={self.backing_lab}", f"{NODE_LABEL}={node}"]}
        )
        return found[0] if found else None

    def http_port(self, node: str) -> int:
        c = self.node_container(node)
        return int(c.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])


def _base_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CDTASKS_", "DOCKER_"))}


def _machine_world(tmp: Path) -> World:
    storage = tmp / "machines"
    env = _base_env()
    env.update(
        PATH=f"{STANDIN}{os.pathsep}{env['PATH']}",
        MACHINE_STORAGE_PATH=str(storage),
        CDTASKS_ENV_DIR=str(tmp / "env"),
    )
    common = dict(
        PROVIDER="docker-machine",
        MACHINE_DRIVER="virtualbox",
        MACHINE_OPTIONS="--virtualbox-memory 1024",
        STATE_DIR=str(tmp / "state"),
    )
    write_envs(tmp / "env", {"test": common, "prod": common})
    world = World(f"dm-{tmp.name}", tmp / "state", env)
    world.provider = "docker-machine"
    # The stand-in's lab: one per machine store (see tests/standin/docker-machine).
    world.backing_lab = "dm" + hashlib.sha1(str(storage.resolve()).encode()).hexdigest()[:6]
    return world


def _ssh_world(tmp: Path) -> World:
    """Servers first: lab machines only, as if someone had installed Docker on three hosts.
    They mount a shared registry directory (the NFS share such servers would have), but not
    the tool's workspace: checkouts must be copied to the CD node."""
    shared = tmp / "shared-registry"
    name = f"srv{uuid.uuid4().hex[:6]}"
    servers = config.load(
        "test",
        {
            "LAB_NAME": name,
            "STATE_DIR": str(tmp / "servers"),
            "NODES": ",".join(TEST_NODES + PROD_NODES),
            "CD_NODE": TEST_NODES[0],
            "NODE_LABELS": "",
            "REGISTRY_DIR": str(shared),
            "WORKSPACE_DIR": str(tmp / "servers" / "unused"),
        },
        environ={},
    )
    prov = LabProvider(servers)
    eps = prov.ensure(servers.cluster.nodes, print)

    def hosts(nodes):
        return ",".join(f"{n}=root@127.0.0.1:{eps[n].ssh_port}" for n in nodes)

    common = dict(
        PROVIDER="ssh",
        SSH_KEY=str(prov.ssh_key),
        SSH_KNOWN_HOSTS=str(prov.known_hosts),
        SSH_PARALLEL="2",
        STATE_DIR=str(tmp / "state"),
        REGISTRY_DIR=str(shared),
        WORKSPACE_DIR=str(tmp / "workspace"),
    )
    # Production's default key is one no server accepts: its host gets in with its own key.
    refused = tmp / "refused_ed25519"
    refused.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    refused.chmod(0o600)
    write_envs(
        tmp / "env",
        {
            "test": {**common, "SSH_HOSTS": hosts(TEST_NODES)},
            "prod": {
                **common,
                "SSH_HOSTS": hosts(PROD_NODES),
                "SSH_KEY": str(refused),
                "SSH_KEYS": ",".join(f"{n}={prov.ssh_key}" for n in PROD_NODES),
            },
        },
    )
    env = {**_base_env(), "CDTASKS_ENV_DIR": str(tmp / "env")}
    world = World(name, tmp / "state", env)
    world.provider, world.backing_lab = "ssh", name
    world.servers = (prov, servers)
    return world


@pytest.fixture(scope="module", params=["docker-machine", "ssh"])
def world(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param.replace("-", ""))
    w = _machine_world(tmp) if request.param == "docker-machine" else _ssh_world(tmp)
    # This process inspects the clusters too: with the same docker-machine and machine store.
    saved = {k: os.environ.get(k) for k in ("PATH", "MACHINE_STORAGE_PATH")}
    os.environ.update({k: w.env[k] for k in saved if k in w.env})
    yield w
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    w.inv("destroy", "--purge", check=False)
    if w.provider == "ssh":
        prov, servers = w.servers
        prov.remove(servers.cluster.nodes, print, purge=True)


def _cluster(world: World, env: str) -> Cluster:
    return Cluster.of(world.settings(env)).discover()


def _task_images(manager, service=SERVICE):
    tasks = manager.api.tasks(filters={"service": service, "desired-state": "running"})
    return [t["Spec"]["ContainerSpec"]["Image"] for t in tasks if t["Status"]["State"] == "running"]


# -- the flow -----------------------------------------------------------------------------------
def test_provision(world):
    proc = world.inv("provision")
    assert "Traceback" not in proc.stderr
    for env, nodes in (("test", TEST_NODES), ("prod", PROD_NODES)):
        c = _cluster(world, env)
        kind = "ssh://" if world.provider == "ssh" else "tcp://"
        assert all(ep.docker_host.startswith(kind) for ep in c.endpoints.values())
        members = {
            n.attrs["Description"]["Hostname"]: n.attrs for n in manager_of(c).client.nodes.list()
        }
        assert sorted(members) == sorted(nodes)
        assert all(m["Status"]["State"] == "ready" for m in members.values())
        assert all(m["Spec"]["Role"] == "manager" for m in members.values())
        for node, key, value in world.settings(env).cluster.node_labels:
            assert members[node]["Spec"]["Labels"].get(key) == value
        running, wanted, _ = services.running_tasks(manager_of(c), "registry")
        assert running == wanted == len(nodes)
    again = world.inv("provision")
    assert again.stdout.count("none (up to date)") == 2, again.stdout


def test_status_env_and_ssh_reach_the_nodes(world):
    status = world.inv("status").stdout
    for node in TEST_NODES + PROD_NODES:
        assert any(
            f" {node} " in line and "ready" in line.lower() for line in status.splitlines()
        ), status
    proc = world.inv("env", "swarm-test-1")
    if world.provider == "ssh":  # the docker CLI's own ssh, with the user's SSH setup
        assert re.search(r"^export DOCKER_HOST=ssh://root@127\.0\.0\.1:\d+$", proc.stdout, re.M)
    else:  # docker-machine's own `env`, as the book evals it; the docker CLI gets in with it
        assert "export DOCKER_MACHINE_NAME=swarm-test-1" in proc.stdout
        cli = subprocess.run(
            [
                "bash",
                "-c",
                'eval "$(inv env swarm-test-1)" && docker info '
                '--format "{{.Name}} {{.Swarm.LocalNodeState}}"',
            ],
            cwd=ROOT,
            env=world.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.split() == ["swarm-test-1", "active"]
    assert world.inv("ssh", "swarm-test-2", "--cmd", "hostname").stdout.strip() == "swarm-test-2"


def test_services(world):
    world.inv("services")
    test = world.settings("test")
    c = _cluster(world, "test")
    for node in stack.proxy_nodes(c, test.services):
        r = requests.get(f"http://127.0.0.1:{world.http_port(node)}/demo/hello", timeout=10)
        assert r.status_code == 200 and "hello" in r.text.lower()
    assert world.inv("services", "--check").returncode == 0


def test_deliver(world):
    proc = world.inv(
        "deliver",
        "--version",
        "1.1",
        extra_env={"CDTASKS_REPORTS_DIR": str(world.state_dir / "reports")},
    )
    test = manager_of(_cluster(world, "test"))
    record = [r for r in rollout.delivered(test, STACK) if r["version"] == "1.1"][-1]
    images = _task_images(test)
    assert len(images) == 2 and all(i.endswith("@" + record["digest"]) for i in images), images
    if world.provider == "ssh":  # the checkout went to the CD node, and went away after
        assert "copied the checkout to swarm-test-1" in proc.stdout + proc.stderr
        ws = world.settings("test").delivery.workspace_dir
        listing = world.inv("ssh", "swarm-test-1", "--cmd", f"ls -A {ws}").stdout.split()
        assert listing == [], listing


def test_deploy(world):
    world.inv("deploy", "--env", "prod", "--version", "1.1")
    record = [
        r
        for r in rollout.delivered(manager_of(_cluster(world, "test")), STACK)
        if r["version"] == "1.1"
    ][-1]
    images = _task_images(manager_of(_cluster(world, "prod")))
    assert len(images) == 2 and all(i.endswith("@" + record["digest"]) for i in images), images
    hist = world.inv("history", "--env", "prod").stdout
    assert "1.1" in hist and "deployed" in hist


def test_registry_refuses_strangers(world):
    """Every node's registry (port 5000), from a container on the machines' network that is not
    a node: no push, tag overwrite, delete or even listing without the tool's credentials;
    with them the catalog answers, and deletes stay off."""
    nodes = TEST_NODES + PROD_NODES
    addresses = [
        world.node_container(n).attrs["NetworkSettings"]["Networks"][world.backing_lab]["IPAddress"]
        for n in nodes
    ]
    found = probe_registries(
        world.backing_lab,
        addresses,
        world.settings("test"),
        "go-demo",
        "1.1",
        (LAB_LABEL, world.backing_lab),
    )
    print(json.dumps(found, indent=1))
    for node, address in zip(nodes, addresses, strict=True):
        got = found[address]
        assert got["catalog with auth"] == 200 and "go-demo" in got["repositories"], (node, got)
        assert {k: got[k] for k in ("catalog", "push", "overwrite tag", "delete")} == {
            "catalog": 401,
            "push": 401,
            "overwrite tag": 401,
            "delete": 401,
        }, (node, got)
        assert got["delete with auth"] == 405, (node, got)


# -- what each provider refuses ----------------------------------------------------------------
def _tampered(known_hosts: Path, tmp: Path) -> Path:
    """known_hosts whose every entry holds another valid ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    path = tmp / "tampered_known_hosts"
    path.write_text(
        "".join(f"{ln.split()[0]} {other}\n" for ln in known_hosts.read_text().splitlines())
    )
    return path


def test_refusals(world, tmp_path):
    before = _task_images(manager_of(_cluster(world, "prod")))
    if world.provider == "ssh":
        known = world.settings("prod").ssh.ssh_known_hosts
        changed = world.inv(
            "provision",
            "--env",
            "prod",
            check=False,
            extra_env={"CDTASKS_SSH_KNOWN_HOSTS": str(_tampered(known, tmp_path))},
        )
        assert changed.returncode == 3, changed.stderr
        assert "CHANGED" in changed.stderr and "ssh-keygen -R" in changed.stderr
        assert "SHA256:" in changed.stderr and "Traceback" not in changed.stderr
        empty = tmp_path / "empty"
        empty.write_text("")
        unknown = world.inv(
            "provision",
            "--env",
            "prod",
            check=False,
            extra_env={"CDTASKS_SSH_KNOWN_HOSTS": str(empty)},
        )
        assert unknown.returncode == 3 and "ssh-keyscan -p" in unknown.stderr, unknown.stderr
        print(changed.stderr, unknown.stderr, sep="\n")
        # Every task names the key, not "no manager answers".
        for args in (("status", "--env", "prod"), ("deploy", "--env", "prod", "--version", "1.1")):
            for known_hosts, says in (
                (_tampered(known, tmp_path), "CHANGED"),
                (empty, "ssh-keyscan -p"),
            ):
                proc = world.inv(
                    *args, check=False, extra_env={"CDTASKS_SSH_KNOWN_HOSTS": str(known_hosts)}
                )
                print(f"inv {' '.join(args)}: {proc.stderr.strip()}")
                assert proc.returncode == 3, proc.stderr
                assert says in proc.stderr and "SHA256:" in proc.stderr, proc.stderr
                assert "no manager" not in proc.stderr and "Traceback" not in proc.stderr
    else:
        no_binary = world.inv(
            "provision", "--env", "prod", check=False, extra_env={"PATH": os.defpath}
        )
        assert no_binary.returncode == 3 and "not on PATH" in no_binary.stderr, no_binary.stderr
        bad = world.inv(
            "provision",
            "--env",
            "prod",
            check=False,
            extra_env={
                "CDTASKS_NODES": "swarm-9",
                "CDTASKS_CD_NODE": "swarm-9",
                "CDTASKS_NODE_LABELS": "",
                "CDTASKS_MACHINE_DRIVER": "nosuch",
            },
        )
        assert bad.returncode == 3, bad.stderr
        assert "machine swarm-9" in bad.stderr and 'Driver "nosuch" not found' in bad.stderr
        ls = subprocess.run(
            ["docker-machine", "ls", "-q"],
            env=world.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert "swarm-9" not in ls, ls
        print(no_binary.stderr, bad.stderr, sep="\n")
    assert _task_images(manager_of(_cluster(world, "prod"))) == before


def test_destroy(world):
    if world.provider == "docker-machine":
        # A machine in state Error is named by provision, and destroy still removes it.
        world.node_container("swarm-1").remove(force=True)  # the VM vanished behind its back
        proc = world.inv("provision", "--env", "prod", check=False)
        assert proc.returncode == 3, proc.stderr
        assert "machine swarm-1 is in state Error" in proc.stderr
        assert "docker-machine rm -f" in proc.stderr
    else:
        # A half-gone cluster: one of the two test managers left behind the tool's back, so the
        # other lost quorum and cannot even describe its swarm; destroy must still get it out.
        prov, servers = world.servers
        engine.client(prov.endpoints(["swarm-test-1"])["swarm-test-1"]).api.leave_swarm(force=True)
    proc = world.inv("destroy", "--purge")
    if world.provider == "docker-machine":
        ls = subprocess.run(
            ["docker-machine", "ls", "-q"],
            env=world.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert not set(ls) & set(TEST_NODES + PROD_NODES), ls
        assert (
            docker.from_env().containers.list(
                all=True, filters={"label": f"{LAB_LABEL}={world.backing_lab}"}
            )
            == []
        )
    else:
        # Servers are not ours to delete: they left the swarm, the registry's data is gone.
        prov, servers = world.servers
        states = {
            n: engine.client(ep).info()["Swarm"]["LocalNodeState"]
            for n, ep in prov.endpoints(servers.cluster.nodes).items()
        }
        assert states == {n: "inactive" for n in servers.cluster.nodes}, (states, proc.stdout)
        left = sorted(
            str(p.relative_to(servers.registry.registry_dir))
            for p in servers.registry.registry_dir.rglob("*")
        )
        assert left == [], (left, proc.stdout)
