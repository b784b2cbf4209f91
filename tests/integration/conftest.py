"""One real lab per test run, shared by the integration tests: both clusters provisioned with the
tool's own CLI, under names of this run only (so leftovers from other runs don't matter)."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Lab:
    name: str
    state_dir: Path
    env: dict

    def inv(self, *args: str, check: bool = True, timeout: float = 900,
            extra_env: dict | None = None) -> subprocess.CompletedProcess:
        """Run `inv ARGS` as a user would, in this lab; output is kept for assertions."""
        proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, text=True,
                              capture_output=True, timeout=timeout,
                              env={**self.env, **(extra_env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"inv {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
        return proc

    def settings(self, env: str):
        from cdtasks import config
        return config.load(env, environ=self.env, project_dir=ROOT)

    def container(self, node: str) -> str:
        return f"{self.name}-{node}"

    def http_port(self, node: str) -> int:
        """127.0.0.1 port on which the host reaches a node's port 80."""
        c = docker.from_env().containers.get(self.container(node))
        return int(c.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> Lab:
    try:
        docker.from_env().ping()
    except Exception as exc:
        pytest.fail(f"integration tests need a Docker engine: {exc}")
    name = f"cdt{uuid.uuid4().hex[:6]}"
    state = tmp_path_factory.mktemp("state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDTASKS_", "DOCKER_"))}
    env.update(CDTASKS_LAB_NAME=name, CDTASKS_STATE_DIR=str(state))
    lab = Lab(name, state, env)
    lab.inv("provision")
    yield lab
    # Whatever the tests did, leave nothing of this run behind (the destroy test checks it).
    lab.inv("destroy", "--purge", check=False)


@pytest.fixture(scope="session")
def stack(lab: Lab) -> Lab:
    lab.inv("services")
    return lab
