"""`inv deliver` against the real lab: the book's seven steps (checkout, unit, build, staging,
publish, prod-like, production tests) run by the real CLI on the test cluster's CD node, the
results table and the CI reports, the service rolled to the pinned image; a failing unit test or
functional test stops the run at its step with its exit code and output, leaving nothing behind
and the service untouched; --dry-run prints every command and changes nothing; bad input is
refused (a bad flag before any step, an unknown ref at checkout); two delivers at once do not collide.

Every test reads the cluster through its nodes' own TLS endpoints (the docker SDK) and runs the
CLI as a user would (`lab.inv`). Reports go to a temporary REPORTS_DIR, never into the repository.
Tests run in file order; each leaves go-demo_main (the sample stack's application) running a
delivered image on every replica.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import docker
import pytest
import requests

from cdtasks.cluster import Cluster
from cdtasks.rollout import delivered

from .conftest import git, manager_of, sample_repository

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("checkout", "unit", "build", "staging", "publish", "prodlike", "prodtest")
STACK = "go-demo"  # STACK_NAME: what the release's lock and records are kept under
SERVICE = f"{STACK}_main"  # the Swarm service that runs the sample's image (demo/stack.yml)
IMAGE = "localhost:5000/go-demo"
CD_NODE = "swarm-test-1"
PROD_LIKE = {"swarm-test-2", "swarm-test-3"}
COMPOSE_LABEL = "com.docker.compose.project"
WIDE = {"COLUMNS": "250"}  # keep rich from wrapping table cells
ROW = re.compile(r"^\W*(" + "|".join(STEPS) + r")\s*[│|]\s*(ok|FAILED|skipped)\s*[│|]", re.M)


# -- helpers ------------------------------------------------------------------------------------
def cluster(lab) -> Cluster:
    return Cluster.of(lab.settings("test")).discover()


def deliver(lab, reports: Path, *args: str, timeout: float = 1500):
    """`inv deliver ARGS` with reports in `reports`; never raises on a non-zero exit."""
    started = time.monotonic()
    proc = lab.inv(
        "deliver",
        *args,
        check=False,
        timeout=timeout,
        extra_env={**WIDE, "CDTASKS_REPORTS_DIR": str(reports)},
    )
    print(
        f"\n`inv deliver {' '.join(args)}`: exit {proc.returncode} after "
        f"{time.monotonic() - started:.1f}s\n{proc.stdout.strip()}"
    )
    return proc


def table(stdout: str) -> dict[str, str]:
    """step -> ok / FAILED / skipped, from the results table on stdout."""
    return dict(ROW.findall(stdout))


def expect_steps(ok_until: int, failed: str | None) -> dict[str, str]:
    """The table a run stopping at STEPS[ok_until] (FAILED) should print."""
    want = {}
    for i, name in enumerate(STEPS):
        if failed is None or i < ok_until:
            want[name] = "ok"
        elif i == ok_until:
            want[name] = "FAILED"
        else:
            want[name] = "skipped"
    return want


def read_reports(reports: Path) -> tuple[dict, ET.Element]:
    doc = json.loads((reports / "deliver.json").read_text())
    junit = ET.parse(reports / "deliver.junit.xml").getroot()
    return doc, junit


def suite_of(junit: ET.Element) -> ET.Element:
    suites = junit.findall("testsuite")
    assert len(suites) == 1, ET.tostring(junit)[:500]
    return suites[0]


def projects(commands: list[str]) -> set[str]:
    """The compose project names (`-p`) in the recorded commands."""
    return {m.group(1) for c in commands for m in [re.search(r" -p (\S+)", c)] if m}


def service_state(lab) -> tuple[str, list[tuple[str, str, str]]]:
    """(the spec's image, [(node, state, image)] of every task that should be running)."""
    mgr = manager_of(cluster(lab))
    svc = mgr.api.inspect_service(SERVICE)
    names = {n["ID"]: n["Description"]["Hostname"] for n in mgr.api.nodes()}
    tasks = mgr.api.tasks(filters={"service": SERVICE, "desired-state": "running"})
    return (
        svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        sorted(
            (
                names.get(t.get("NodeID"), "?"),
                t["Status"]["State"],
                t["Spec"]["ContainerSpec"]["Image"],
            )
            for t in tasks
        ),
    )


def assert_runs(lab, image: str, timeout: float = 60) -> None:
    """Both replicas run `image`, on the prod-like nodes only (allowing Swarm to settle)."""
    deadline = time.monotonic() + timeout
    while True:
        spec_image, tasks = service_state(lab)
        good = (
            spec_image == image
            and len(tasks) == 2
            and all(
                state == "running" and img == image and node in PROD_LIKE
                for node, state, img in tasks
            )
        )
        if good or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert spec_image == image, f"the service's spec runs {spec_image}, not {image}"
    assert len(tasks) == 2, tasks
    for node, state, img in tasks:
        assert state == "running", tasks
        assert img == image, tasks
        assert node in PROD_LIKE, f"a {SERVICE} task runs on {node}: {tasks}"


def compose_leftovers(lab) -> list[str]:
    """Containers, networks and volumes of any compose project on the CD node."""
    cd = cluster(lab).client(CD_NODE)
    flt = {"label": COMPOSE_LABEL}
    return (
        [
            f"container {c.name} ({c.labels.get(COMPOSE_LABEL)})"
            for c in cd.containers.list(all=True, filters=flt)
        ]
        + [f"network {n.name}" for n in cd.networks.list(filters=flt)]
        + [f"volume {v.name}" for v in cd.volumes.list(filters=flt)]
    )


def in_registry(lab, ref: str) -> bool:
    """Whether the cluster's registry has `ref`, asked by the CD node's engine."""
    cd = cluster(lab).client(CD_NODE)
    try:
        cd.images.get_registry_data(ref)
    except docker.errors.APIError:
        return False
    return True


def built_on_cd_node(lab, ref: str) -> bool:
    try:
        cluster(lab).client(CD_NODE).images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def hello_through_proxy(lab, nodes=PROD_LIKE) -> str:
    """GET /demo/hello through the proxy on one of `nodes` (default: the test cluster's
    prod-like nodes)."""
    last: object = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for node in sorted(nodes):
            try:
                r = requests.get(f"http://127.0.0.1:{lab.http_port(node)}/demo/hello", timeout=5)
                if r.status_code == 200:
                    return r.text
                last = (r.status_code, r.text)
            except requests.RequestException as exc:
                last = exc
        time.sleep(0.5)
    raise AssertionError(f"{SERVICE} does not answer through the proxy: {last!r}")


def at_once(
    lab,
    tmp_path: Path,
    runs: dict[str, list[str]],
    extra_env: dict | None = None,
    timeout: float = 1800,
) -> dict[str, tuple[int, str, str]]:
    """`inv ARGS` for every name in `runs`, all started together (reports in tmp_path/NAME);
    name -> (exit code, stdout, stderr) once all have ended."""
    started = time.monotonic()
    procs = {}
    results = {}
    with contextlib.ExitStack() as files:
        for name, args in runs.items():
            out = files.enter_context(open(tmp_path / f"{name}.out", "w+"))
            err = files.enter_context(open(tmp_path / f"{name}.err", "w+"))
            env = {
                **lab.env,
                **WIDE,
                **(extra_env or {}),
                "CDTASKS_REPORTS_DIR": str(tmp_path / name),
            }
            procs[name] = (
                subprocess.Popen(
                    [sys.executable, "-m", "invoke", *args],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=err,
                    text=True,
                ),
                out,
                err,
            )
        for name, (proc, out, err) in procs.items():
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            out.seek(0), err.seek(0)
            results[name] = (code, out.read(), err.read())
            print(
                f"\n--- {' '.join(runs[name])}: exit {code} at "
                f"{time.monotonic() - started:.1f}s\n{results[name][1].strip()}"
            )
    return results


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) == count, f"{path}: expected {count}x {old!r}, found {text.count(old)}"
    path.write_text(text.replace(old, new))


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> dict[str, str]:
    """A git repository holding this project's demo/ at HEAD, plus two commits on top of it:
    one whose unit tests fail, one whose functional tests fail (its unit tests updated to pass).
    Returns the repository path and the commit ids."""
    repo = sample_repository(tmp_path_factory.mktemp("demo-repo"), "demo as in cdtasks HEAD")
    base = git(repo, "rev-parse", "HEAD")

    # A unit test that fails, with a marker to find in the output tail.
    git(repo, "checkout", "--quiet", "-b", "unitfail", base)
    test_server = repo / "demo/tests/unit/test_server.py"
    edit(
        test_server,
        "    def test_hello_with_delay(self):",
        "    def test_deliberately_broken(self):\n"
        '        self.assertEqual(server.HELLO, "DELIBERATE-UNIT-FAILURE")\n\n'
        "    def test_hello_with_delay(self):",
    )
    git(repo, "commit", "--quiet", "-am", "break a unit test")
    unitfail = git(repo, "rev-parse", "HEAD")

    # hello answers "hello, world?": unit tests follow, the functional test does not.
    git(repo, "checkout", "--quiet", "-b", "functionalfail", base)
    edit(repo / "demo/app/server.py", 'HELLO = "hello, world!\\n"', 'HELLO = "hello, world?\\n"')
    edit(test_server, 'b"hello, world!\\n"', 'b"hello, world?\\n"')  # HandlerTest first:
    edit(test_server, '"hello, world!\\n"', '"hello, world?\\n"', count=3)  # it contains these
    git(repo, "commit", "--quiet", "-am", "hello, world?")
    functionalfail = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "--quiet", "main")
    return {"repo": str(repo), "base": base, "unitfail": unitfail, "functionalfail": functionalfail}


