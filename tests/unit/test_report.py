import io
import json
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cdtasks import report
from cdtasks.redaction import redact
from cdtasks.report import Progress, make_logger, print_results, print_table, write_reports
from cdtasks.runner import StepResult

SECRET = "s3cr3t-token"
RESULTS = [
    StepResult("lint", True, 1.25, "clean"),
    StepResult(
        "unit",
        False,
        3.5,
        f"2 failed, token {SECRET}",
        f"\x1b[31mFAILED\x1b[0m test_login\nAuthorization: {SECRET}\x00",
    ),
    StepResult("deploy", False, 0.0, "earlier step failed", skipped=True),
]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_redact_hides_long_secrets_whole_and_ignores_short_ones():
    assert (
        redact("pw=abc key=longsecret-plus", ["abc", "longsecret", "longsecret-plus", "", None])
        == "pw=abc key=***"
    )


def test_json_report(tmp_path: Path):
    json_path, xml_path = write_reports(
        tmp_path / "out", "deliver", RESULTS, {"env": "staging", "nodes": 3}
    )
    assert (json_path, xml_path) == (
        tmp_path / "out/deliver.json",
        tmp_path / "out/deliver.junit.xml",
    )
    doc = json.loads(json_path.read_text())
    assert doc["suite"] == "deliver"
    assert doc["ok"] is False
    assert doc["seconds"] == 4.75
    assert doc["meta"] == {"env": "staging", "nodes": 3}
    assert [(s["name"], s["status"], s["seconds"]) for s in doc["steps"]] == [
        ("lint", "ok", 1.25),
        ("unit", "FAILED", 3.5),
        ("deploy", "skipped", 0.0),
    ]
    assert "\x1b" not in doc["steps"][1]["output_tail"]


def test_json_report_ok_when_only_skips(tmp_path: Path):
    json_path, _ = write_reports(tmp_path, "deploy", [RESULTS[0], RESULTS[2]], {})
    assert json.loads(json_path.read_text())["ok"] is True


def test_junit_report(tmp_path: Path):
    _, xml_path = write_reports(tmp_path, "deliver", RESULTS, {"env": "staging"}, secrets=[SECRET])
    root = ET.parse(xml_path).getroot()
    suite = root.find("testsuite")
    assert suite.get("name") == "deliver"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    assert suite.get("time") == "4.750"
    cases = suite.findall("testcase")
    assert [(c.get("name"), c.get("time")) for c in cases] == [
        ("lint", "1.250"),
        ("unit", "3.500"),
        ("deploy", "0.000"),
    ]
    assert cases[0].find("failure") is None and cases[0].find("skipped") is None
    failure = cases[1].find("failure")
    assert failure.get("message") == "2 failed, token ***"
    assert failure.text == "FAILED test_login\nAuthorization: ***"
    assert cases[2].find("skipped") is not None
    assert suite.find("properties/property").attrib == {"name": "env", "value": "staging"}


def test_reports_redact_secrets_everywhere(tmp_path: Path):
    meta = {
        "env": "prod",
        "registry_password": SECRET,
        "args": [f"--token={SECRET}"],
        "file": Path(SECRET),
    }
    paths = write_reports(tmp_path, "deliver", RESULTS, meta, secrets=[SECRET, "abc"])
    for path in paths:
        text = path.read_text()
        assert SECRET not in text
        assert "***" in text
    assert json.loads(paths[0].read_text())["meta"] == {
        "env": "prod",
        "registry_password": "***",
        "args": ["--token=***"],
        "file": "***",
    }


def test_print_results_plain_and_redacted(capsys):
    print_results("deliver", RESULTS, secrets=[SECRET])
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "\x1b" not in out
    for word in ("lint", "ok", "FAILED", "skipped", "total 4.8s"):
        assert word in out
    failure = out[out.index("unit FAILED: 2 failed, token ***") :]
    assert "FAILED test_login" in failure and "Authorization: ***" in failure


def test_print_table_treats_cells_as_text(capsys):
    print_table("nodes", ["node", "role"], [["node-1", "[bold]manager[/bold]"]])
    out = capsys.readouterr().out
    assert "[bold]manager[/bold]" in out and "\x1b" not in out


def test_progress_plain_lines(capsys):
    with Progress("deliver") as p:
        p.step("unit")
        p.log("running pytest")
        p.update("replicas 1/2 on 1.1")
        p.update("replicas 1/2 on 1.1")
        p.update("replicas 2/2 on 1.1")  # changed, but within the same second
        p.done(StepResult("unit", True, 3.2))
        p.step("push")
        p.done(StepResult("push", False, 1.0, "denied"))
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "[deliver] unit ...",
        "[deliver] running pytest",
        "[deliver] unit: replicas 1/2 on 1.1",
        "[deliver] unit ... ok (3.2s)",
        "[deliver] push ...",
        "[deliver] push ... FAILED (1.0s): denied",
    ]
    assert "\x1b" not in err and "\r" not in err


