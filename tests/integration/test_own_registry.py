"""Your own registry (REGISTRY_URL) end to end, on a lab of its own (one node per cluster): a
real registry server on the lab's network that requires a login over TLS, with a CA made for
this test. Provision gives every node the CA and proves the login; services, deliver, deploy
and rollback push to and pull from it; production runs the digest the registry holds; the
password appears in no output, report or record."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
import uuid
from pathlib import Path

import bcrypt
import docker
import pytest

from cdtasks import registry, rollout
from cdtasks.cluster import Cluster
from cdtasks.providers import certs
from cdtasks.providers.lab import LAB_LABEL, remove_labelled

from .conftest import ROOT, Lab, manager_of

ALIAS, PORT, PATH = "team-registry", 5443, "team"
URL = f"{ALIAS}:{PORT}/{PATH}"
# One node per cluster keeps the lab small: the test node is the CD node and prod-like.
PER_ENV = {
    "test": {"NODES": "rt-1", "NODE_LABELS": "rt-1:env=prod-like", "CD_NODE": "rt-1"},
    "prod": {"NODES": "rp-1", "NODE_LABELS": "rp-1:env=prod", "CD_NODE": "rp-1"},
}
# The sample stack's variables per cluster: one replica of the application and of the proxy,
# no memory reserved beyond the stack file's token (APP_MEMORY and DB_MEMORY left to it).
SMALL = {
    env: {"STACK_VARIABLES": f"PLACEMENT='node.labels.env == {label}' REPLICAS=1 PROXY_REPLICAS=1"}
    for env, label in (("test", "prod-like"), ("prod", "prod"))
}
STACK = "go-demo"  # STACK_NAME: the release's delivered records
SERVICE = f"{STACK}_main"  # the Swarm service that runs the sample's image (demo/stack.yml)

# Asks the registry itself (over TLS, verified against the test's CA) for a manifest's digest.
DIGEST_PROBE = r"""
import base64, os, ssl, urllib.request
ctx = ssl.create_default_context(cafile="/certs/ca.pem")
req = urllib.request.Request(os.environ["URL"], method="HEAD", headers={
    "Accept": "application/vnd.docker.distribution.manifest.v2+json",
    "Authorization": "Basic " + base64.b64encode(os.environ["AUTH"].encode()).decode()})
with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
    print(r.headers["Docker-Content-Digest"])
