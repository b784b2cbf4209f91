"""The docker-machine stand-in (tests/standin/docker-machine) keeps docker-machine 0.16's
command-line contract: one real machine, driven only through the command line, checked the way a
user reaches it (the env it prints with the Docker SDK, ssh, the shared folder) and against what
the engine holds."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import subprocess
import uuid
from contextlib import closing
from pathlib import Path

import docker
import pytest
from docker.tls import TLSConfig

from cdtasks.providers.lab import LAB_LABEL, remove_labelled

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "standin" / "docker-machine"
NAME = "standin-1"
# The engine the stand-in puts its machines on, whatever DOCKER_HOST says.
LOCAL_ENGINE = "unix:///var/run/docker.sock"

try:
    _host = docker.DockerClient(base_url=LOCAL_ENGINE)
    _host.ping()
except Exception as exc:  # no socket, refused: no engine for this test
    pytest.fail(f"integration tests need a Docker engine at {LOCAL_ENGINE}: {exc}", pytrace=False)


class Standin:
    """docker-machine with its own storage path (so its own lab) and a VirtualBox shared folder."""

    def __init__(self, base: Path):
        self.storage = base / f"machine-{uuid.uuid4().hex[:8]}"
        self.share = base / "share"
        self.share.mkdir()
        self.lab = "dm" + hashlib.sha1(str(self.storage.resolve()).encode()).hexdigest()[:6]
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DOCKER_", "CDTASKS_", "MACHINE_", "VIRTUALBOX_"))
        }
        self.env.update(
            MACHINE_STORAGE_PATH=str(self.storage),
            VIRTUALBOX_SHARE_FOLDER=f"{self.share}:{self.share}",
        )

    def __call__(
        self, *args: str, input: str = "", timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(STANDIN), *args],
            env=self.env,
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
        )

    def ok(self, *args: str, **kw) -> str:
        proc = self(*args, **kw)
        assert proc.returncode == 0, f"docker-machine {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def fails(self, *args: str, message: str) -> None:
        proc = self(*args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert message in proc.stderr

    def engine_objects(self) -> list:
        label = {"label": f"{LAB_LABEL}={self.lab}"}
        return (
            _host.containers.list(all=True, filters=label)
            + _host.volumes.list(filters=label)
            + _host.networks.list(filters=label)
        )


@pytest.fixture
def dm(tmp_path):
    standin = Standin(tmp_path)
    try:
        yield standin
    finally:  # whatever failed: nothing of this lab stays on the engine (and only this lab's)
        remove_labelled(_host, standin.lab)


def machine_client(env: dict[str, str]) -> docker.DockerClient:
    """A client configured only from what `docker-machine env` printed."""
    assert env["DOCKER_TLS_VERIFY"] == "1"
    certs = Path(env["DOCKER_CERT_PATH"])
    tls = TLSConfig(
        client_cert=(str(certs / "cert.pem"), str(certs / "key.pem")),
        ca_cert=str(certs / "ca.pem"),
        verify=True,
    )
    client = docker.DockerClient(base_url=env["DOCKER_HOST"], tls=tls, timeout=30, version="1.41")
    client.api.trust_env = False  # else requests lets REQUESTS_CA_BUNDLE replace the machine's CA
    return client


def parse_env(output: str) -> dict[str, str]:
    lines = output.splitlines()
    assert lines[-2:] == [
        "# Run this command to configure your shell: ",
        f"# eval $(docker-machine env {NAME})",
    ]
    return dict(re.fullmatch(r'export (\w+)="(.*)"', line).groups() for line in lines[:-2])


def test_standin_keeps_the_docker_machine_contract(dm):
    out = dm.ok("create", "-d", "virtualbox", "--engine-label", "env=test", NAME, timeout=900)
    assert out.splitlines()[-2:] == [
        "Docker is up and running!",
        "To see how to connect your Docker Client to the Docker Engine running on this virtual "
        f"machine, run: docker-machine env {NAME}",
    ]
    dm.fails("create", NAME, message=f'Host already exists: "{NAME}"')
    assert dm.ok("ls", "--format", "{{.Name}} {{.State}}") == f"{NAME} Running\n"

    ip = ipaddress.IPv4Address(dm.ok("ip", NAME).strip())
    assert not ip.is_loopback

    env = parse_env(dm.ok("env", NAME))
    assert env["DOCKER_MACHINE_NAME"] == NAME
    assert Path(env["DOCKER_CERT_PATH"]) == dm.storage.resolve() / "machines" / NAME
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", env["DOCKER_HOST"])
    assert dm.ok("url", NAME).strip() == env["DOCKER_HOST"]
    with closing(machine_client(env)) as client:
        assert client.ping()
        assert client.info()["Name"] == NAME  # that machine's engine, not the host's

    # The shared folder: written on the host, read on the machine over ssh.
    (dm.share / "hello.txt").write_text("from the host\n")
    assert dm.ok("ssh", NAME, "cat", str(dm.share / "hello.txt")) == "from the host\n"
    assert dm("ssh", NAME, "false").returncode == 1
    assert dm("ssh", NAME, "--", "sh", "-c", "'exit 3'").returncode == 3

    certs = dm.storage.resolve() / "certs"
    assert dm.ok("config", NAME).splitlines() == [
        "--tlsverify",
        f'--tlscacert="{certs}/ca.pem"',
        f'--tlscert="{certs}/cert.pem"',
        f'--tlskey="{certs}/key.pem"',
        f"-H={env['DOCKER_HOST']}",
    ]
    host = json.loads(dm.ok("inspect", NAME))
    assert host["Name"] == NAME and host["DriverName"] == "virtualbox"
    assert host["Driver"]["IPAddress"] == str(ip) and host["Driver"]["SSHPort"] > 0
    assert host["Driver"]["ShareFolder"] == f"{dm.share.resolve()}:{dm.share}"
    assert host["HostOptions"]["EngineOptions"]["Labels"] == ["env=test"]
    ssh_port = dm.ok("inspect", "-f", "{{.Driver.SSHPort}}", NAME).strip()
    assert ssh_port == str(host["Driver"]["SSHPort"])

    # Refused before anything is made.
    dm.fails(
        "create",
        "-d",
        "nosuch",
        "other",
        message='Driver "nosuch" not found. Do you have the plugin binary '
        '"docker-machine-driver-nosuch" accessible in your PATH?',
    )
    dm.fails(
        "create",
        "--no-such-flag",
        "x",
        "other",
        message="Incorrect Usage: flag provided but not defined: -no-such-flag",
    )
    dm.fails("create", "bad_name", message="Error creating machine: Invalid hostname specified.")
    assert dm.ok("ls", "-q") == f"{NAME}\n"
    dm.fails("ip", "other", message='Host does not exist: "other"')

    assert 'Machine "standin-1" was stopped.' in dm.ok("stop", NAME)
    assert dm.ok("status", NAME) == "Stopped\n"
    dm.fails("env", NAME, message="Error checking TLS connection: Host is not running")
    assert 'Machine "standin-1" was started.' in dm.ok("start", NAME)
    with closing(machine_client(parse_env(dm.ok("env", NAME)))) as client:
        assert client.ping()

    assert dm.ok("rm", NAME, input="n\n").endswith("Are you sure? (y/n): ")
    assert dm.ok("ls", "-q") == f"{NAME}\n"

    # The machine's VM vanishes behind docker-machine's back: ls says so, rm -f cleans up.
    _host.containers.get(f"{dm.lab}-{NAME}").remove(force=True)
    assert (
        dm.ok("ls", "--format", "{{.Name}} {{.State}} {{.URL}}|{{.Error}}")
        == f"{NAME} Error |machine does not exist\n"
    )
    assert dm.ok("rm", "-f", NAME).splitlines() == [
        f"About to remove {NAME}",
        "WARNING: This action will delete both local reference and remote instance.",
        f"Successfully removed {NAME}",
    ]
    assert dm.ok("ls", "-q") == ""
    assert dm.engine_objects() == []