# -- tests --------------------------------------------------------------------------------------
def test_deliver_runs_every_step_and_rolls_the_service(stack, tmp_path):
    reports = tmp_path / "reports"
    started = time.monotonic()
    proc = deliver(stack, reports, "--version", "1.1")
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert table(proc.stdout) == expect_steps(len(STEPS), None), proc.stdout

    # Reports: JSON and JUnit XML, 7 steps, none failed.
    doc, junit = read_reports(reports)
    assert doc["ok"] is True and doc["suite"] == "deliver"
    assert [s["name"] for s in doc["steps"]] == list(STEPS)
    assert all(s["status"] == "ok" for s in doc["steps"]), doc["steps"]
    meta = doc["meta"]
    assert meta["version"] == "1.1" and meta["env"] == "test" and meta["dry_run"] is False
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", meta["digest"] or ""), meta["digest"]
    suite = suite_of(junit)
    assert (
        suite.get("tests") == "7"
        and suite.get("failures") == "0"
        and suite.get("errors") == "0"
        and suite.get("skipped") == "0"
    ), suite.attrib
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == list(STEPS)
    # The build ran beside the unit tests: it started before they ended.
    at = {s["name"]: s for s in doc["steps"]}
    assert at["build"]["started"] < at["unit"]["started"] + at["unit"]["seconds"], doc["steps"]
    assert all(len(c.findall("failure")) == 0 and len(c.findall("skipped")) == 0 for c in cases)

    # The service runs exactly the verified image, pinned by digest, on the prod-like nodes.
    pinned = f"{IMAGE}:1.1@{meta['digest']}"
    assert_runs(stack, pinned)
    assert hello_through_proxy(stack) == "hello, world!\n"
    assert in_registry(stack, f"{IMAGE}:1.1")
    # Recorded on the cluster as delivered.
    record = [d for d in delivered(manager_of(cluster(stack)), STACK) if d["version"] == "1.1"]
    assert record and record[-1]["digest"] == meta["digest"], record

    # The compose projects (one per run) left nothing on the CD node.
    assert len(projects(meta["commands"])) == 1, meta["commands"]
    assert compose_leftovers(stack) == []
    print(
        f"deliver 1.1: {wall:.1f}s wall; steps: "
        + ", ".join(f"{s['name']} {s['seconds']:.1f}s" for s in doc["steps"])
    )


