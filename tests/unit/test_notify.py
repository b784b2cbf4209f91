"""Notifications: NOTIFY_COMMAND gets the JSON on stdin, NOTIFY_URL a POST (a server on
127.0.0.1 here), and a failure is one line that never shows the URL's path or credentials."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from cdtasks import config, notify

PAYLOAD = {
    "commit": "a" * 40,
    "branch": "main",
    "code": 14,
    "ok": False,
    "result": "deliver: failed at staging",
}


def settings_with(tmp_path: Path, **values):
    env_dir = tmp_path / "env"
    env_dir.mkdir(exist_ok=True)
    (env_dir / "test.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return config.load("test", env_dir=env_dir, environ={})


def test_the_command_gets_the_json_on_stdin(tmp_path: Path):
    out = tmp_path / "got.json"
    script = tmp_path / "take.py"
    script.write_text("import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.stdin.read())")
    s = settings_with(tmp_path, NOTIFY_COMMAND=f"{sys.executable} {script} '{out}'")
    assert s.watch.notify_command == (
        sys.executable,
        str(script),
        str(out),
    )  # shell words, no shell
    lines = []
    assert notify.send(PAYLOAD, command=s.watch.notify_command, log=lines.append) == []
    assert json.loads(out.read_text()) == PAYLOAD
    assert lines == []


def test_a_failing_or_missing_command_is_said(tmp_path: Path):
    lines = []
    failing = [sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit('no mail server')"]
    assert notify.send(PAYLOAD, command=failing, log=lines.append) == [
        f"NOTIFY_COMMAND {sys.executable} exited 1: no mail server"
    ]
    assert notify.send(PAYLOAD, command=[str(tmp_path / "nope")], log=lines.append) == [
        f"NOTIFY_COMMAND {tmp_path / 'nope'}: No such file or directory"
    ]
    slow = [sys.executable, "-c", "import time; time.sleep(5)", "--token=abcd1234"]
    assert notify.send(PAYLOAD, command=slow, log=lines.append, timeout=0.2) == [
        f"NOTIFY_COMMAND {sys.executable} gave no answer in 0s"
    ]
    assert len(lines) == 3 and all(line.startswith("notification failed: ") for line in lines)
    assert "abcd1234" not in "".join(lines)


class Receiver(BaseHTTPRequestHandler):
    got: list = []
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append((self.path, self.headers["Content-Type"], body))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def receiver():
    Receiver.got, Receiver.status = [], 200
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_url_gets_a_json_post(receiver, tmp_path: Path):
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hooks/T0KEN-IN-PATH"
    s = settings_with(tmp_path, NOTIFY_URL=url)
    assert notify.send(PAYLOAD, url=s.watch.notify_url, log=print) == []
    [(path, kind, body)] = Receiver.got
    assert (path, kind, json.loads(body)) == ("/hooks/T0KEN-IN-PATH", "application/json", PAYLOAD)


def test_a_failing_url_is_said_without_its_path_or_credentials(receiver):
    Receiver.status = 500
    port = receiver.server_address[1]
    lines = []
    problems = notify.send(
        PAYLOAD, url=f"http://bob:pw1234@127.0.0.1:{port}/T0KEN", log=lines.append
    )
    assert problems == [f"NOTIFY_URL http://127.0.0.1:{port} answered 500"]
    receiver.shutdown()
    receiver.server_close()
    problems = notify.send(
        PAYLOAD, url=f"http://bob:pw1234@127.0.0.1:{port}/T0KEN", log=lines.append
    )
    assert problems == [f"NOTIFY_URL http://127.0.0.1:{port}: ConnectionError"]
    assert not any("pw1234" in line or "T0KEN" in line for line in lines)


def test_notify_keys_are_validated_and_kept_out_of_repr(tmp_path: Path):
    with pytest.raises(config.ConfigError, match="NOTIFY_URL='ftp://x': is not an http"):
        settings_with(tmp_path, NOTIFY_URL="ftp://x")
    with pytest.raises(config.ConfigError, match="NOTIFY_COMMAND="):
        settings_with(tmp_path, NOTIFY_COMMAND="mail 'unclosed")
    s = settings_with(
        tmp_path, NOTIFY_URL="https://chat.example.org/T0KEN", WEBHOOK_SECRET="hush-1234"
    )
    assert "T0KEN" not in repr(s) and "hush-1234" not in repr(s)
    assert (s.watch.webhook_secret, s.watch.watch_branch, s.watch.notify_command) == (
        "hush-1234",
        "",
        (),
    )
