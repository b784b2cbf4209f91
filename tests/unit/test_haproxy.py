"""The runtime API's answers as the module reads them; `show stat` as HAProxy 2.6.12 (the
proxy image's) printed it during a canary whose 500s `retry-on` retried elsewhere."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cdtasks import haproxy

DATA = Path(__file__).parent / "data"
STAT = (DATA / "haproxy-show-stat.csv").read_text()
# Real `show stat` of HAProxy 2.6.12 after requests that fail in each way (the configuration
# and the requests: haproxy-show-stat-errors.cfg).
ERRORS = (DATA / "haproxy-show-stat-errors.csv").read_text()


def _reading(text: str = STAT) -> haproxy.Reading:
    return haproxy.Reading(haproxy.Replica("t1", "node-1", "c1"), haproxy.parse_stat(text))


def test_show_stat_gives_the_server_and_backend_lines_a_backend_its_servers():
    lines = haproxy.parse_stat(STAT)
    assert [s.full_name for s in lines] == [
        "go-demo/app1",
        "go-demo/app3",
        "go-demo/canary1",
        "go-demo/BACKEND",
    ]
    servers = _reading().backend("go-demo")
    assert [s.name for s in servers] == ["app1", "app3", "canary1"]
    app1 = servers[0]
    assert (app1.status, app1.weight, app1.requests, app1.errors) == ("UP", 1, 500, 0)
    assert app1.resolved and not servers[1].resolved  # MAINT (resolution): an empty slot


def test_a_500_retried_elsewhere_counts_as_an_error_of_the_server_that_answered_it():
    canary = haproxy.parse_stat(STAT)[2]
    # retry-on all-retryable-errors: never a 5xx of the canary, but one retry each
    assert (canary.responses_5xx, canary.retries, canary.requests) == (0, 109, 109)
    assert canary.errors == 109


def test_errors_never_exceed_the_requests():
    s = haproxy.Server("b", "s1", "UP", 1, 10, 4, 6, 0, 6, 0, 0)  # a failure counted twice
    assert s.errors == 10


def _server(backend: str, name: str) -> haproxy.Server:
    return next(s for s in _reading(ERRORS).backend(backend) if s.name == name)


@pytest.mark.parametrize(
    "backend, name, errors, why",
    [
        ("refused", "a", 10, "refused connections redispatched to b: wredis only, no econ"),
        ("mixed", "bad", 10, "500s retried on good: in both wretr and wredis, counted once"),
        ("half", "bad", 6, "6 of its 13 answers were 500s retried elsewhere: not 12"),
        ("err500", "bad", 4, "500s relayed (retries disabled): hrsp_5xx"),
        ("single500", "bad", 12, "3 requests, 4 attempts each, all 500: wretr 18, capped"),
        ("singleref", "a", 12, "connection refused 4 times for each of 3 requests"),
        ("slow", "s", 2, "server timeout: eresp, HAProxy answered 504"),
        ("half", "good", 0, "only 200s"),
    ],
)
def test_a_server_s_errors_in_real_counters(backend, name, errors, why):
    assert _server(backend, name).errors == errors, why


def test_the_requests_haproxy_answered_itself_are_the_backend_s_own():
    reading = _reading(ERRORS)
    # no server up: five 503s that appear only in the BACKEND line
    assert reading.backend("nosrv") and all(s.requests == 0 for s in reading.backend("nosrv"))
    assert reading.unserved("nosrv") == 5
    assert haproxy.totals(reading.counted("nosrv")) == haproxy.Counters(5, 5, 0)
    # a server's failed connections are that server's, not the proxy's own
    assert reading.unserved("singleref") == 0
    assert haproxy.totals(reading.counted("singleref")) == haproxy.Counters(12, 12, 0)
    assert [s.name for s in reading.counted("refused")] == ["a", "b"]  # no own entry at 0
    assert haproxy.totals(reading.counted("refused")) == haproxy.Counters(20, 10, 10)
    assert reading.unserved("absent") == 0


def test_since_one_reading_and_across_a_restart():
    C = haproxy.Counters
    assert haproxy.since(C(100, 3, 90), C(130, 5, 118)) == C(30, 2, 28)
    assert haproxy.since(C(100, 3, 90), C(12, 1, 11)) == C(12, 1, 11)  # restarted: all of it
    assert haproxy.since(None, C(7, 0, 7)) == C(7, 0, 7)  # a replica new since
    assert haproxy.since(C(10, 2), C(11, 1)) == C(1, 0)  # never below 0
    assert haproxy.since(C(10, 2), C(12, 5)) == C(2, 2)  # an attempt under way at the first


def test_the_proxy_s_own_answers_are_no_evidence_of_a_restart():
    """`show stat` prints the servers' lines before the BACKEND line: a connection error counted
    in between shows as one more answer of HAProxy's own, one less at the next reading."""
    own = haproxy.Server("b", haproxy.OWN, "", 0, 8, 8, 0, 0, 0, 0, 0)
    server = haproxy.Server("b", "s1", "UP", 1, 40, 0, 0, 0, 0, 0, 0, 40)
    before = haproxy.totals([server, own])
    after = haproxy.totals([replace(server, requests=45, answered=45), replace(own, requests=7)])
    assert not haproxy.restarted(before, after)
    assert haproxy.since(before, after) == haproxy.Counters(4, 0, 5)
    assert haproxy.since(own.counters, replace(own, requests=7, responses_5xx=7).counters) == (
        haproxy.Counters(0, 0, 0)
    )