def test_progress_update_at_most_once_per_second(capsys, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(report, "monotonic", lambda: now[0])
    with Progress("deploy") as p:
        p.step("web")
        for status, at in [
            ("1/2", 100.0),
            ("2/2", 100.5),
            ("2/2", 101.6),
            ("3/3", 102.0),
            ("3/3", 104.0),
        ]:
            now[0] = at
            p.update(status)
    assert capsys.readouterr().err.splitlines() == [
        "[deploy] web ...",
        "[deploy] web: 1/2",
        "[deploy] web: 2/2",
        "[deploy] web: 3/3",
    ]


def test_progress_disabled_is_plain_even_on_a_terminal(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    with Progress("deliver", enabled=False) as p:
        p.step("unit")
        p.done(StepResult("unit", True, 0.5))
    assert tty.getvalue() == "[deliver] unit ...\n[deliver] unit ... ok (0.5s)\n"


@pytest.fixture
def terminal(monkeypatch):
    """Makes stderr a terminal rich draws live progress on; called in the test itself, since
    pytest's capture sets sys.stderr again between a fixture and the test."""

    def install() -> FakeTTY:
        for name in ("TTY_INTERACTIVE", "TERM", "NO_COLOR", "FORCE_COLOR"):
            monkeypatch.delenv(name, raising=False)
        stream = FakeTTY()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


def test_progress_live_on_a_terminal_prints_log_and_result_lines(terminal):
    tty = terminal()
    with Progress("deliver") as p:
        assert p._live is not None
        p.step("unit")
        p.update("collecting")
        p.log("running pytest")
        p.done(StepResult("unit", True, 3.2))
    assert "running pytest" in tty.getvalue() and "unit ... ok (3.2s)" in tty.getvalue()


@pytest.mark.parametrize("use_progress", [True, False])
def test_concurrent_logging_keeps_every_line_whole(capsys, use_progress):
    threads, per_thread = 8, 200
    with Progress("swarm") as p:
        log = p.log if use_progress else make_logger("swarm")

        def work(n: int) -> None:
            for i in range(per_thread):
                log(f"worker {n} line {i}")

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    lines = capsys.readouterr().err.splitlines()
    expected = {f"[swarm] worker {n} line {i}" for n in range(threads) for i in range(per_thread)}
    assert len(lines) == len(expected) and set(lines) == expected


# -- credentials in URLs --------------------------------------------------------------------------
REPO_URL = "https://deploy:gh-t0ken-42@git.example.com/team/app.git"


@pytest.mark.parametrize(
    "text, shown",
    [
        (REPO_URL, "https://***@git.example.com/team/app.git"),
        ("ssh://git:pw@host:2222/x.git", "ssh://***@host:2222/x.git"),
        ("git+https://t0ken@host/x", "git+https://***@host/x"),
        ("HTTP://U:P@host/", "HTTP://***@host/"),
        ("clone http://a:p@ss@h.io/x?mail=a@b failed", "clone http://***@h.io/x?mail=a@b failed"),
        ("https://host/x?mail=a@b", "https://host/x?mail=a@b"),
        ("git@github.com:me/x.git", "git@github.com:me/x.git"),  # scp-like: a user name, no secret
        ("no url here", "no url here"),
    ],
)
def test_redact_hides_url_credentials(text, shown):
    assert redact(text) == shown


def test_url_credentials_never_reach_progress_tables_or_reports(tmp_path, capsys):
    with Progress("deliver") as p:
        p.step(f"checkout {REPO_URL}")
        p.log(f"cloning {REPO_URL}")
        p.update(f"fetching {REPO_URL}")
        p.done(StepResult("checkout", False, 1.0, f"git clone {REPO_URL} failed"))
    make_logger("deliver")(f"repo {REPO_URL}")
    print_table("runs", ["repo"], [[REPO_URL]])
    print_results("deliver", [StepResult("checkout", False, 1.0, REPO_URL, REPO_URL)])
    paths = write_reports(
        tmp_path,
        "deliver",
        [StepResult("checkout", False, 1.0, REPO_URL, REPO_URL)],
        {"repo": REPO_URL},
    )
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, *(p.read_text() for p in paths)):
        assert "gh-t0ken-42" not in text and "deploy:" not in text
        assert "https://***@git.example.com/team/app.git" in text


def test_live_progress_hides_url_credentials(terminal):
    tty = terminal()
    with Progress("deliver") as p:
        p.step(f"checkout {REPO_URL}")
        p.update(f"fetching {REPO_URL}")
        assert "gh-t0ken-42" not in str(p._render().text)
        p.log(f"cloning {REPO_URL}")
    assert "gh-t0ken-42" not in tty.getvalue() and "https://***@git.example.com" in tty.getvalue()
