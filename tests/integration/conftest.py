"""One real lab per test run, shared by the integration tests: both clusters provisioned with the
tool's own CLI, under names of this run only (so leftovers from other runs don't matter)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    """The integration tests share one lab (session-scoped) and build on each other in file
    order: under xdist (pytest.ini) they are one group, run in order by one worker. The team's
    stack (test_*stack*: the `team` fixture, which needs only a provisioned lab) is a second
    group: its worker builds a lab of its own and runs it beside the book's, since both mostly
    wait on Swarm (CI's time is the longer group's, not their sum)."""
    for item in items:
        path = Path(item.path)
        if HERE in path.parents:
            group = "lab-stack" if "_stack" in path.stem else "lab"
            item.add_marker(pytest.mark.xdist_group(group))


GIT_ID = ["-c", "user.name=cdtasks tests", "-c", "user.email=tests@cdtasks.invalid"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *GIT_ID, *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


def sample_repository(path: Path, message: str | None = None) -> Path:
    """This project's demo/ at HEAD in a git repository of its own at `path` (branch main),
    committed with `message`, or left with no commit yet when None."""
    archive = subprocess.run(
        ["git", "archive", "HEAD", "demo"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    git(path, "init", "--quiet", "-b", "main")
    if message is not None:
        git(path, "add", "-A")
        git(path, "commit", "--quiet", "-m", message)
    return path


def app_repository(app: Path, path: Path, message: str) -> Path:
    """A test application of tests/apps as a git repository of its own at `path` (branch
    main, one commit with `message`), as its team would keep it."""
    shutil.copytree(
        app, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    git(path, "init", "--quiet", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", message)
    return path


class Manager:
    """A cluster's manager as the tests hold it: the gateway the library takes (its methods are
    this object's) and `client`/`api`/`swarm`, the SDK of the manager it answers through (what a
    test inspects directly)."""

    def __init__(self, cluster):
        self.gateway = cluster.gateway()
        self.client = cluster.client(self.gateway.manager_name())
        self.api, self.swarm = self.client.api, self.client.swarm

    def __getattr__(self, name: str):
        return getattr(self.gateway, name)


def manager_of(cluster) -> Manager:
    return Manager(cluster)


@dataclass
class Lab:
    name: str
    state_dir: Path
    env: dict

    def inv(
        self, *args: str, check: bool = True, timeout: float = 900, extra_env: dict | None = None
    ) -> subprocess.CompletedProcess:
        """Run `inv ARGS` as a user would, in this lab; output is kept for assertions."""
        proc = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=timeout,
            env={**self.env, **(extra_env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"inv {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )
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
    # Reports go under this lab's state, never into the project's reports/: the stack group's
    # lab runs beside this one and the CI recipes' test reads what lands there.
    env.update(
        CDTASKS_LAB_NAME=name,
        CDTASKS_STATE_DIR=str(state),
        CDTASKS_REPORTS_DIR=str(state / "reports"),
    )
    lab = Lab(name, state, env)
    try:
        lab.inv("provision")
        yield lab
    finally:
        # Whatever the tests did (a failed provision too), leave nothing of this run behind
        # (the destroy test checks it).
        lab.inv("destroy", "--purge", check=False)


# -- the team's repository under tests/apps/team-stack, a stack file (test_6_stack*) ---------------
TEAM = ROOT / "tests" / "apps" / "team-stack"
TEAM_ENV_DIR = "tests/apps/team-stack/env"
WIDE = {"COLUMNS": "200"}


TEST_MANAGER, PROD_MANAGER = "swarm-test-1", "swarm-1"  # each cluster's first manager


def on_manager(lab, *argv: str, check: bool = True, node: str = TEST_MANAGER) -> str:
    """A docker CLI command on a cluster's first manager (the engine in the node): the test
    cluster's, or `node`."""
    proc = subprocess.run(
        ["docker", "exec", lab.container(node), "docker", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout


def spec_images(lab, names, node: str = TEST_MANAGER) -> dict[str, str]:
    """Service -> the image its spec runs, for these services of the test cluster (or of
    the cluster whose manager is `node`)."""
    return {
        n: json.loads(on_manager(lab, "service", "inspect", n, node=node))[0]["Spec"][
            "TaskTemplate"
        ]["ContainerSpec"]["Image"]
        for n in names
    }


def deliver_team(team, repo: Path, ref: str, version: str, env=None):
    """`inv deliver` of the team's repository (a git repository of its own) at `ref` as
    `version`, with `env` over the lab's; what it printed is printed too."""
    started = time.monotonic()
    proc = team.inv(
        "deliver",
        "--repo",
        str(repo),
        "--ref",
        ref,
        "--version",
        version,
        "--compose-file",
        "docker-compose-ci.yml",
        check=False,
        timeout=1500,
        extra_env={**WIDE, **(env or {})},
    )
    print(
        f"\n`inv deliver --ref {ref} --version {version}`: exit {proc.returncode} after "
        f"{time.monotonic() - started:.1f}s\n{proc.stdout.strip()}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="session")
def team(lab):
    """The lab with the team's env directory (tests/apps/team-stack: test_6_stack,
    test_6_stack_release) and `inv services` run once: from nothing, the registry lacking the
    team's two images, which it builds from the team's compose file and pushes first."""
    lab = type(lab)(lab.name, lab.state_dir, {**lab.env, "CDTASKS_ENV_DIR": TEAM_ENV_DIR})
    started = time.monotonic()
    lab.created = lab.inv("services", "--env", "test", extra_env=WIDE)
    print(f"inv services from nothing: {time.monotonic() - started:.1f}s")
    return lab


@pytest.fixture(scope="session")
def stack(lab: Lab) -> Lab:
    """The lab with the book's sample made in both clusters by `inv services`: the stack
    go-demo of demo/stack.yml (go-demo_main, go-demo_db, go-demo_proxy)."""
    lab.inv("services")
    return lab


# What a stranger on the nodes' network tries against each node's registry (port 5000), and what
# the tool's user does. Run in a container that is not a node; prints {address: {probe: status}}.
# -- `inv watch` in the background (test_6_watch, test_6_watchers) ---------------------------------
SECRET = "watch-test-webhook-secret"  # the watchers' CDTASKS_WEBHOOK_SECRET


class Watcher:
    """`inv watch ARGS` as a background process, its log (stdout and stderr) in a file."""

    def __init__(self, lab: Lab, reports: Path, log: Path, *args: str, extra_env=None):
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "watch", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**lab.env, "CDTASKS_REPORTS_DIR": str(reports), **(extra_env or {})},
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float, start: int = 0) -> None:
        """Until `needle` is in the log (after offset `start`); fails if the watcher exits."""
        deadline = time.monotonic() + timeout
        while needle not in self.text()[start:]:
            assert self.proc.poll() is None, (
                f"the watcher exited {self.proc.returncode} "
                f"waiting for {needle!r}:\n{self.text()[-4000:]}"
            )
            assert time.monotonic() < deadline, (
                f"no {needle!r} in the watcher's log after {timeout:g}s:\n{self.text()[-4000:]}"
            )
            time.sleep(0.5)

    def stop(self, timeout: float = 120) -> int | None:
        """SIGTERM, then wait; SIGKILL only if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def webhook_watcher(lab: Lab, reports: Path, log: Path, repo: Path, port: int) -> Watcher:
    """`inv watch` of `repo`'s branch main, looking again without a pause, that takes signed push
    notifications (SECRET) on 127.0.0.1:`port`."""
    return Watcher(
        lab,
        reports,
        log,
        "--repo",
        str(repo),
        "--branch",
        "main",
        "--interval",
        "0",
        "--listen",
        f"127.0.0.1:{port}",
        extra_env={"CDTASKS_WEBHOOK_SECRET": SECRET},
    )


REGISTRY_PROBE = r"""
import base64, json, os, urllib.request, urllib.error

def status(method, url, auth=False, headers=None):
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}),
                                 data=b"{}" if method in ("PUT", "POST") else None)
    if auth:
        token = base64.b64encode(f"{os.environ['USER_NAME']}:{os.environ['PASSWORD']}".encode())
        req.add_header("Authorization", "Basic " + token.decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()

out = {}
manifest = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
for address in os.environ["ADDRESSES"].split(","):
    v2 = f"http://{address}:5000/v2"
    code, _, body = status("GET", f"{v2}/_catalog", auth=True)
    repos = json.loads(body).get("repositories", []) if code == 200 else []
    _, headers, _ = status("HEAD", f"{v2}/{os.environ['REPO']}/manifests/{os.environ['TAG']}",
                           auth=True, headers=manifest)
    digest = headers.get("Docker-Content-Digest", "sha256:" + "0" * 64)
    out[address] = {
        "catalog with auth": code, "repositories": repos,
        "catalog": status("GET", f"{v2}/_catalog")[0],
        "push": status("POST", f"{v2}/{os.environ['REPO']}/blobs/uploads/")[0],
        "overwrite tag": status("PUT", f"{v2}/{os.environ['REPO']}/manifests/{os.environ['TAG']}",
                                headers={"Content-Type": manifest["Accept"]})[0],
        "delete": status("DELETE", f"{v2}/{os.environ['REPO']}/manifests/{digest}")[0],
        "delete with auth": status("DELETE", f"{v2}/{os.environ['REPO']}/manifests/{digest}",
                                   auth=True)[0],
    }
print(json.dumps(out))
"""


def probe_registries(
    network: str, addresses: list[str], settings, repo: str, tag: str, label: tuple[str, str]
) -> dict:
    """REGISTRY_PROBE from a throwaway container on `network` (one of the test's, labelled so
    its clean-up finds it), with the registry's credentials of `settings`."""
    from cdtasks import registry

    creds = registry.credentials(settings)
    out = docker.from_env().containers.run(
        "cdtasks/python:3.11",
        ["python3", "-c", REGISTRY_PROBE],
        network=network,
        remove=True,
        labels=dict([label]),
        environment={
            "ADDRESSES": ",".join(addresses),
            "REPO": repo,
            "TAG": tag,
            "USER_NAME": creds.username,
            "PASSWORD": creds.password,
        },
    )
    return json.loads(out.decode().strip().splitlines()[-1])


# -- a run followed line by line, to interrupt (test_7_faults, test_6_stack_signals) ------------
class Run:
    """`inv ARGS` started in its own process group, its stderr followed line by line."""

    def __init__(self, lab, args, extra_env=None):
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", *args],
            cwd=ROOT,
            text=True,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**lab.env, "COLUMNS": "250", **(extra_env or {})},
        )
        self.stdout = ""
        self._out = threading.Thread(target=self._read_stdout, daemon=True)
        self._err = threading.Thread(target=self._read_stderr, daemon=True)
        self._out.start()
        self._err.start()

    def _read_stdout(self):
        self.stdout = self.proc.stdout.read()

    def _read_stderr(self):
        for line in self.proc.stderr:
            with self.seen:
                self.lines.append(line.rstrip("\n"))
                self.seen.notify_all()

    def wait_for(self, pattern: str, timeout: float = 300) -> str:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.seen:
            i = 0
            while True:
                for line in self.lines[i:]:
                    if rx.search(line):
                        return line
                i = len(self.lines)
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"never saw /{pattern}/ (exit {self.proc.poll()}):\n"
                        + "\n".join(self.lines[-40:])
                    )
                self.seen.wait(0.5)

    def ctrl_c(self):
        os.killpg(self.proc.pid, signal.SIGINT)  # what a terminal sends to the foreground group

    def signal(self, signum):
        self.proc.send_signal(signum)  # what a CI server (or `kill`) sends to the process

    def finish(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self._out.join(10)
        self._err.join(10)
        print(
            f"\nexit {code}\nstdout:\n{self.stdout[-3000:]}\nstderr:\n"
            + "\n".join(self.lines[-60:])
        )
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)