def test_a_template_s_slots_are_found_by_prefix_and_number():
    reading = _reading()
    assert [s.name for s in haproxy.servers_named(reading, "go-demo", "canary")] == ["canary1"]
    assert [s.name for s in haproxy.servers_named(reading, "go-demo", "app")] == ["app1", "app3"]
    assert haproxy.servers_named(reading, "other", "app") == ()
    assert haproxy.totals(haproxy.servers_named(reading, "go-demo", "app")) == haproxy.Counters(
        500, 0, 500
    )


def test_an_answer_that_is_not_show_stat_is_refused():
    with pytest.raises(ValueError, match="Permission denied"):
        haproxy.parse_stat("Permission denied\n")


def test_the_enabling_lines_are_those_of_the_sample_configuration():
    cfg = (Path(__file__).parents[2] / "demo" / "proxy" / "haproxy.cfg").read_text()
    assert f"stats socket {haproxy.SOCKET} mode 600 level admin" in cfg
    assert 'server-template canary 5 "${BACKEND_HOST}-canary:${BACKEND_PORT}"' in cfg


def test_weights_set_then_read_in_one_exec_and_refusals_named(monkeypatch):
    """`then_read`: the counters come back from the same exec as the weights (one round trip)."""
    sent = []

    def command(cluster, replica, *cmds):
        sent.append(cmds)
        return ["" for c in cmds if c.startswith("set weight")] + (
            [STAT] if "show stat" in cmds else []
        )

    monkeypatch.setattr(haproxy, "command", command)
    replica = haproxy.Replica("t1", "n1", "c1")
    got = haproxy.set_weights(None, {replica: {"go-demo/canary1": 26}}, then_read=True)
    assert sent == [("set weight go-demo/canary1 26", "show stat")]
    assert got[0].replica == replica and got[0].backend("go-demo")
    assert haproxy.set_weights(None, {replica: {"go-demo/canary1": 0}}) == []
    monkeypatch.setattr(haproxy, "command", lambda c, r, *cmds: ["No such server.\n"])
    with pytest.raises(haproxy.ProxyError, match="refused `set weight go-demo/x 1`: No such"):
        haproxy.set_weights(None, {replica: {"go-demo/x": 1}})


class FakeRuntime(threading.Thread):
    """A UNIX socket answering `show stat` as HAProxy does (one command per connection): the
    canary slot's status is DOWN for the first `down_for` looks, then UP."""

    def __init__(self, path: str, down_for: int):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(8)
        self.down_for, self.looks = down_for, 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            cmd = conn.recv(1024).decode().strip()
            if cmd == "show stat":
                self.looks += 1
                up = self.looks > self.down_for
                conn.sendall(
                    (STAT if up else STAT.replace("109,109,UP,", "109,109,DOWN,")).encode()
                )
            conn.close()


def _client(path: str, *args: str) -> tuple[list[str], float]:
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", haproxy._CLIENT, path, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return json.loads(out), time.monotonic() - start


def test_the_client_waits_inside_the_proxy_until_the_slots_are_up(tmp_path):
    """`--until`: the script run in each proxy container looks every 0.1 s until the backend has
    the canary servers UP it asks for, then answers the commands; or gives up after its time."""
    fake = FakeRuntime(str(tmp_path / "admin.sock"), down_for=3)
    fake.start()
    until = json.dumps([{"go-demo": ["canary", 1]}, 20])
    answers, took = _client(str(tmp_path / "admin.sock"), "--until", until, "show stat")
    assert fake.looks == 3 + 1 + 1  # three DOWN, the UP one, the answer's own reading
    assert "canary1" in answers[0] and ",UP," in answers[0].split("canary1")[1][:80]
    assert 0.25 < took < 10
    # two canary servers wanted, one exists: it waits its time out and still answers
    until = json.dumps([{"go-demo": ["canary", 2]}, 0.5])
    answers, took = _client(str(tmp_path / "admin.sock"), "--until", until, "show stat")
    assert haproxy.parse_stat(answers[0]) and took >= 0.5
    fake.sock.close()


def test_wait_up_asks_every_replica_with_the_slots_wanted(monkeypatch):
    sent = []
    monkeypatch.setattr(
        haproxy, "command", lambda cluster, replica, *cmds: sent.append(cmds) or [STAT]
    )
    reps = [haproxy.Replica("t1", "n1", "c1"), haproxy.Replica("t2", "n2", "c2")]
    got = haproxy.wait_up(None, reps, {"go-demo": 1}, "canary", 4.0)
    assert [r.replica for r in got] == reps
    assert sent[0] == ("--until", '[{"go-demo": ["canary", 1]}, 4.0]', "show stat")
