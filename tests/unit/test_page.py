"""The release page: data from fake clusters and reports, HTML that is self-contained and
escaped; rendered by a real browser engine (headless Chromium) when one is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cdtasks import page, records
from cdtasks.budget import Budget

INJECTED = '<script>alert("x")</script><img src=https://evil.example/x.png>'
CREDENTIAL_URL = "https://bob:t0ken-123@git.example.org/app.git"
T0 = 1_780_000_000.0  # epoch seconds the fake tasks are placed around


def docker_time(epoch: float) -> str:
    return page.time_text(epoch).replace(" ", "T").replace("Z", ".123456789Z")


def task(slot, version, state, created, changed, node="n1"):
    return {
        "ServiceID": "go-demo",
        "Slot": slot,
        "NodeID": node,
        "DesiredState": "running",
        "CreatedAt": docker_time(created),
        "Spec": {
            "ContainerSpec": {"Image": f"localhost:5000/go-demo:{version}@sha256:{version * 8}"}
        },
        "Status": {"State": state, "Timestamp": docker_time(changed), "Err": ""},
    }


def fill(manager, version: str) -> None:
    """The service, its tasks and the nodes, answered beside conftest's config store (the page
    reads them through the same client)."""
    service = {
        "ID": "go-demo",
        "Spec": {
            "Name": "go-demo",
            "TaskTemplate": {
                "ContainerSpec": {"Image": f"localhost:5000/go-demo:{version}@sha256:{'ab' * 32}"}
            },
        },
    }
    nodes = [
        {"ID": "n1", "Description": {"Hostname": "swarm-test-2"}},
        {"ID": "n2", "Description": {"Hostname": "swarm-test-3"}},
    ]
    tasks = [
        task(1, "1.0", "shutdown", T0, T0 + 60),
        task(1, version, "running", T0 + 60, T0 + 63),
        task(2, "1.0", "shutdown", T0, T0 + 70, "n2"),
        task(2, version, "failed", T0 + 70, T0 + 72, "n2"),
        task(2, version, "running", T0 + 75, T0 + 78, "n2"),
    ]
    manager.api.inspect_service = lambda name: service
    manager.api.nodes = lambda: nodes
    manager.api.tasks = lambda filters: [t for t in tasks if t["ServiceID"] == filters["service"]]


def report(suite, version, steps, ok=True, repo=CREDENTIAL_URL):
    return {
        "suite": suite,
        "ok": ok,
        "seconds": sum(s["seconds"] for s in steps),
        "meta": {"env": "test", "version": version, "repo": repo, "state": "done"},
        "steps": [{"status": "ok", "detail": "", "output_tail": "", **s} for s in steps],
    }


@pytest.fixture()
def snap(swarm_manager):
    manager = swarm_manager
    fill(manager, "1.2")
    records.put(
        manager,
        "watch",
        "go-demo",
        {
            "event": "taken",
            "repo": CREDENTIAL_URL,
            "branch": "main",
            "commit": "c" * 40,
            "subject": INJECTED,
            "time": "2026-11-29T10:00:00+00:00",
        },
    )
    records.put(
        manager,
        "watch",
        "go-demo",
        {
            "event": "finished",
            "repo": CREDENTIAL_URL,
            "branch": "main",
            "commit": "c" * 40,
            "code": 14,
            "result": "deliver: failed at staging",
            "seconds": 30.5,
        },
    )
    records.put(
        manager,
        "delivered",
        "go-demo",
        {
            "version": "1.2",
            "digest": "sha256:" + "ab" * 32,
            "commit": "c" * 40,
            "repo": CREDENTIAL_URL,
            "time": "2026-11-29T10:01:00+00:00",
            "user": "dev",
        },
    )
    test = page.cluster("prod-like (test)", "go-demo", lambda: manager, ("watch", "delivered"))

    def silent():
        raise ConnectionError("no route to swarm-1")

    prod = page.cluster("production (prod)", "go-demo", silent, ("history",))
    measured = report(
        "deliver",
        "1.2",
        [
            {"name": "checkout", "seconds": 2.0, "started": 0.0},
            {"name": "unit", "seconds": 6.0, "started": 2.0},
            {"name": "build", "seconds": 4.0, "started": 2.0},  # beside the unit tests
            {
                "name": "staging",
                "seconds": 5.0,
                "started": 8.0,
                "status": "FAILED",
                "detail": f"staging tests failed: {INJECTED}",
                "output_tail": "AssertionError",
            },
        ],
        ok=False,
    )
    laid = report(
        "deploy",
        "1.1",
        [{"name": "rollout", "seconds": 20.0}, {"name": "prodtest", "seconds": 5.0}],
    )
    laid["meta"]["budget"] = BUDGET.record()
    runs = [{"commit": "c" * 40, "reports": [measured]}]
    return page.snapshot([test, prod], runs, [laid, measured], now=T0 + 100)


# The rollout of `laid`: 3 errors in its 2nd second, none before or after.
BUDGET = Budget(
    True,
    requests=60,
    errors=3,
    worst=3,
    worst_at=1,
    seconds=3.2,
    series=((0, 20, 0), (1, 18, 3), (3, 22, 0)),
    replicas=2,
    max_errors=5,
)


class Parsed(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags, self.links, self.text, self.classes = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "data", "poster"):
                self.links.append(value)
            if name == "class":
                self.classes.append(value)
            if name == "style" and "url(" in (value or ""):
                self.links.append(value)

    def handle_data(self, data):
        self.text.append(data)


def test_the_page_is_self_contained_and_escapes_every_text(snap):
    html = page.render(snap)
    parsed = Parsed(html)
    assert parsed.links == []  # no src, href or url(): nothing is fetched
    assert not {"script", "img", "link", "iframe", "object"} & set(parsed.tags)
    assert "@import" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert INJECTED in "".join(parsed.text)  # shown as text, exactly as written


def test_the_page_shows_each_run_and_what_is_running(snap):
    text = " ".join(Parsed(page.render(snap)).text)
    for expected in (
        "deliver 1.2 — FAILED, 17.0s",
        "deploy 1.1 — ok, 25.0s",  # each run once
        "localhost:5000/go-demo:1.2",
        "sha256:abababababab",  # versions running
        "did not answer: ConnectionError: no route to swarm-1",  # production silent
        "deliver: failed at staging",
        "cccccccccccc",  # the watched commit
        "staging tests failed",
    ):  # the failure and its reason
        assert expected in text, expected
    assert text.count("deliver 1.2 — FAILED") == 1  # the run and the same report on disk: once


def test_runs_are_ordered_by_when_they_were_written(snap):
    early = {"time": "2026-11-29T09:00:00+00:00", "reports": [{"suite": "deliver", "steps": []}]}
    late = {"time": "2026-11-29T11:00:00+00:00", "reports": [{"suite": "deploy", "steps": []}]}
    docs = page.snapshot([], [late, early], [{"suite": "rollback", "written": T0}], T0)["runs"]
    assert [d["suite"] for d in docs] == ["rollback", "deliver", "deploy"]
    assert "deploy  — FAILED, 0.0s, written 2026-11-29 11:00:00Z" in page.render(
        page.snapshot([], [late], [], T0)
    )


def test_credentials_in_urls_never_reach_the_page(snap):
    html = page.render(snap)
    assert "t0ken-123" not in html and "https://***@git.example.org/app.git" in html


def test_the_timeline_uses_start_offsets_when_the_report_has_them(snap):
    steps, measured = page.timeline(snap["runs"][0]["steps"])
    assert measured and [(s["name"], s["start"]) for s in steps] == [
        ("checkout", 0.0),
        ("unit", 2.0),
        ("build", 2.0),
        ("staging", 8.0),
    ]
    steps, measured = page.timeline(snap["runs"][1]["steps"])
    assert not measured and [(s["name"], s["start"]) for s in steps] == [
        ("rollout", 0.0),
        ("prodtest", 20.0),
    ]
    html = page.render(snap)
    # unit and build start together (2 of 13 s): their bars begin at the same place
    assert html.count('style="left:15.38%;') == 2
    assert html.count("steps laid end to end") == 1  # only the report without start times


def test_replicas_over_time(snap):
    reps = snap["clusters"][0]["members"][0]["replicas"]
    assert [(r["slot"], r["version"], r["state"], r["node"]) for r in reps] == [
        ("1", "1.0", "shutdown", "swarm-test-2"),
        ("1", "1.2", "running", "swarm-test-2"),
        ("2", "1.0", "shutdown", "swarm-test-3"),
        ("2", "1.2", "failed", "swarm-test-3"),
        ("2", "1.2", "running", "swarm-test-3"),
    ]
    assert reps[0]["from"] == pytest.approx(T0) and reps[0]["to"] == pytest.approx(T0 + 60)
    assert reps[1]["to"] is None  # still running: drawn up to now
    classes = Parsed(page.render(snap)).classes
    assert classes.count("replica") == 2
    assert classes.count("bar running") == 2 and classes.count("bar failed") == 2  # + the step


def test_timestamps_of_docker_and_of_the_records():
    assert page._when("2026-05-28T20:26:40.123456789Z") == pytest.approx(T0 + 0.123456)
    assert page._when("2026-05-28T22:26:40.5+02:00") == pytest.approx(T0 + 0.5)
    assert page._when("2026-05-28T20:26:40+00:00") == T0
    assert page._when("0001-01-01T00:00:00Z") is None and page._when("garbage") is None


def test_a_cluster_that_does_not_answer_leaves_the_rest_of_the_page(snap):
    prod = snap["clusters"][1]
    assert prod["error"] == "ConnectionError: no route to swarm-1" and prod["members"] == []
    assert "no deployment recorded" in page.render(snap)


def test_reports_on_disk_and_write(tmp_path: Path, snap):
    (tmp_path / "deliver.json").write_text(json.dumps(report("deliver", "9.9", [])))
    (tmp_path / "deploy.json").write_text("{half written")
    assert [d["meta"]["version"] for d in page.reports_on_disk([tmp_path, tmp_path])] == ["9.9"]
    path = page.write(tmp_path / "out" / page.FILE_NAME, snap)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == [page.FILE_NAME]  # no temporary file left


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium installed (apt-get install chromium)"
)
def test_a_real_browser_renders_the_rows(tmp_path: Path, snap):
    path = page.write(tmp_path / page.FILE_NAME, snap)
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            # no network at all: a page that needed one would show it missing
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = Parsed(dom.stdout)
    assert "script" not in parsed.tags  # the commit message stayed text in the browser's DOM
    assert parsed.classes.count("step ok") == 5 and parsed.classes.count("step failed") == 1
    assert parsed.classes.count("replica") == 2
    text = " ".join(parsed.text)
    assert "deliver 1.2 — FAILED" in text and "deploy 1.1 — ok" in text and INJECTED in text
    # the error budget's chart: a bar per second with requests, one with errors
    assert "svg" in parsed.tags and parsed.classes.count("req") == 4
    assert parsed.classes.count("err") == 2


def test_the_timeline_of_a_real_run_shows_steps_run_beside_each_other():
    """The runner's results (fake steps, one beside another), through the JSON report, onto the
    page: measured offsets, the overlapping step drawn from where it really started."""
    import time

    from cdtasks import report, runner

    class Quiet:
        step = done = staticmethod(lambda *a: None)

    def sleeps(seconds):
        return lambda: time.sleep(seconds) or "done"

    results = runner.run_steps(
        ["checkout", "unit", "build", "staging"],
        {
            "checkout": sleeps(0.2),
            "unit": sleeps(1.0),
            "build": sleeps(0.2),
            "staging": sleeps(0.1),
        },
        Quiet(),
        overlap={"unit": ("build", lambda r: None)},
    )
    doc = report.report_doc("deliver", results, {"version": "1.3"})
    steps, measured = page.timeline(doc["steps"])
    assert measured
    at = {s["name"]: s["start"] for s in steps}
    # Bounds that a loaded machine's scheduling delays cannot break (exact offsets did once).
    assert 0.0 <= at["checkout"] < at["unit"]
    assert at["checkout"] < at["build"] < at["unit"] + 0.9  # began while unit ran: side by side
    assert at["staging"] >= at["unit"] + 0.9
    html = page.render(page.snapshot([], [], [doc], T0))
    assert "deliver 1.3 — ok" in html and "steps laid end to end" not in html
    assert f"build: {at['build']:.1f}s + " in html


def test_each_write_has_a_temporary_file_of_its_own(tmp_path: Path, snap, monkeypatch):
    """`inv report` beside the watcher: two writers never share (and crash on) one temp file."""
    moved, real_replace = [], os.replace
    monkeypatch.setattr(
        page.os, "replace", lambda src, dst: moved.append(src) or real_replace(src, dst)
    )
    target = tmp_path / page.FILE_NAME
    page.write(target, snap)
    page.write(target, snap)
    assert len(set(moved)) == 2 and all(Path(m).parent == tmp_path for m in moved)
    assert [p.name for p in tmp_path.iterdir()] == [page.FILE_NAME]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_deployment_is_one_row_not_its_started_entry_too(swarm_manager):
    fill(swarm_manager, "1.2")
    base = {
        "env": "prod",
        "kind": "deploy",
        "image": "x",
        "digest": "sha256:" + "cd" * 32,
        "user": "dev",
        "service": "go-demo",
    }
    for entry in (
        {**base, "run": "r1", "version": "1.1", "result": "started"},
        {**base, "run": "r1", "version": "1.1", "result": "deployed"},
        {**base, "run": "r2", "version": "1.2", "result": "started"},
    ):
        records.put(swarm_manager, "history", "go-demo", entry)
    prod = page.cluster("production (prod)", "go-demo", lambda: swarm_manager, ("history",))
    snap = page.snapshot([prod], [], [], now=T0)
    assert [(h["version"], h["result"]) for h in snap["history"]] == [
        ("1.1", "deployed"),
        ("1.2", "unfinished"),
    ]
    assert "started" not in page.render(snap).split('id="deployments"')[1].split("<h2")[0]


def test_a_rollout_s_error_budget_is_a_line_and_a_chart_of_each_second(snap):
    html = page.render(snap)
    text = " ".join(Parsed(html).text)
    assert "60 requests, 3 errors, worst second 3 at 1s (budget 5)" in text
    assert "1s: 18 requests, 3 errors" in text  # each bar's tooltip
    assert "per second over 4s, scale 0 … 22" in text
    chart = page.budget_chart(BUDGET.record())
    assert chart.count('<rect class="req"') == 3 and chart.count('<rect class="err"') == 1
    # an error among many requests stays visible: never thinner than 1.5 px
    assert (
        page.budget_chart({**BUDGET.record(), "series": [[0, 1000, 1]]}).count('height="1.5"') == 1
    )
    unread = page.budget_chart({"measured": False, "reason": "no runtime API", "max_errors": None})
    assert "errors not measured: no runtime API" in unread and "<svg" not in unread
    assert page.budget_chart(None) == ""


def test_the_deployments_table_shows_errors_of_requests(swarm_manager):
    entry = {
        "time": "2026-11-29T10:00:00+00:00",
        "env": "prod",
        "kind": "deploy",
        "version": "2",
        "result": "failed, rolled back",
        "rolled_back": True,
        "seconds": 40,
        "user": "dev",
        "run": "r1",
    }
    fill(swarm_manager, "2")
    records.put(swarm_manager, "history", "go-demo", {**entry, "budget": BUDGET.record()})
    records.put(
        swarm_manager,
        "history",
        "go-demo",
        {**entry, "run": "r2", "budget": {"measured": False, "reason": "x", "max_errors": None}},
    )
    records.put(swarm_manager, "history", "go-demo", {**entry, "run": "r3"})  # before budgets
    view = page.cluster("production (prod)", "go-demo", lambda: swarm_manager, ("history",))
    text = " ".join(Parsed(page.render(page.snapshot([view], [], [], now=T0))).text)
    assert "3 of 60 (max 5)" in text and "not measured" in text


def test_a_stack_release_shows_each_of_its_services_and_their_digests(swarm_manager):
    """A release of several services (a stack): the versions table and the replicas over time
    show each service that the latest record names, the deployments table each one's digest."""
    api, worker = "sha256:" + "a1" * 32, "sha256:" + "b2" * 32
    specs = {
        name: {"ID": name, "Spec": {"Name": name, "TaskTemplate": {"ContainerSpec": {"Image": i}}}}
        for name, i in (
            ("team_api", f"localhost:5000/team-api:1.1@{api}"),
            ("team_worker", f"localhost:5000/team-worker:1.1@{worker}"),
        )
    }
    swarm_manager.api.inspect_service = lambda name: specs[name]
    swarm_manager.api.nodes = lambda: [{"ID": "n1", "Description": {"Hostname": "swarm-1"}}]
    swarm_manager.api.tasks = lambda filters: [
        {**task(1, "1.1", "running", T0, T0 + 3), "ServiceID": filters["service"]}
    ]
    records.put(
        swarm_manager,
        "history",
        "team",
        {
            "time": "2026-11-29T10:00:00+00:00",
            "env": "prod",
            "kind": "deploy",
            "service": "team",
            "version": "1.1",
            "image": f"localhost:5000/team-api:1.1@{api}",
            "result": "deployed",
            "run": "r1",
            "services": [
                {"service": "team_api", "image": f"localhost:5000/team-api:1.1@{api}"},
                {"service": "team_worker", "image": f"localhost:5000/team-worker:1.1@{worker}"},
            ],
        },
    )
    view = page.cluster("production (prod)", "team", lambda: swarm_manager, ("history",))
    assert view["error"] == ""
    assert [(m["service"], m["image"].rsplit("@")[1]) for m in view["members"]] == [
        ("team_api", api),
        ("team_worker", worker),
    ]
    html = page.render(page.snapshot([view], [], [], now=T0 + 10))
    text = " ".join(Parsed(html).text)
    assert f"team_api {api[:19]}, team_worker {worker[:19]}" in text  # the deployment's row
    assert "production (prod): team_api from" in text and "team_worker from" in text
    # the latest record names what is shown; before any, the members given (`gather`: a
    # stack's services, not its jobs)
    named = page.cluster("p", "team", lambda: swarm_manager, ("history",), ["team_api"])
    assert [m["service"] for m in named["members"]] == ["team_api", "team_worker"]
    before = page.cluster("p", "other", lambda: swarm_manager, ("history",), ["team_api"])
    assert [m["service"] for m in before["members"]] == ["team_api"]