def test_failing_unit_test_stops_at_unit(stack, demo_repo, tmp_path):
    reports = tmp_path / "reports"
    before, _ = service_state(stack)
    proc = deliver(
        stack,
        reports,
        "--repo",
        demo_repo["repo"],
        "--ref",
        demo_repo["unitfail"],
        "--version",
        "1.2-unitfail",
    )
    assert proc.returncode == 12, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert table(proc.stdout) == expect_steps(1, "unit"), proc.stdout
    # The failed step is named, with the tail of the test run's output.
    assert re.search(r"^unit FAILED: .*run --rm unit", proc.stdout, re.M), proc.stdout
    assert "DELIBERATE-UNIT-FAILURE" in proc.stdout, proc.stdout
    assert "FAILED (failures=1)" in proc.stdout, proc.stdout

    doc, junit = read_reports(reports)
    assert doc["ok"] is False
    unit = doc["steps"][1]
    assert unit["name"] == "unit" and unit["status"] == "FAILED"
    assert "DELIBERATE-UNIT-FAILURE" in unit["output_tail"]
    # The run's clean-up took the compose project down (unit steps leave it to the run).
    assert doc["meta"]["commands"][-1].endswith("down --volumes --remove-orphans -t 5")
    suite = suite_of(junit)
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("7", "1", "5")
    failure = suite.find("testcase[@name='unit']/failure")
    assert failure is not None and "DELIBERATE-UNIT-FAILURE" in (failure.text or "")

    # Nothing changed: no image built, service spec untouched, no compose leftovers.
    assert not built_on_cd_node(stack, f"{IMAGE}:1.2-unitfail")
    assert service_state(stack)[0] == before
    assert_runs(stack, before)
    assert compose_leftovers(stack) == []


