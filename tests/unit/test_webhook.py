"""The push webhook on 127.0.0.1: signatures as the common git servers make them, refusals, and
only the address given listening."""

from __future__ import annotations

import errno
import hashlib
import hmac
import http.client
import json
import socket
import threading
import time

import pytest

from cdtasks import webhook
from cdtasks.webhook import ListenError, Webhook, parse_address

SECRET = "hook-s3cret-value"
PUSH = json.dumps({"ref": "refs/heads/main", "after": "0" * 40}).encode()


@pytest.fixture()
def hook():
    pushes, lines = threading.Event(), []
    server = Webhook("127.0.0.1:0", SECRET, "main", pushes.set, lines.append).start()
    server.pushes, server.lines = pushes, lines
    yield server
    server.stop()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(hook, body: bytes, headers: dict, method: str = "POST") -> tuple[int, str]:
    conn = http.client.HTTPConnection(*hook.address, timeout=10)
    try:
        conn.request(method, "/", body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": "sha256=" + sign(PUSH), "X-GitHub-Event": "push"},
        {"X-Gitea-Signature": sign(PUSH), "X-Gitea-Event": "push"},
        {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"},
    ],
    ids=["github", "gitea", "gitlab"],
)
def test_a_signed_push_of_the_branch_wakes_the_watcher(hook, headers):
    assert post(hook, PUSH, {"Content-Type": "application/json", **headers}) == (
        202,
        "checking main\n",
    )
    assert hook.pushes.is_set()
    assert SECRET not in "\n".join(hook.lines) and sign(PUSH) not in "\n".join(hook.lines)


def test_a_form_encoded_push_as_github_may_send_it(hook):
    body = ("payload=" + json.dumps({"ref": "refs/heads/main"}).replace(" ", "+")).encode()
    assert (
        post(
            hook,
            body,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Hub-Signature-256": "sha256=" + sign(body),
            },
        )[0]
        == 202
    )
    assert hook.pushes.is_set()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Hub-Signature-256": "sha256=" + sign(PUSH, "another-secret")},
        {"X-Hub-Signature-256": sign(PUSH)},  # no sha256= prefix
        {"X-Hub-Signature-256": "sha256=" + sign(PUSH + b" ")},
        {"X-Gitea-Signature": "zz" + sign(PUSH)[2:]},
        {"X-Gitlab-Token": "wrong-token"},
        {"X-Gitlab-Token": "\u00e9t\u00e9"},  # not ASCII: still a plain refusal
    ],
    ids=[
        "none",
        "other-secret",
        "no-prefix",
        "other-body",
        "gitea-wrong",
        "gitlab-wrong",
        "latin1",
    ],
)
def test_a_missing_or_wrong_signature_is_401_and_no_check(hook, headers):
    status, text = post(hook, PUSH, headers)
    assert (status, text) == (401, "missing or wrong signature\n")
    assert not hook.pushes.is_set()


@pytest.mark.parametrize(
    "body, status, text",
    [
        (b"{not json", 400, "not a push event"),
        (b'{"zen": "hi"}', 400, "not a push event: no ref named"),
        (b'["refs/heads/main"]', 400, "not a push event: no ref named"),
        (b"\xff\xfe", 400, "not a push event"),
        (json.dumps({"ref": "refs/heads/other"}).encode(), 202, "ignored: refs/heads/other is not"),
        (json.dumps({"ref": "refs/tags/main"}).encode(), 202, "ignored: refs/tags/main is not"),
    ],
)
def test_a_malformed_body_or_another_branch_starts_nothing(hook, body, status, text):
    got_status, got_text = post(hook, body, {"X-Hub-Signature-256": "sha256=" + sign(body)})
    assert got_status == status and got_text.startswith(text)
    assert not hook.pushes.is_set()


def test_ping_is_answered_without_a_check(hook):
    body = b'{"zen": "Keep it logically awesome."}'
    assert post(
        hook, body, {"X-Hub-Signature-256": "sha256=" + sign(body), "X-GitHub-Event": "ping"}
    ) == (200, "pong\n")
    assert not hook.pushes.is_set()


def test_an_oversized_body_is_refused_before_it_is_read(hook):
    with socket.create_connection(hook.address, timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (webhook.MAX_BODY + 1)
        )
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.0 413")
    assert not hook.pushes.is_set()