"""


def _env_files(target: Path) -> Path:
    """The project's env files with this test's small layout: each key replaced in place,
    or added where the file does not set it."""
    shutil.copytree(ROOT / "env", target, ignore=shutil.ignore_patterns("examples"))
    for env, keys in PER_ENV.items():
        path = target / f"{env}.env"
        text = path.read_text()
        for key, value in {**keys, **SMALL[env]}.items():
            line = f"{key}={value}"
            text, n = re.subn(rf"(?m)^{key}=.*$", line, text)
            text += "" if n else f"\n{line}\n"
        path.write_text(text)
    return target


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    host = docker.from_env()
    name = f"cdt{uuid.uuid4().hex[:6]}"
    work = tmp_path_factory.mktemp("own-registry")
    # The registry's TLS: a CA of this test and a certificate for the alias nodes reach it by.
    certs.ensure_ca(work / "ca")
    certs.server_cert(work / "ca", work / "certs", [ALIAS])
    password = secrets.token_urlsafe(24)
    (work / "certs" / "htpasswd").write_bytes(
        b"team:" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)) + b"\n"
    )
    (work / "password").write_text(password + "\n")
    for f in (work / "certs").iterdir():
        f.chmod(0o644)  # read by the registry's process in its container
    # The lab's network made first, labelled as the lab makes it (provision then adopts it), so
    # the registry answers before provision logs every node in.
    host.networks.create(name, driver="bridge", labels={LAB_LABEL: name})
    host.containers.run(
        "cdtasks/registry-slim:2.8.2",
        name=f"{name}-team-registry",
        detach=True,
        network=name,
        volumes={str(work / "certs"): {"bind": "/certs", "mode": "ro"}},
        environment={
            "REGISTRY_HTTP_ADDR": f":{PORT}",
            "REGISTRY_HTTP_TLS_CERTIFICATE": "/certs/server-cert.pem",
            "REGISTRY_HTTP_TLS_KEY": "/certs/server-key.pem",
            "REGISTRY_AUTH": "htpasswd",
            "REGISTRY_AUTH_HTPASSWD_REALM": "team",
            "REGISTRY_AUTH_HTPASSWD_PATH": "/certs/htpasswd",
        },
    )
    host.api.disconnect_container_from_network(f"{name}-team-registry", name)
    host.api.connect_container_to_network(f"{name}-team-registry", name, aliases=[ALIAS])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDTASKS_", "DOCKER_"))}
    env.update(
        CDTASKS_LAB_NAME=name,
        CDTASKS_STATE_DIR=str(work / "state"),
        CDTASKS_ENV_DIR=str(_env_files(work / "env")),
        CDTASKS_REPORTS_DIR=str(work / "reports"),
        CDTASKS_REGISTRY_URL=URL,
        CDTASKS_REGISTRY_USER="team",
        CDTASKS_REGISTRY_PASSWORD_FILE=str(work / "password"),
        CDTASKS_REGISTRY_CA_FILE=str(work / "ca" / "ca.pem"),
    )
    lab = Lab(name, work / "state", env)
    lab.outputs = []
    try:
        yield lab, work, password
    finally:  # the registry first: the lab removes its network only when nothing uses it
        host.containers.get(f"{name}-team-registry").remove(force=True)
        lab.inv("destroy", "--purge", check=False)
        remove_labelled(host, name)


def _inv(lab, *args) -> str:
    proc = lab.inv(*args)
    lab.outputs.append(proc.stdout + proc.stderr)
    return proc.stdout + proc.stderr


def _manager(lab, env):
    return manager_of(Cluster.of(lab.settings(env)).discover())


def running_images(manager, service: str = SERVICE) -> list[str]:
    tasks = manager.api.tasks(filters={"service": service, "desired-state": "running"})
    return [t["Spec"]["ContainerSpec"]["Image"] for t in tasks if t["Status"]["State"] == "running"]


def _pushed_digest(lab, work: Path, password: str, version: str) -> str:
    """The digest the registry itself serves for go-demo:VERSION."""
    out = docker.from_env().containers.run(
        "cdtasks/python:3.11",
        ["python3", "-c", DIGEST_PROBE],
        network=lab.name,
        remove=True,
        volumes={str(work / "certs"): {"bind": "/certs", "mode": "ro"}},
        environment={
            "URL": f"https://{ALIAS}:{PORT}/v2/{PATH}/go-demo/manifests/{version}",
            "AUTH": f"team:{password}",
        },
    )
    return out.decode().strip().splitlines()[-1]


def test_own_registry_end_to_end(own):
    lab, work, password = own
    started = time.monotonic()
    out = _inv(lab, "provision")
    assert "no registry service is created" in out, out
    ca = (work / "ca" / "ca.pem").read_text()
    host = docker.from_env()
    for node in ("rt-1", "rp-1"):
        found = host.containers.get(f"{lab.name}-{node}").exec_run(
            ["cat", f"/etc/docker/certs.d/{ALIAS}:{PORT}/ca.crt"]
        )
        assert found.exit_code == 0 and found.output.decode() == ca, (node, found)
    assert "none (up to date)" in _inv(lab, "provision")  # the CA is not written again
    for env in ("test", "prod"):
        assert registry.NAME not in {s["Spec"]["Name"] for s in _manager(lab, env).api.services()}
    provisioned = time.monotonic()

    _inv(lab, "services")
    assert running_images(_manager(lab, "prod")) == [f"{URL}/go-demo:1.0"]
    _inv(lab, "deliver", "--version", "2.0")
    delivered = [
        r for r in rollout.delivered(_manager(lab, "test"), STACK) if r["version"] == "2.0"
    ][-1]
    pushed = _pushed_digest(lab, work, password, "2.0")
    assert delivered["digest"] == pushed

    out = _inv(lab, "deploy", "--env", "prod")
    assert "deployed (2.0" in out, out
    assert running_images(_manager(lab, "prod")) == [f"{URL}/go-demo:2.0@{pushed}"]

    _inv(lab, "rollback", "--env", "prod", "--version", "1.0")
    assert running_images(_manager(lab, "prod")) == [
        f"{URL}/go-demo:1.0@{_pushed_digest(lab, work, password, '1.0')}"
    ]
    history = _inv(lab, "history", "--env", "prod", "--json")
    assert "rollback" in history and pushed in history

    # The password is in no output, report, record or service spec.
    reports = [p.read_text(errors="replace") for p in (work / "reports").rglob("*") if p.is_file()]
    assert reports
    specs = [json.dumps(s) for env in ("test", "prod") for s in _manager(lab, env).api.services()]
    for text in [*lab.outputs, *reports, *specs]:
        assert password not in text
    print(
        f"own registry: provision {provisioned - started:.0f}s, services to rollback "
        f"{time.monotonic() - provisioned:.0f}s"
    )


def test_bad_registry_settings_are_refused_before_anything_runs(own, tmp_path):
    lab, work, password = own
    for extra, said in (
        ({"CDTASKS_REGISTRY_URL": f"https://{URL}"}, "has a scheme"),
        ({"CDTASKS_REGISTRY_URL": f"team:{password}@{URL}"}, "holds credentials"),
        ({"CDTASKS_REGISTRY_PASSWORD_FILE": str(tmp_path / "none")}, "No such file"),
    ):
        proc = lab.inv("provision", check=False, extra_env=extra)
        assert proc.returncode == 2, proc
        assert said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert password not in proc.stdout + proc.stderr


def test_a_wrong_password_stops_provision_naming_the_node(own, tmp_path):
    lab, _, password = own
    (tmp_path / "wrong").write_text(password[::-1] + "\n")
    proc = lab.inv(
        "provision",
        check=False,
        extra_env={"CDTASKS_REGISTRY_PASSWORD_FILE": str(tmp_path / "wrong")},
    )
    assert proc.returncode == 3, proc
    assert re.search(
        rf"r[tp]-1 cannot log in to {ALIAS}:{PORT} as team: .*401 Unauthorized", proc.stderr
    ), proc.stderr
    assert password not in proc.stdout + proc.stderr
    assert password[::-1] not in proc.stdout + proc.stderr
