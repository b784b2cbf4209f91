"""A repository of its own, written on the book's compose contract as the book writes it:
tests/apps/hello-book (`image: hello-book`, its own compose file `docker-compose-ci.yml`,
`version: '2'`, staging-dep publishing host port 8080) copied into a git repository, served over
HTTP with credentials. `inv deliver --repo R --compose-file docker-compose-ci.yml --image
go-demo` publishes its `app` as localhost:5000/go-demo:VERSION, the image the sample stack's
`go-demo_main` runs, and so delivers it to that service on prod-like (a release's members are the
stack services running an image the repository builds); `inv deploy --env prod` puts exactly that
digest on production, two deliveries of it at once both pass, and the sample (demo/) is delivered
and deployed back. The sample's proxy routes /demo to the service and health-checks /demo/hello:
hello-book is built to be served there (`HELLO_PREFIX=/demo/hello`, passed to compose through
PASS_ENV), as the service it stands in for.

Runs alone after `inv provision` (its first test delivers before `inv services`), or after the
other files (that test is then skipped)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cdtasks import records, services
from cdtasks.cluster import Cluster
from cdtasks.rollout import delivered

from .conftest import app_repository, manager_of
from .test_3_deliver import (
    CD_NODE,
    ROOT,
    SERVICE,
    STACK,
    WIDE,
    assert_runs,
    at_once,
    compose_leftovers,
    expect_steps,
    git,
    hello_through_proxy,
    read_reports,
    table,
)

APP = ROOT / "tests/apps/hello-book"
COMPOSE = "docker-compose-ci.yml"
# hello-book's `app`, published under the image name the sample stack's go-demo_main runs
# (`--image go-demo`): the sample's own builds go there too.
IMAGE = "localhost:5000/go-demo"
DEMO_IMAGE = "localhost:5000/go-demo"
PROD = ("swarm-1", "swarm-2", "swarm-3")
SECRET = "s3cret-Token-4711"
# hello-book served where the sample's proxy sends go-demo's requests; compose gets the variable
# only because PASS_ENV names it.
HELLO_ENV = {"CDTASKS_PASS_ENV": "HELLO_PREFIX", "HELLO_PREFIX": "/demo/hello"}


# -- a git server over HTTP that wants credentials ---------------------------------------------
class GitHTTP(BaseHTTPRequestHandler):
    """`git http-backend` as CGI behind HTTP basic auth (user `ci`, password SECRET)."""

    root = ""

    def do_GET(self):
        self._cgi()

    def do_POST(self):
        self._cgi()

    def _cgi(self):
        wanted = "Basic " + base64.b64encode(f"ci:{SECRET}".encode()).decode()
        if self.headers.get("Authorization") != wanted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "REMOTE_USER": "ci",
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True
        ).stdout
        head, _, content = out.partition(b"\r\n\r\n")
        headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
        self.send_response(status)
        for key, value in headers:
            if key.lower() != "status":
                self.send_header(key, value.strip())
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    """hello-book as a repository of its own (branch main; branch nostaging: its compose file
    without `staging`), bare behind an HTTP server that wants credentials. Returns the local
    path and the URL with credentials."""
    work = app_repository(
        APP, tmp_path_factory.mktemp("hello-book"), "hello-book as in cdtasks' tests/apps"
    )
    git(work, "checkout", "--quiet", "-b", "nostaging")
    compose = (work / COMPOSE).read_text()
    start = compose.index("  staging:\n")
    end = compose.index("  production:\n")
    (work / COMPOSE).write_text(compose[:start] + compose[end:])
    git(work, "commit", "--quiet", "-am", "no staging service")
    git(work, "checkout", "--quiet", "main")

    served = tmp_path_factory.mktemp("git-http")
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(work), str(served / "hello.git")], check=True
    )
    GitHTTP.root = str(served)
    server = ThreadingHTTPServer(("127.0.0.1", 0), GitHTTP)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://ci:{SECRET}@127.0.0.1:{server.server_address[1]}/hello.git"
    yield {"path": str(work), "url": url}
    server.shutdown()
    server.server_close()


def deliver(lab, reports: Path, *args: str, extra: dict | None = None, timeout: float = 1500):
    started = time.monotonic()
    proc = lab.inv(
        "deliver",
        *args,
        check=False,
        timeout=timeout,
        extra_env={**WIDE, **HELLO_ENV, "CDTASKS_REPORTS_DIR": str(reports), **(extra or {})},
    )
    print(
        f"\n`inv deliver {' '.join(args)}`: exit {proc.returncode} after "
        f"{time.monotonic() - started:.1f}s\n{proc.stdout.strip()}"
    )
    return proc


def hello_args(repo: str, version: str) -> tuple[str, ...]:
    return (
        "--repo",
        repo,
        "--compose-file",
        COMPOSE,
        "--image",
        "go-demo",
        "--version",
        version,
    )


def manager(lab, env: str):
    return manager_of(Cluster.of(lab.settings(env)).discover())


def task_images(lab, env: str) -> list[str]:
    mgr = manager(lab, env)
    tasks = mgr.api.tasks(filters={"service": SERVICE, "desired-state": "running"})
    return [t["Spec"]["ContainerSpec"]["Image"] for t in tasks if t["Status"]["State"] == "running"]


def record_of(lab, version: str) -> dict:
    """The last delivered record of `version` (the release's records are the stack's)."""
    found = [r for r in delivered(manager(lab, "test"), STACK) if r["version"] == version]
    assert found, f"no delivered record of {version}"
    return found[-1]


def no_secret_anywhere(lab, *texts: str) -> None:
    """Neither the outputs given, nor a report, a step state, the local history or a record
    on either cluster holds the password."""
    for text in texts:
        assert SECRET not in text, text[-2000:]
    s = lab.settings("test")
    for where in (s.delivery.workspace_dir, lab.state_dir):
        for f in Path(where).rglob("*"):
            if f.is_file() and f.suffix in (".json", ".jsonl", ".xml"):
                assert SECRET not in f.read_text(errors="replace"), f
    for env in ("test", "prod"):
        mgr = manager(lab, env)
        for c in mgr.api.configs(filters={"label": records.KIND_LABEL}):
            data = base64.b64decode(mgr.api.inspect_config(c["ID"])["Spec"]["Data"])
            assert SECRET.encode() not in data, c["Spec"]["Name"]


# -- tests --------------------------------------------------------------------------------------
def test_a_compose_file_without_staging_is_refused_before_anything_runs(lab, hello, tmp_path):
    proc = deliver(
        lab,
        tmp_path / "reports",
        "--ref",
        "nostaging",
        *hello_args(hello["path"], "0.9"),
        timeout=300,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and COMPOSE in errors[0] and "staging" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing ran: no step but the checkout, no compose project, no image, no report.
    assert not re.search(r"\] (unit|build|staging) \.\.\.", proc.stderr), proc.stderr
    assert not (tmp_path / "reports").exists()
    assert compose_leftovers(lab) == []
    cd = Cluster.of(lab.settings("test")).discover().client(CD_NODE)
    assert not cd.images.list(name=f"{IMAGE}:0.9")  # the sample's builds share the name


def test_bad_flags_get_one_line_and_exit_2(lab, hello, tmp_path):
    cases = [
        (("--version", "latest"), "--version"),
        (("--version", "1.0", "--ref=--upload-pack=touch /tmp/x"), "--ref"),
        (("--version", "1.0", "--compose-file", "../outside.yml"), "--compose-file"),
        (("--version", "1.0", "--compose-file", "missing.yml"), "--compose-file"),
    ]
    for args, flag in cases:
        proc = lab.inv(
            "deliver",
            "--repo",
            hello["path"],
            *args,
            check=False,
            timeout=120,
            extra_env={"CDTASKS_REPORTS_DIR": str(tmp_path / "reports")},
        )
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr[-2000:])
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), (args, proc.stderr)
    # A URL with credentials that does not answer: refused, the password never shown.
    bad = f"http://ci:{SECRET}@127.0.0.1:1/nothing.git"
    proc = lab.inv("deliver", "--repo", bad, "--version", "1.0", check=False, timeout=120)
    assert proc.returncode == 2 and "error: --repo 'http://***@127.0.0.1:1/" in proc.stderr, (
        proc.stderr
    )
    no_secret_anywhere(lab, proc.stdout, proc.stderr)
    assert not (tmp_path / "reports").exists()


def test_deliver_before_inv_services_goes_as_far_as_the_service(lab, hello, tmp_path):
    """Right after `inv provision`: the images the tests need are put on the CD node by the
    delivery itself; prod-like then needs the service and says how to create it."""
    if manager(lab, "test").service(SERVICE) is not None:
        pytest.skip("the services exist already (an earlier test file created them)")
    proc = deliver(lab, tmp_path / "reports", *hello_args(hello["path"], "0.8"))
    assert proc.returncode == 16, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    assert table(proc.stdout) == expect_steps(5, "prodlike"), proc.stdout
    assert "create it with `inv services`" in proc.stdout, proc.stdout
    assert re.search(r"loaded .*cdtasks/python:3\.11.* into swarm-test-1", proc.stderr), proc.stderr
    assert compose_leftovers(lab) == []


def test_hello_book_is_delivered_to_prod_like(stack, hello, tmp_path):
    reports = tmp_path / "reports"
    proc = deliver(stack, reports, *hello_args(hello["url"], "1.1"))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert table(proc.stdout) == expect_steps(7, None), proc.stdout
    # staging-dep publishes 8080 on the CD node: the staging lock was taken, and said so.
    assert f"staging takes the staging lock of {CD_NODE} (host ports 8080)" in proc.stderr
    # version '2': compose's warning about it is no error.
    assert not re.search(r"^error", proc.stderr, re.M | re.I), proc.stderr[-3000:]
    doc, _ = read_reports(reports)
    digest = doc["meta"]["digest"]
    pinned = f"{IMAGE}:1.1@{digest}"
    assert_runs(stack, pinned)
    assert hello_through_proxy(stack) == "hello from hello-book 1.1\n"
    record = record_of(stack, "1.1")
    assert record["image"] == f"{IMAGE}:1.1" and record["digest"] == digest, record
    assert record["compose_file"] == COMPOSE
    assert record["repo"] == hello["url"].replace(f"ci:{SECRET}@", "***@"), record
    assert compose_leftovers(stack) == []
    no_secret_anywhere(stack, proc.stdout, proc.stderr)


def test_deploy_puts_exactly_the_delivered_digest_on_production(stack, hello, tmp_path):
    record = record_of(stack, "1.1")
    # The record decides (hello-book's digest), not a tag resolved again. The production tests
    # run hello-book's own, from the delivered repository.
    proc = stack.inv(
        "deploy",
        "--env",
        "prod",
        "--version",
        "1.1",
        check=False,
        timeout=900,
        extra_env={
            **WIDE,
            **HELLO_ENV,
            "CDTASKS_REPO": hello["url"],
            "CDTASKS_REPORTS_DIR": str(tmp_path),
        },
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    pinned = f"{IMAGE}:1.1@{record['digest']}"
    images = task_images(stack, "prod")
    assert len(images) == 3 and set(images) == {pinned}, images
    hist = stack.inv("history", "--env", "prod", extra_env=WIDE).stdout
    row = [line for line in hist.splitlines() if "1.1" in line and IMAGE in line]
    assert row and "deployed" in row[-1] and record["digest"][:19] in row[-1], hist
    assert hello_through_proxy(stack, PROD) == "hello from hello-book 1.1\n"
    no_secret_anywhere(stack, proc.stdout, proc.stderr)


def test_two_delivers_of_hello_book_at_once_both_pass(stack, hello, tmp_path):
    results = at_once(
        stack,
        tmp_path,
        {v: ["deliver", *hello_args(hello["path"], v)] for v in ("1.2a", "1.2b")},
        HELLO_ENV,
    )
    for version, (code, stdout, stderr) in results.items():
        assert code == 0, (version, stdout[-3000:], stderr[-3000:])
        # Each staged, tagged and pushed its own build: the version the image reports.
        record = record_of(stack, version)
        assert record["image"] == f"{IMAGE}:{version}"
    waited = [v for v, r in results.items() if f"the lock of staging-{CD_NODE}, held by" in r[2]]
    print(f"waited for the other's staging lock: {waited or 'neither'}")
    spec_image = services.current_image(manager(stack, "test"), SERVICE)
    m = re.fullmatch(rf"{re.escape(IMAGE)}:(1\.2[ab])@sha256:[0-9a-f]{{64}}", spec_image)
    assert m, spec_image
    # The image the service runs is the one built for its version (not the other run's).
    assert hello_through_proxy(stack) == f"hello from hello-book {m.group(1)}\n"
    assert compose_leftovers(stack) == []


def test_the_sample_is_delivered_and_deployed_back(stack, tmp_path):
    proc = stack.inv(
        "deliver",
        "--version",
        "1.9",
        check=False,
        timeout=1500,
        extra_env={**WIDE, "CDTASKS_REPORTS_DIR": str(tmp_path)},
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    record = record_of(stack, "1.9")
    assert_runs(stack, f"{DEMO_IMAGE}:1.9@{record['digest']}")
    assert hello_through_proxy(stack) == "hello, world!\n"
    stack.inv("deploy", "--env", "prod", extra_env={"CDTASKS_REPORTS_DIR": str(tmp_path)})
    images = task_images(stack, "prod")
    assert set(images) == {f"{DEMO_IMAGE}:1.9@{record['digest']}"}, images
    assert hello_through_proxy(stack, PROD) == "hello, world!\n"
