"""Deployment benchmark: requests lost during `inv deploy --env prod`, its rollout time against
the floor Swarm imposes, and the time from failing production tests to a completed rollback.
Run from the repository root:

    python3 bench/deploy.py

Creates a throwaway lab cdtbench<rand> (provision, services, `inv deliver --version 2.0`,
untimed) and removes it afterwards, also on failure or Ctrl-C. Figures go to
bench/results/deploy.json.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402

from cdtasks import config, engine, stack  # noqa: E402
from cdtasks.cluster import Cluster  # noqa: E402

V_GOOD, V_BROKEN = "2.0", "2.1-broken"
MIN_SENT, RATIO_TARGET = 500, 1.1
PACE = 0.02  # seconds between two request starts: >= 500 in a 10 s deploy, little CPU
TIMEOUT, CAP_S, CAP_N = 2.0, 600, 100_000  # per request; the loop's hard caps
ROLLED_BACK = 20  # `inv deploy` exit code: failed and rolled back
RESULTS = ROOT / "bench" / "results" / "deploy.json"
GIT_ID = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@cdtasks.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@cdtasks.invalid",
}


class Requests(threading.Thread):
    """GET /demo/hello one after another, paced, until stopped or capped: counts sent and failed
    (not 200, or no answer within TIMEOUT), and keeps when and why each failure happened."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.halt = url, threading.Event()
        self.sent = self.failed = 0
        self.failures: list[tuple[float, str]] = []

    def run(self) -> None:
        t0 = time.monotonic()
        with requests.Session() as http:
            http.headers["Connection"] = "close"  # each request a new client, as users are
            while not self.halt.is_set() and self.sent < CAP_N and time.monotonic() - t0 < CAP_S:
                t = time.monotonic()
                try:
                    r = http.get(self.url, timeout=TIMEOUT)
                    bad = "" if r.status_code == 200 else f"HTTP {r.status_code}"
                except requests.RequestException as exc:
                    bad = type(exc).__name__
                self.sent += 1
                if bad:
                    self.failed += 1
                    self.failures.append((round(t - t0, 2), bad))
                self.halt.wait(max(0.0, PACE - (time.monotonic() - t)))


def proxy_url(host, lab: str, prod) -> str:
    """A prod node running a proxy task, through the 127.0.0.1 port its port 80 is published on."""
    node = stack.proxy_nodes(Cluster.of(prod).discover(), prod.services)[0]
    ports = host.containers.get(f"{lab}-{node}").attrs["NetworkSettings"]["Ports"]["80/tcp"]
    return f"http://127.0.0.1:{ports[0]['HostPort']}/demo/hello"


def ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()  # 3.11: Z and nanoseconds are fine


def swarm_facts(prod) -> dict:
    """From Swarm itself, after the rollout: replicas, update delay and monitor period, the
    update's StartedAt -> CompletedAt, and each new task's start-up (CreatedAt -> running; the
    engine reports a task with a HEALTHCHECK running only once it is healthy). The tool may
    return before Swarm marks the update completed (after its trailing delay and monitor
    period): wait for that here, untimed."""
    cluster = Cluster.of(prod).discover()
    manager = cluster.client(cluster.gateway().manager_name())  # the SDK's own view, untranslated
    name = benchlib.app_service(prod)
    deadline = time.monotonic() + 120
    while (status := (svc := manager.api.inspect_service(name)).get("UpdateStatus") or {}).get(
        "State"
    ) != "completed" and time.monotonic() < deadline:
        time.sleep(0.5)
    if "CompletedAt" not in status:
        raise RuntimeError(f"Swarm's update of {name} still {status.get('State')}")
    spec = svc["Spec"]
    image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    tasks = manager.api.tasks(filters={"service": svc["ID"], "desired-state": "running"})
    startups = sorted(
        round(ts(t["Status"]["Timestamp"]) - ts(t["CreatedAt"]), 2)
        for t in tasks
        if t["Status"]["State"] == "running" and t["Spec"]["ContainerSpec"]["Image"] == image
    )
    upd = spec.get("UpdateConfig") or {}
    return {
        "replicas": spec["Mode"]["Replicated"]["Replicas"],
        "delay_s": upd.get("Delay", 0) / 1e9,
        "monitor_s": upd.get("Monitor", 0) / 1e9,
        "startups_s": startups,
        "state": status.get("State"),
        "swarm_span_s": round(ts(status["CompletedAt"]) - ts(status["StartedAt"]), 1),
    }


def broken_repo(tmp: Path) -> Path:
    """demo/ in a git repository of its own, answering "hello, broken!": healthy for Swarm,
    failing the production tests."""
    repo = tmp / "broken"
    shutil.copytree(ROOT / "demo", repo / "demo")
    server = repo / "demo" / "app" / "server.py"
    server.write_text(server.read_text().replace("hello, world!", "hello, broken!"))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "hello, broken!"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env={**os.environ, **GIT_ID})
    return repo