def test_chunked_or_unsized_bodies_and_other_methods_are_refused(hook):
    with socket.create_connection(hook.address, timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert sock.recv(4096).decode().startswith("HTTP/1.0 411")
    assert post(hook, b"", {}, method="GET")[0] == 405
    assert not hook.pushes.is_set()


def test_a_client_that_goes_silent_is_dropped(hook, monkeypatch):
    monkeypatch.setattr(webhook, "TIMEOUT", 0.3)
    with socket.create_connection(hook.address, timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert sock.recv(4096).startswith(b"HTTP/1.0 408 ")
        assert sock.recv(4096) == b""  # then closed
    assert not hook.pushes.is_set()
    assert "webhook: 408 to 127.0.0.1: request not whole within 0.3s" in hook.lines


def test_a_whole_request_has_one_deadline_however_its_bytes_trickle(hook, monkeypatch):
    """A byte now and then used to renew a per-read timeout: the deadline is the request's."""
    monkeypatch.setattr(webhook, "TIMEOUT", 0.6)
    with socket.create_connection(hook.address, timeout=10) as sock:
        started = time.monotonic()
        answer = b""
        for byte in b"POST / HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.1)
            try:
                answer = sock.recv(4096)
                break
            except TimeoutError:
                continue
        assert answer.startswith(b"HTTP/1.0 408") and time.monotonic() - started < 2.0


def test_trickling_clients_leave_a_signed_push_answered_at_once(hook):
    sockets = [
        socket.create_connection(hook.address, timeout=10) for _ in range(webhook.MAX_PENDING + 8)
    ]  # more than it reads at once
    try:
        for s in sockets:
            s.sendall(b"POST / HTTP/1.1\r\n")
        started = time.monotonic()
        assert post(
            hook, PUSH, {"X-Hub-Signature-256": "sha256=" + sign(PUSH), "X-GitHub-Event": "push"}
        ) == (202, "checking main\n")
        assert time.monotonic() - started < 2.0
        assert hook.pushes.is_set()
    finally:
        for s in sockets:
            s.close()


def test_clients_that_leave_early_are_no_error(hook):
    for partial in (b"POST / HTT", b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nab", b""):
        with socket.create_connection(hook.address, timeout=10) as s:
            s.sendall(partial)
    sock = socket.create_connection(hook.address, timeout=10)  # leaves before its answer
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    sock.close()
    assert post(hook, b"", {}, method="GET")[0] == 405  # still serving
    assert hook.thread.is_alive()


def test_whole_requests():
    head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
    assert not webhook.whole(b"POST / HTTP/1.1\r\nContent-Le")
    assert not webhook.whole(head + b"ab") and webhook.whole(head + b"abc")
    assert webhook.whole(b"POST / HTTP/1.1\r\n\r\n")  # no length: refused at once (411)
    assert webhook.whole(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert webhook.whole(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (webhook.MAX_BODY + 1))
    assert webhook.whole(b"X" * (webhook.MAX_HEADERS + 1))


def test_only_the_address_given_listens(hook):
    host, port = hook.address
    assert host == "127.0.0.1"
    with pytest.raises(OSError) as refused:
        socket.create_connection(("127.0.0.2", port), timeout=5).close()
    assert refused.value.errno == errno.ECONNREFUSED


def test_stop_closes_the_socket():
    server = Webhook("127.0.0.1:0", SECRET, "main", lambda: None, lambda line: None).start()
    address = server.address
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


def test_listen_needs_an_address_and_a_secret():
    assert parse_address("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    for bad in (":9000", "9000", "127.0.0.1:", "127.0.0.1:99999", "example.org:80"):
        with pytest.raises(ListenError, match="--listen"):
            parse_address(bad)
    with pytest.raises(ListenError, match="WEBHOOK_SECRET"):
        Webhook("127.0.0.1:0", "", "main", lambda: None, print)


def test_a_taken_port_is_one_line():
    first = Webhook("127.0.0.1:0", SECRET, "main", lambda: None, print)
    try:
        with pytest.raises(ListenError, match=f"--listen 127.0.0.1:{first.address[1]}: "):
            Webhook(f"127.0.0.1:{first.address[1]}", SECRET, "main", lambda: None, print)
    finally:
        first.stop()