def test_failing_functional_test_stops_at_staging(stack, demo_repo, tmp_path):
    reports = tmp_path / "reports"
    before, _ = service_state(stack)
    version = "1.2-stagingfail"
    proc = deliver(
        stack,
        reports,
        "--repo",
        demo_repo["repo"],
        "--ref",
        demo_repo["functionalfail"],
        "--version",
        version,
    )
    assert proc.returncode == 14, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert table(proc.stdout) == expect_steps(3, "staging"), proc.stdout
    assert re.search(r"^staging FAILED: .*run --rm staging", proc.stdout, re.M), proc.stdout
    assert "hello, world?" in proc.stdout, proc.stdout  # the functional test's complaint
    doc, _ = read_reports(reports)
    assert [s["status"] for s in doc["steps"]] == list(expect_steps(3, "staging").values())
    project = projects(doc["meta"]["commands"])
    assert len(project) == 1, doc["meta"]["commands"]
    assert doc["meta"]["commands"][-1].endswith("down --volumes --remove-orphans -t 5"), doc[
        "meta"
    ]["commands"]

    # Built on the CD node, but staging was torn down and nothing reached the cluster.
    assert built_on_cd_node(stack, f"{IMAGE}:{version}")
    assert compose_leftovers(stack) == []
    assert not in_registry(stack, f"{IMAGE}:{version}")
    assert in_registry(stack, f"{IMAGE}:1.1")  # the check itself can tell
    assert service_state(stack)[0] == before
    assert_runs(stack, before)
    assert hello_through_proxy(stack) == "hello, world!\n"


def test_dry_run_prints_every_command_in_order_and_changes_nothing(stack, tmp_path):
    reports = tmp_path / "reports"
    before, _ = service_state(stack)
    version = "1.4-dry"
    proc = deliver(stack, reports, "--version", version, "--dry-run")
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert table(proc.stdout) == expect_steps(len(STEPS), None), proc.stdout
    lines = (proc.stdout + proc.stderr).splitlines()
    shown = [line.split("would run: ", 1)[1] for line in lines if "would run: " in line]
    # The checkout itself runs (it changes nothing outside the workspace) and says so.
    ran = [line.split("running: ", 1)[1] for line in lines if "running: " in line]
    assert [r.split()[:2] for r in ran] == [["git", "clone"], ["git", "-C"]], ran
    print("\n".join(shown))
    expected = [
        # One down for unit, build and staging: after staging (the run's clean-up would do it
        # if unit or build failed).
        r"compose .* -p (\S+) run --rm unit$",
        r"compose .* build app$",
        r"compose .* up -d staging-dep$",
        r"compose .* run --rm staging$",
        r"compose .* down ",
        rf"^docker -H \S+ push {re.escape(IMAGE)}:{re.escape(version)}$",
        rf"^docker service update --image {re.escape(IMAGE)}:{re.escape(version)} {SERVICE}$",
        r"compose .* run --rm production$",
        r"compose .* down ",
    ]
    assert len(shown) == len(expected), shown
    for line, pattern in zip(shown, expected, strict=True):
        assert re.search(pattern, line), (pattern, line)
    assert len(projects(shown)) == 1, shown  # one compose project for the whole run
    doc, _ = read_reports(reports)
    assert doc["meta"]["dry_run"] is True and doc["meta"]["commands"] == ran + shown

    # Nothing changed.
    assert not built_on_cd_node(stack, f"{IMAGE}:{version}")
    assert not in_registry(stack, f"{IMAGE}:{version}")
    assert not [d for d in delivered(manager_of(cluster(stack)), STACK) if d["version"] == version]
    assert service_state(stack)[0] == before
    assert_runs(stack, before)
    assert compose_leftovers(stack) == []