def main() -> None:
    host = engine.host_client()
    lab = f"cdtbench{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="cdtbench-"))
    environ = benchlib.lab_environ(lab, tmp)
    report = Path(environ["CDTASKS_REPORTS_DIR"]) / "deploy.json"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    # The library's commit when the run starts (others may commit while it runs: note it).
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    loop = None
    try:
        benchlib.say(
            f"setup (untimed): provision, services, inv deliver --version {V_GOOD}, lab {lab}"
        )
        for args in (["provision"], ["services"], ["deliver", "--version", V_GOOD]):
            benchlib.inv(args, environ)
        prod = config.load("prod", environ=environ, project_dir=ROOT)
        url = proxy_url(host, lab, prod)
        assert requests.get(url, timeout=10).status_code == 200, f"{url} does not answer"

        # (a) requests through the proxy from before the deploy starts until after it returns.
        started_on = benchlib.first_version(prod, environ)
        benchlib.say(
            f"(a) GET {url} in a loop during inv deploy --env prod ({started_on} -> {V_GOOD})"
        )
        loop = Requests(url)
        loop.start()
        deploy_s = benchlib.inv(["deploy", "--env", "prod"], environ)
        loop.halt.set()
        loop.join()
        # (b) the rollout step of that deploy against what Swarm makes it wait.
        steps = {s["name"]: round(s["seconds"], 1) for s in json.loads(report.read_text())["steps"]}
        facts = swarm_facts(prod)

        # (c) a version that fails production tests, deployed anyway: rolled back (exit 20).
        benchlib.say(f"(c) build {V_BROKEN}, then inv deploy --version {V_BROKEN} --force")
        repo = broken_repo(tmp)
        for args in (
            ["checkout", "--repo", str(repo), "--version", V_BROKEN],
            ["build"],
            ["publish"],
        ):
            benchlib.inv(args, environ)
        broken_s = benchlib.inv(
            ["deploy", "--env", "prod", "--version", V_BROKEN, "--force"],
            environ,
            expect=ROLLED_BACK,
        )
        broken = {
            s["name"]: (s["status"], round(s["seconds"], 1))
            for s in json.loads(report.read_text())["steps"]
        }
    finally:
        if loop:
            loop.halt.set()
        benchlib.clean_up(host, lab, environ, tmp)
    load_after = os.getloadavg()

    rollout, startup = steps["rollout"], sum(facts["startups_s"]) / len(facts["startups_s"])
    floor = facts["replicas"] * (facts["delay_s"] + startup)
    # Swarm also watches the last task for the monitor period before it says "completed".
    floor_m = floor + facts["monitor_s"]
    # The failure is known when prodtest ends; recovered when the tests after rollback pass.
    assert broken["prodtest"][0] == "FAILED" and broken["prodtest-after-rollback"][0] == "ok", (
        broken
    )
    back, retest = broken["rollback"][1], broken["prodtest-after-rollback"][1]
    first = ", ".join(f"{t}s {why}" for t, why in loop.failures[:5])
    print(
        f"\ndeploy benchmark (commit {commit}; prod: {facts['replicas']} replicas, update delay "
        f"{facts['delay_s']:g} s, monitor {facts['monitor_s']:g} s)\n"
        f"  (a) requests during deploy  {loop.failed} failed of {loop.sent} (target 0 of >= "
        f"{MIN_SENT}){'  WARNING: too few' if loop.sent < MIN_SENT else ''}"
        f"{'  first: ' + first if first else ''}\n"
        f"      deploy wall time        {deploy_s:6.1f} s  (steps: {steps})\n"
        f"  (b) rollout step            {rollout:6.1f} s  (Swarm's span {facts['swarm_span_s']} s)\n"
        f"      start-up per task       {startup:6.1f} s  (CreatedAt -> running: {facts['startups_s']})\n"
        f"      floor {facts['replicas']} x ({facts['delay_s']:g} + {startup:.1f})   {floor:6.1f} s  "
        f"ratio {rollout / floor:.2f} (target <= {RATIO_TARGET})\n"
        f"      floor + monitor period  {floor_m:6.1f} s  ratio {rollout / floor_m:.2f}\n"
        f"  (c) failing prodtest -> rolled back and tested {back + retest:5.1f} s  (rollback "
        f"{back:.1f} s + prodtest {retest:.1f} s; whole deploy {broken_s:.1f} s)\n"
        f"  load average                {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({len(os.sched_getaffinity(0))} cpus)"
    )
    benchlib.write_results(
        RESULTS,
        host,
        {
            "commit": commit,
            "loadavg_before": [round(x, 1) for x in load_before],
            "loadavg_after": [round(x, 1) for x in load_after],
            "zero_downtime": {
                "sent": loop.sent,
                "failed": loop.failed,
                "failures": loop.failures[:20],
                "deploy_s": round(deploy_s, 1),
                "pace_s": PACE,
                "timeout_s": TIMEOUT,
            },
            "rollout": {
                "rollout_s": rollout,
                **facts,
                "startup_s": round(startup, 2),
                "floor_s": round(floor, 1),
                "ratio": round(rollout / floor, 2),
                "floor_with_monitor_s": round(floor_m, 1),
                "ratio_with_monitor": round(rollout / floor_m, 2),
                "deploy_steps_s": steps,
            },
            "rollback": {
                "failure_to_recovered_s": round(back + retest, 1),
                "deploy_s": round(broken_s, 1),
                "steps": broken,
            },
            "targets": {"failed": 0, "min_sent": MIN_SENT, "rollout_ratio": RATIO_TARGET},
        },
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
