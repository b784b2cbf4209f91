"""`inv deploy --canary` of a stack's release: the team's stack (tests/apps/team-stack) under
steady load through its proxy; its api sits behind the proxy (backend `api`) and gets a canary
(`team_api-canary`, answering as `api-canary`), its worker does not (it rolls with the
promotion), its migration job never gets one. A release whose api answers 500 is aborted with
every service of the stack untouched; a healthy one is promoted with no failed request. The
proxy is never restarted and no canary is left. Real lab, real CLI."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from cdtasks import haproxy, records, stack
from cdtasks.cluster import Cluster

from .conftest import TEAM, WIDE, app_repository, deliver_team, git, manager_of, spec_images

SERVICES = ("team_api", "team_migrate", "team_worker", "team_store", "team_proxy")
RELEASED = ("team_api", "team_migrate", "team_worker")
PATH = "/load"  # what the load asks for: the broken release answers it 500, /health and / not
FAST = ["--canary-for", "10", "--min-requests", "20"]

# Run in a container on the lab's network: GET PATH from the proxy at each HOST:PORT (published
# in host mode on the nodes that run it: no IPVS on the lab) in a few threads, until its stdin
# closes; then prints {status: count}.
LOAD = r"""
import collections, http.client, json, sys, threading
seen, lock, stop = collections.Counter(), threading.Lock(), threading.Event()
path, targets = sys.argv[1], sys.argv[2:]
def run(i):
    while not stop.is_set():
        i += 1
        host, port = targets[i % len(targets)].rsplit(":", 1)
        try:
            c = http.client.HTTPConnection(host, int(port), timeout=10)
            c.request("GET", path)
            code = str(c.getresponse().status)
            c.close()
        except Exception as e:
            code = "error " + type(e).__name__
        with lock:
            seen[code] += 1
threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
for t in threads: t.start()
sys.stdin.read()
stop.set()
for t in threads: t.join()
print(json.dumps(seen), flush=True)
"""


def _cluster(team) -> Cluster:
    return Cluster.of(team.settings("test")).discover()


class Load:
    """LOAD through every proxy task, from before the deployment until after it."""

    def __init__(self, team):
        s = team.settings("test")
        nodes = stack.proxy_nodes(_cluster(team), s.services)
        assert nodes, "no proxy task runs"
        port = s.services.proxy_port  # where the stack file publishes it
        self.argv = ["docker", "run", "--rm", "-i", "--network", team.name]
        self.argv += ["--label", f"io.cdtasks.test={team.name}", "cdtasks/python:3.11"]
        self.argv += ["python3", "-c", LOAD, PATH, *(f"{team.container(n)}:{port}" for n in nodes)]
        self.seen: dict[str, int] = {}

    def __enter__(self) -> Load:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        time.sleep(3)  # the load runs before the deployment starts
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(2)  # ... and after it ended
        out, _ = self.proc.communicate("", timeout=60)
        self.seen = json.loads(out.strip().splitlines()[-1])
        print(f"\nload through the team's proxy: {self.seen}")

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.seen.items() if code != "200")


@pytest.fixture(scope="module")
def releases(team, tmp_path_factory):
    """Three releases that passed prod-like, the last one running: sc-good and sc-base (main,
    healthy; their api images differ by the version built in), and sc-500 between them, whose
    api answers GET /load with 500 (its health check and the tests' GET / still pass)."""
    repo = app_repository(TEAM, tmp_path_factory.mktemp("team-canary"), "the team's repository")
    git(repo, "checkout", "--quiet", "-b", "broken")
    server = repo / "api" / "server.py"
    text = server.read_text()
    handler = "    def do_GET(self):\n"
    assert handler in text
    server.write_text(
        text.replace(
            handler,
            handler
            + f"        if self.path.startswith({PATH!r}):\n"
            + "            self.send_response(500)\n"
            + "            self.send_header('Content-Length', '0')\n"
            + "            self.end_headers()\n"
            + "            return\n",
        )
    )
    git(repo, "commit", "--quiet", "-am", "an api that answers /load with 500")
    for ref, version in (("main", "sc-good"), ("broken", "sc-500"), ("main", "sc-base")):
        proc = deliver_team(team, repo, ref, version)
        assert proc.returncode == 0, proc.stdout[-3000:]
    return team


def _proxy_tasks(team) -> list[str]:
    cluster = _cluster(team)
    return [
        r.task for r in haproxy.replicas(cluster, stack.service_name(cluster.settings, "proxy"))
    ]


def _canaries(team) -> list[str]:
    return [
        s["Spec"]["Name"]
        for s in manager_of(_cluster(team)).api.services()
        if s["Spec"]["Name"].endswith("-canary")
    ]


def _deploy(team, version: str):
    proc = team.inv(
        "deploy",
        "--env",
        "test",
        "--test-env",
        "test",
        "--version",
        version,
        "--canary",
        "20,50",
        *FAST,
        check=False,
        timeout=1200,
        extra_env=WIDE,
    )
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def _under_load(team, version: str):
    """`inv deploy --canary 20,50` of `version` under load: what ran before, the proxy's task
    IDs before, the load, the process and the history's last entry."""
    before, proxies = spec_images(team, SERVICES), _proxy_tasks(team)
    with Load(team) as load:
        proc = _deploy(team, version)
    entry = records.load(manager_of(_cluster(team)), "history", "team")[-1]
    return before, proxies, load, proc, entry


def test_a_release_whose_api_answers_500_is_aborted_and_the_stack_is_untouched(releases):
    team = releases
    before, proxies, load, proc, entry = _under_load(team, "sc-500")
    assert proc.returncode == 20, proc.stderr[-2000:]
    # the worker has no backend in the proxy: said, no canary of it
    assert "team_worker not behind the proxy team_proxy: no canary" in proc.stdout + proc.stderr
    assert entry["version"] == "sc-500" and entry["steps"] == {"canary": "FAILED"}, entry
    assert entry["result"].startswith("canary aborted: team_api: "), entry["result"]
    assert "% errors > 1 % over" in entry["result"], entry["result"]
    step = entry["canary"][0]
    assert step["service"] == "team_api" and step["percent"] == 20, entry["canary"]
    assert step["errors"] >= 0.9 * step["requests"] >= 20, step
    assert {s["service"] for s in entry["canary"]} == {"team_api"}
    # api AND worker (and the job, the store, the proxy) still run what they ran
    assert spec_images(team, SERVICES) == before
    assert _proxy_tasks(team) == proxies
    assert _canaries(team) == []
    assert load.seen.get("500", 0) > 0, load.seen  # the canary's answers reached clients
    assert load.seen.get("200", 0) > 100, load.seen


def test_a_healthy_release_is_promoted_with_no_failed_request(releases):
    team = releases
    before, proxies, load, proc, entry = _under_load(team, "sc-good")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert entry["result"] == "deployed" and entry["version"] == "sc-good", entry
    assert list(entry["steps"]) == ["canary", "rollout", "prodtest"], entry["steps"]
    assert [(s["service"], s["percent"]) for s in entry["canary"]] == [
        ("team_api", 20),
        ("team_api", 50),
    ]
    for step in entry["canary"]:
        assert step["errors"] == 0 and step["requests"] >= 20, step
    after = spec_images(team, SERVICES)
    released = {p["service"]: p["image"] for p in entry["services"]}
    assert sorted(released) == list(RELEASED)
    for name in RELEASED:
        assert after[name] == released[name] != before[name], (name, before[name], after[name])
        assert ":sc-good@sha256:" in after[name]
    assert {n: after[n] for n in ("team_store", "team_proxy")} == {
        n: before[n] for n in ("team_store", "team_proxy")
    }
    assert load.failed == 0 and load.seen.get("200", 0) > 300, load.seen
    assert _proxy_tasks(team) == proxies
    assert _canaries(team) == []
