"""`inv deploy --canary`: under steady real load through production's proxy, a release that
answers 500 is aborted with production untouched, so is one that answers slowly
(`--max-latency`), a healthy one is promoted with no failed request, the proxy is never
restarted (its task IDs stay), and an interrupted canary leaves nothing behind. Real lab, real CLI; weights and counters read back through the runtime API."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import threading
import time

import pytest
import requests

from cdtasks import deployment, haproxy, records
from cdtasks.cluster import Cluster

from .conftest import git, manager_of
from .test_7_faults import Run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STACK = "go-demo"  # STACK_NAME: the release's lock and history
# The sample stack's Swarm services (demo/stack.yml), the canary of its `main`, and the backend
# that serves `main` in the proxy's haproxy.cfg (demo/proxy/haproxy.cfg).
SERVICE, PROXY = f"{STACK}_main", f"{STACK}_proxy"
CANARY, BACKEND = f"{SERVICE}-canary", "main"
# Short steps: the load below gives the canary well over --min-requests in each.
FAST = ["--canary-for", "10", "--min-requests", "20"]
PERSONS = 'return 200, "".join(f"{name}\\n" for name in self.store.names())'  # GET /demo/person


def _cluster(lab) -> Cluster:
    return Cluster.of(lab.settings("prod")).discover()


def _images(lab) -> list[str]:
    manager = manager_of(_cluster(lab))
    svc = manager.api.inspect_service(SERVICE)
    tasks = manager.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
    return sorted(t["Spec"]["ContainerSpec"]["Image"] for t in tasks)


def _proxy(lab) -> tuple[list[str], dict[str, int]]:
    """The proxy's task IDs, and the weight of each server of the `main` backend on every replica
    ("TASK/SERVER" -> weight), read through the runtime API."""
    cluster = _cluster(lab)
    reps = haproxy.replicas(cluster, PROXY)
    weights = {
        f"{r.replica.task[:6]}/{s.name}": s.weight
        for r in haproxy.read(cluster, reps)
        for s in r.backend(BACKEND)
    }
    return [r.task for r in reps], weights


def _as_configured(weights: dict[str, int]) -> bool:
    """What haproxy.cfg says: the canary's slots at 0, the others at 1."""
    return all(w == (0 if "/canary" in k else 1) for k, w in weights.items())


def _canary_gone(lab, within: float = 60) -> bool:
    """No canary service, and (after its grace period) no container of it on any node."""
    cluster = _cluster(lab)
    if manager_of(cluster).api.services(filters={"name": CANARY}):
        return False
    deadline = time.monotonic() + within
    label = f"com.docker.swarm.service.name={CANARY}"
    while any(c.containers.list(filters={"label": label}) for c in cluster.clients().values()):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _release(lab, tmp_path, version: str, old: str, new: str) -> None:
    """Build and push `version`: the sample with `old` replaced by `new` in its server."""
    repo = tmp_path / version
    shutil.copytree(os.path.join(ROOT, "demo"), repo / "demo")
    server = repo / "demo" / "app" / "server.py"
    text = server.read_text()
    assert old in text
    server.write_text(text.replace(old, new))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", version)
    lab.inv("checkout", "--repo", str(repo), "--version", version)
    lab.inv("build")
    lab.inv("publish")


class Load:
    """GET /demo/person in a few threads, round robin over every production proxy replica
    (the nodes that run one publish port 80): the answers' status codes, errors as "error"."""

    def __init__(self, lab, threads: int = 6):
        manager = manager_of(_cluster(lab))
        nodes = {n["ID"]: n["Description"]["Hostname"] for n in manager.api.nodes()}
        svc = manager.api.inspect_service(PROXY)
        tasks = manager.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
        self.urls = [
            f"http://127.0.0.1:{lab.http_port(nodes[t['NodeID']])}/demo/person" for t in tasks
        ]
        self.seen: collections.Counter = collections.Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        session = requests.Session()
        n = i
        while not self.stop.is_set():
            n += 1
            try:
                code = session.get(self.urls[n % len(self.urls)], timeout=10).status_code
            except requests.RequestException:
                code = "error"
            self.seen[code] += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        time.sleep(2)  # the load runs before the deployment starts
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(2)  # ... and after it ended
        self.stop.set()
        for t in self.threads:
            t.join(15)
        print(f"\nload through the proxy: {dict(self.seen)}")

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.seen.items() if code != 200)


@pytest.fixture(scope="module")
def releases(stack, tmp_path_factory):
    """Two releases built from the sample (never through prod-like: deployed with --force):
    one healthy, one whose GET /demo/person answers 500 (its health check still passes)."""
    tmp = tmp_path_factory.mktemp("canary")
    _release(stack, tmp, "c-good", "HELLO = ", "CANARY = True\nHELLO = ")
    _release(stack, tmp, "c-500", PERSONS, 'return 500, "broken release\\n"')
    return stack


def _deploy(lab, version: str, *flags: str, check: bool = False):
    return lab.inv("deploy", "--env", "prod", "--version", version, "--force", *flags, check=check)