def test_a_refused_version_stops_before_any_step(stack, tmp_path):
    before, _ = service_state(stack)
    proc = deliver(stack, tmp_path / "reports", "--version", "latest", timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.stderr.strip().startswith("error: --version 'latest'"), proc.stderr
    assert table(proc.stdout) == {}, proc.stdout
    assert service_state(stack)[0] == before


def test_an_unknown_ref_is_refused_at_checkout(stack, tmp_path):
    before, _ = service_state(stack)
    proc = deliver(
        stack, tmp_path / "reports", "--version", "1.5", "--ref", "no-such-ref", timeout=300
    )
    assert proc.returncode == 11, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert table(proc.stdout) == expect_steps(0, "checkout"), proc.stdout
    failed = re.search(r"^checkout FAILED: (.*)$", proc.stdout, re.M)
    assert failed and "no-such-ref" in failed.group(1), proc.stdout
    assert service_state(stack)[0] == before
    assert compose_leftovers(stack) == []


def test_two_delivers_at_once_do_not_collide(stack, tmp_path):
    """SLOW (two full pipelines on one CD node, several minutes): `inv deliver --version 1.3a`
    and `--version 1.3b`, both from this project's HEAD, started together. Each run must use its
    own compose project, so neither's unit/build/staging trips over the other's; both change the
    same service, so they take its lock in turn (prod-like update and production tests of one,
    then of the other) and both succeed. Afterwards the service runs the one that went last."""
    started = time.monotonic()
    ran = at_once(stack, tmp_path, {v: ["deliver", "--version", v] for v in ("1.3a", "1.3b")})
    results = {v: (*r, tmp_path / v) for v, r in ran.items()}

    seen_projects = {}
    succeeded = []
    for version, (code, _stdout, stderr, reports) in results.items():
        doc, _ = read_reports(reports)
        seen_projects[version] = projects(doc["meta"]["commands"])
        assert len(seen_projects[version]) == 1, doc["meta"]["commands"]
        status = {s["name"]: s["status"] for s in doc["steps"]}
        # The CD-node steps (the compose ones) and the push passed for both.
        for step in ("checkout", "unit", "build", "staging", "publish"):
            assert status[step] == "ok", (version, step, doc["steps"], stderr[-3000:])
        assert code == 0, (version, code, doc["steps"], stderr[-3000:])
        succeeded.append(version)
    assert seen_projects["1.3a"].isdisjoint(seen_projects["1.3b"]), seen_projects
    waited = [v for v, r in results.items() if "waiting for the lock held by" in r[2]]
    print(
        f"waited for the other's lock: {waited or 'neither (their prod-like phases did not overlap)'}"
    )

    # The service ends on one of the two, pinned, on every replica.
    image, _ = service_state(stack)
    m = re.fullmatch(rf"{re.escape(IMAGE)}:(1\.3[ab])@sha256:[0-9a-f]{{64}}", image)
    assert m, image
    assert m.group(1) in succeeded, (image, succeeded)
    assert_runs(stack, image, timeout=120)
    assert compose_leftovers(stack) == []
    print(
        f"two delivers at once: {time.monotonic() - started:.1f}s; succeeded {succeeded}; "
        f"projects {seen_projects}; service runs {image}"
    )


def test_deliver_leaves_no_checkout_behind(stack):
    """Every deliver above removed its clone from the workspace, whatever the containers wrote."""
    workspace = stack.settings("test").delivery.workspace_dir
    left = sorted(p.name for p in workspace.glob(f"{STACK}-*")) if workspace.exists() else []
    assert left == [], f"checkouts left in {workspace}: {left}"


def test_dry_run_does_not_claim_a_rollout(stack, tmp_path):
    """The summary line (stdout and the report's `state`, which CI reads) of a dry run must not
    say the service runs the version that was never built, pushed or rolled out. Last in the
    file so that, while it fails, `-x` still runs everything above."""
    reports = tmp_path / "reports"
    before, _ = service_state(stack)
    version = "1.6-dry"
    proc = deliver(stack, reports, "--version", version, "--dry-run")
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert service_state(stack)[0] == before
    doc, _ = read_reports(reports)
    claim = f"runs {IMAGE}:{version}"
    assert claim not in doc["meta"]["state"], (
        f"dry run reports state {doc['meta']['state']!r} while {SERVICE} runs {before}"
    )
    assert not re.search(rf"^(?:{STACK}|{SERVICE}) {re.escape(claim)}", proc.stdout, re.M), (
        proc.stdout
    )
