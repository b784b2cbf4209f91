"""A pushed commit is untrusted input, on the real lab: compose files that reach outside the
checkout or into the CD node's host are refused at checkout (exit 2, one line naming file,
service, key and path), before unit tests or the build run, so nothing is built or pushed; a
repository behind a token (a real git server over HTTP on 127.0.0.1) is delivered without the
token in any process's argv, the checkout's .git/config, the output or the reports. The book's
own `/tmp/go`-style cache mount (hello-book's `/tmp/hello-book-cache`, the demo's `.`) keeps
working: every delivery here and in test_3 uses them. Pure rules: tests/unit/test_compose_policy.py
and tests/unit/test_git_credentials.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cdtasks.cluster import Cluster
from cdtasks.rollout import delivered

from .conftest import git, manager_of, sample_repository

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = "demo/docker-compose-test-local.yml"
UNIT = "  unit:\n    image: ${BASE_IMAGE:-python:3.11-slim}\n"
STAGING = "  staging:\n    image: ${BASE_IMAGE:-python:3.11-slim}\n"
CONTEXT = "    build:\n      context: .\n"


MOUNTS = "    volumes:\n      - .:/usr/src/app\n"  # unit's, the first of three


def _unit(extra: str):
    return lambda text, lab: text.replace(UNIT, UNIT + extra.format(**paths(lab)), 1)


def _mount(entry: str):
    return lambda text, lab: text.replace(
        MOUNTS, MOUNTS + f"      - {entry.format(**paths(lab))}\n", 1
    )


def paths(lab) -> dict:
    s = lab.settings("test")
    return {
        "state": s.cluster.state_dir,
        "registry": s.registry.registry_dir,
        "workspace": s.delivery.workspace_dir,
    }


# branch -> (edit of the compose file, what the refusal names: service, key, path)
ESCAPES = {
    "context": (
        lambda t, lab: t.replace(CONTEXT, "    build:\n      context: ../../..\n"),
        r"service app: build\.context: \S+ resolves outside the checkout",
    ),
    "dockerfile": (
        lambda t, lab: t.replace(CONTEXT, CONTEXT + "      dockerfile: ../../../x\n"),
        r"service app: build\.dockerfile: \.\./\.\./\.\./x resolves outside",
    ),
    "env-file": (
        _unit("    env_file: ../../../registry-auth/password\n"),
        r"service unit: env_file: \.\./\.\./\.\./registry-auth/password resolves ",
    ),
    "include": (
        lambda t, lab: "include: [../../../other.yml]\n" + t,
        r"include: \.\./\.\./\.\./other\.yml resolves outside",
    ),
    "extends": (
        lambda t, lab: t.replace(
            STAGING, STAGING + "    extends: {file: /etc/hosts, service: x}\n"
        ),
        r"service staging: extends\.file: /etc/hosts resolves outside",
    ),
    "symlink": (
        _mount("./state:/leak"),
        r"service unit: volumes: \S+/demo/state resolves outside the checkout \({state}\)",
    ),
    "socket": (
        _mount("/var/run/docker.sock:/var/run/docker.sock"),
        r"service unit: volumes: /var/run/docker.sock is the Docker socket",
    ),
    "registry": (
        _mount("{registry}:/r"),
        r"service unit: volumes: {registry} is the registry's directory",
    ),
    "workspace": (
        _mount("{workspace}:/w"),
        r"service unit: volumes: {workspace} is the workspace",
    ),
    "privileged": (_unit("    privileged: true\n"), r"service unit: privileged: true: "),
    "pid-host": (_unit("    pid: host\n"), r"service unit: pid: host: "),
    "cap-add": (_unit("    cap_add: [SYS_ADMIN]\n"), r"service unit: cap_add: SYS_ADMIN: "),
    "devices": (
        _unit("    devices: ['/dev/fuse:/dev/fuse']\n"),
        r"service unit: devices: /dev/fuse: ",
    ),
    "host-network": (
        lambda t, lab: t.replace(STAGING, STAGING + "    network_mode: host\n"),
        r"service staging: network_mode: host: ",
    ),
}


@pytest.fixture(scope="module")
def escapes(stack, tmp_path_factory) -> str:
    """The sample as a repository with one branch per escape (each edits the compose file; the
    symlink branch adds demo/state pointing at the state directory)."""
    path = sample_repository(tmp_path_factory.mktemp("escapes"), "demo")
    compose = path / COMPOSE
    for branch, (edit, _) in ESCAPES.items():
        git(path, "checkout", "--quiet", "-b", branch, "main")
        text = compose.read_text()
        assert edit(text, stack) != text, branch
        compose.write_text(edit(text, stack))
        if branch == "symlink":
            os.symlink(stack.settings("test").cluster.state_dir, path / "demo/state")
        git(path, "add", "-A")
        git(path, "commit", "--quiet", "-m", f"escape: {branch}")
    git(path, "checkout", "--quiet", "main")
    return str(path)


def cd_images(lab) -> list[str]:
    cd = Cluster.of(lab.settings("test")).discover().client(lab.settings("test").cluster.cd_node)
    return [t for i in cd.images.list() for t in i.tags]


@pytest.mark.parametrize("branch", list(ESCAPES))
def test_a_compose_file_that_reaches_out_is_refused_before_any_step(
    stack, escapes, tmp_path, branch
):
    version = f"escape-{branch}"
    proc = stack.inv(
        "deliver",
        "--repo",
        escapes,
        "--ref",
        branch,
        "--version",
        version,
        check=False,
        timeout=300,
        extra_env={"CDTASKS_REPORTS_DIR": str(tmp_path)},
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(error) == 1, proc.stderr
    pattern = ESCAPES[branch][1].format(**{k: str(v) for k, v in paths(stack).items()})
    assert error[0].startswith(f"error: {COMPOSE}: "), error
    assert re.search(pattern, error[0]), (pattern, error[0])
    # Nothing ran after the checkout: no unit tests, no build, nothing to push.
    for step in ("unit", "build", "staging", "publish"):
        assert f"[deliver] {step} ..." not in proc.stderr, proc.stderr
    assert not [t for t in cd_images(stack) if t.endswith(f":{version}")]


# -- a repository behind a token ----------------------------------------------------------------
TOKEN = "tok-5b1d93e0c4a7"


@pytest.fixture(scope="module")
def token_repo(stack, tmp_path_factory):
    """The sample served by a git server on 127.0.0.1 that wants user `ci` and TOKEN; yields
    (its URL with the token, the server's auth log)."""
    base = tmp_path_factory.mktemp("git-server")
    (base / "work").mkdir()
    sample = sample_repository(base / "work", "demo")
    served = base / "repos"
    served.mkdir()
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(sample), str(served / "app.git")], check=True
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/standin/git_http.py"), str(served)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "GIT_USER": "ci", "GIT_TOKEN": TOKEN},
    )
    try:
        port = int(proc.stdout.readline())
        yield f"http://ci:{TOKEN}@127.0.0.1:{port}/app.git", base / "auth.log"
    finally:
        proc.kill()
        proc.wait()