def test_a_release_answering_500_is_aborted_and_production_keeps_its_digest(releases):
    lab = releases
    before, (proxies, weights) = _images(lab), _proxy(lab)
    assert _as_configured(weights), weights
    with Load(lab) as load:
        proc = _deploy(lab, "c-500", "--canary", "20,50", *FAST)
    print(proc.stdout[-2000:], proc.stderr[-3000:])
    assert proc.returncode == 20, proc.stderr[-2000:]
    entry = records.load(manager_of(_cluster(lab)), "history", STACK)[-1]
    assert entry["version"] == "c-500"
    assert entry["result"].startswith("canary aborted: ")
    assert "% errors > 1 % over" in entry["result"], entry["result"]
    assert entry["steps"] == {"canary": "FAILED"}  # no rollout was tried
    # Production never changed; the proxy was driven, never restarted; nothing is left.
    assert _images(lab) == before
    proxies_after, weights_after = _proxy(lab)
    assert proxies_after == proxies and _as_configured(weights_after), weights_after
    assert _canary_gone(lab)
    # The canary got about the share asked and failed all of it (HAProxy's retry-on sent its
    # 500s to the running service: clients saw fewer failures than the canary made).
    step = entry["canary"][0]
    assert step["percent"] == 20 and abs(step["share"] - 20) < 8, step
    assert step["errors"] >= 0.9 * step["requests"] >= 20, step
    assert load.failed <= step["errors"], load.seen


def test_a_slow_release_is_aborted_by_the_latency_gate(releases, tmp_path):
    """GET /demo/person takes 400 ms more in this release: every answer is right, and late."""
    lab = releases
    _release(lab, tmp_path, "c-slow", PERSONS, f"self.sleep(0.4)\n        {PERSONS}")
    before, (proxies, _) = _images(lab), _proxy(lab)
    with Load(lab) as load:
        proc = _deploy(lab, "c-slow", "--canary", "20", *FAST, "--max-latency", "200")
    print(proc.stdout[-2000:], proc.stderr[-3000:])
    assert proc.returncode == 20, proc.stderr[-2000:]
    entry = records.load(manager_of(_cluster(lab)), "history", STACK)[-1]
    assert entry["version"] == "c-slow" and entry["steps"] == {"canary": "FAILED"}, entry
    assert entry["result"].startswith("canary aborted: response time "), entry["result"]
    assert " ms > 200 ms (HAProxy's rtime, over " in entry["result"], entry["result"]
    step = entry["canary"][0]
    # Above the limit, not necessarily 400: HAProxy's rtime is a running average over up to
    # 1024 requests that is still climbing after the step's few dozen (391 ms seen in CI).
    assert step["latency_ms"] > 200 and step["errors"] == 0, step
    assert load.failed == 0, load.seen  # slow, never failed
    assert _images(lab) == before
    proxies_after, weights = _proxy(lab)
    assert proxies_after == proxies and _as_configured(weights), weights
    assert _canary_gone(lab)


def test_a_healthy_release_is_promoted_with_no_failed_request(releases):
    lab = releases
    proxies, _ = _proxy(lab)
    with Load(lab) as load:
        proc = _deploy(lab, "c-good", "--canary", "20,50", *FAST)
    print(proc.stdout[-2000:], proc.stderr[-3000:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = records.load(manager_of(_cluster(lab)), "history", STACK)[-1]
    assert entry["result"] == "deployed" and entry["version"] == "c-good", entry
    assert list(entry["steps"]) == ["canary", "rollout", "prodtest"]
    assert [s["percent"] for s in entry["canary"]] == [20, 50]
    for step in entry["canary"]:
        assert step["errors"] == 0 and step["requests"] >= 20, step
        assert abs(step["share"] - step["percent"]) < 4, step
    assert load.failed == 0 and load.seen[200] > 300, load.seen
    images = _images(lab)
    assert len(images) == 3 and all(i.endswith("@" + entry["digest"]) for i in images), images
    proxies_after, weights = _proxy(lab)
    assert proxies_after == proxies and _as_configured(weights), weights
    assert _canary_gone(lab)


def test_an_interrupted_canary_leaves_nothing_behind_and_holds_the_lock_meanwhile(releases):
    lab = releases
    before, (proxies, _) = _images(lab), _proxy(lab)
    with Load(lab):
        run = Run(
            lab,
            ["deploy", "--env", "prod", "--version", "c-500", "--force", "--canary", "5"]
            + ["--canary-for", "120", "--min-requests", "100000"],
        )
        run.wait_for(r"canary step 1/1: 5 % for 120 s", timeout=300)
        time.sleep(3)
        assert any(w > 0 for k, w in _proxy(lab)[1].items() if "/canary" in k)
        second = _deploy(lab, "c-good")  # refused by the lock, while the canary runs
        assert second.returncode == 22, second.stderr[-2000:]
        assert "running a canary of c-500" in second.stderr
        run.signal(signal.SIGTERM)
        assert run.finish() == 143
    assert "Traceback" not in "\n".join(run.lines)
    rows = deployment.history(lab.settings("prod"))[0]
    assert rows[-1]["version"] == "c-500" and rows[-1]["result"] == "interrupted", rows[-1]
    proxies_after, weights = _proxy(lab)
    assert proxies_after == proxies and _as_configured(weights), weights
    assert _canary_gone(lab) and _images(lab) == before
    assert records.lock_state(manager_of(_cluster(lab)), STACK) is None


def test_bad_canary_flags_and_too_many_replicas_change_nothing(releases):
    lab = releases
    before = _images(lab)
    proc = _deploy(lab, "c-good", "--canary", "50,20")
    assert proc.returncode == 2 and "--canary 50,20: the steps must rise" in proc.stderr
    proc = _deploy(lab, "c-good", "--canary", "10", "--canary-replicas", "9")
    assert proc.returncode == 2, proc.stderr
    assert f"--canary-replicas 9: the proxy's backend {BACKEND} has 5 canary slots" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _images(lab) == before and _canary_gone(lab)