class CommandLines:
    """Every process's argv on this machine, sampled while a run goes on (what `ps` shows)."""

    def __init__(self):
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            self.seen.add(f.read().replace(b"\0", b" ").decode(errors="replace"))
                    except OSError:
                        pass
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_a_repository_behind_a_token_is_delivered_and_the_token_shown_nowhere(
    stack, token_repo, tmp_path
):
    url, auth_log = token_repo
    reports = tmp_path / "reports"
    # REPO from the environment, as a CI server gives secrets: a `--repo` flag would show the
    # token in the command line the user typed.
    with CommandLines() as ps:
        proc = stack.inv(
            "deliver",
            "--version",
            "tok-1",
            check=False,
            extra_env={"CDTASKS_REPORTS_DIR": str(reports), "CDTASKS_REPO": url},
        )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "ok" in auth_log.read_text().split()  # the server got the token, from git
    clean = url.replace(f"ci:{TOKEN}@", "")
    assert [c for c in ps.seen if "git" in c and clean in c], "no git command was seen"
    assert not [c for c in ps.seen if TOKEN in c]
    assert TOKEN not in proc.stdout + proc.stderr
    written = list(reports.rglob("*"))
    assert written and not [p for p in written if p.is_file() and TOKEN in p.read_text()]
    manager = manager_of(Cluster.of(stack.settings("test")).discover())
    assert TOKEN not in json.dumps(delivered(manager, "go-demo"))


def test_the_checkout_keeps_no_token_and_a_wrong_one_is_named_without_showing_it(
    stack, token_repo, tmp_path
):
    url, _ = token_repo
    env = {"CDTASKS_REPORTS_DIR": str(tmp_path)}
    stack.inv("checkout", "--repo", url, "--version", "tok-2", extra_env=env)
    state = next(stack.settings("test").delivery.workspace_dir.glob("*.release.json"))
    workdir = Path(json.loads(state.read_text())["workdir"])
    try:
        config = (workdir / ".git" / "config").read_text()
        assert "127.0.0.1" in config and TOKEN not in config
        assert TOKEN not in state.read_text()
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    wrong = "wrong-0c7f2a9b"
    proc = stack.inv(
        "deliver",
        "--repo",
        url.replace(TOKEN, wrong),
        "--version",
        "tok-3",
        check=False,
        timeout=300,
        extra_env=env,
    )
    # Checked before any step (`--repo` answers `git ls-remote`): bad input.
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    server = f"127.0.0.1:{urlsplit(url).port}"
    assert proc.stderr.strip().splitlines() == [
        f"error: --repo 'http://***@{server}/app.git': fatal: Authentication failed for "
        f"'http://{server}/app.git/'"
    ], proc.stderr
    assert wrong not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr
