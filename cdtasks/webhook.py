"""Push notifications from a git server, instead of polling: an HTTP POST whose JSON body names
the pushed ref (`"ref": "refs/heads/BRANCH"`, as GitHub, Gitea, Forgejo and GitLab send it),
authenticated with a shared secret. Anything else is refused and never wakes the watcher.

Signatures accepted: `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>` (GitHub, Gitea,
Forgejo), `X-Gitea-Signature` / `X-Gogs-Signature: <hex HMAC-SHA256>`, and GitLab's
`X-Gitlab-Token: <the secret>`. The standard library's server is enough for one small POST at
a time: it gets socket timeouts, a body size limit and a cap on connections handled at once.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

MAX_BODY = 1 << 20  # bytes; a push event of 20 commits is well under 100 KB
TIMEOUT = 10.0  # seconds a client gets to send its request
MAX_CLIENTS = 16  # connections handled at once; more are closed unanswered
PING_EVENTS = {"ping"}  # GitHub/Gitea send one when the hook is created
EVENT_HEADERS = ("X-GitHub-Event", "X-Gitea-Event", "X-Gogs-Event", "X-Gitlab-Event")


class ListenError(ValueError):
    """A bad --listen address or a missing secret."""


def parse_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT` or `[IPv6]:PORT` -> (address, port); the address is required, so nothing
    listens on more than what was named."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ListenError(f"--listen {text!r}: give ADDRESS:PORT, e.g. 127.0.0.1:9000")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ListenError(f"--listen {text!r}: {host!r} is not an IP address") from None
    return host, int(port)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison; header text may hold any character."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def signed(secret: str, body: bytes, headers) -> bool:
    """The body carries a valid signature (or token) made with `secret`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    hub = headers.get("X-Hub-Signature-256", "")
    if hub:
        return hub.startswith("sha256=") and _same(hub[7:].strip().lower(), digest)
    for name in ("X-Gitea-Signature", "X-Gogs-Signature"):
        if headers.get(name):
            return _same(headers[name].strip().lower(), digest)
    token = headers.get("X-Gitlab-Token", "")
    return bool(token) and _same(token, secret)


def pushed_ref(body: bytes, content_type: str) -> str:
    """The ref a push event names; ValueError when the body is not such an event."""
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        body = (parse_qs(body.decode("utf-8", "strict")).get("payload") or [""])[0].encode()
    doc = json.loads(body)
    ref = doc.get("ref") if isinstance(doc, dict) else None
    if not isinstance(ref, str) or not ref:
        raise ValueError("no ref named")
    return ref


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, handler, secret: str, branch: str, on_push: Callable[[], None],
                 log: Callable[[str], None]):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.secret, self.branch, self.on_push, self.log = secret, branch, on_push, log
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: not answered
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    timeout = TIMEOUT
    server: _Server
    server_version = "cdtasks-webhook"
    sys_version = ""

    def log_message(self, format, *args):  # requests are said by `_answer`, headers never
        pass

    def _answer(self, code: int, text: str) -> None:
        self.server.log(f"webhook: {code} to {self.client_address[0]}: {text}")
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _refuse_method(self):
        self._answer(405, "only POST")

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _refuse_method

    def do_POST(self):
        length = self.headers.get("Content-Length", "")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or not length.isdigit():
            return self._answer(411, "a Content-Length is required")
        if int(length) > MAX_BODY:
            return self._answer(413, f"body over {MAX_BODY} bytes")
        try:
            body = self.rfile.read(int(length))
        except OSError:  # the client went silent (timeout) or away
            self.close_connection = True
            return None
        if len(body) != int(length):
            return self._answer(400, "body shorter than its Content-Length")
        if not signed(self.server.secret, body, self.headers):
            return self._answer(401, "missing or wrong signature")
        event = next((self.headers[h] for h in EVENT_HEADERS if self.headers.get(h)), "push")
        if event.lower() in PING_EVENTS:
            return self._answer(200, "pong")
        try:
            ref = pushed_ref(body, self.headers.get("Content-Type", ""))
        except (ValueError, UnicodeDecodeError) as exc:
            return self._answer(400, f"not a push event: {str(exc)[:100]}")
        if ref != f"refs/heads/{self.server.branch}":
            return self._answer(202, f"ignored: {ref[:100]} is not the watched branch")
        self.server.on_push()
        return self._answer(202, f"checking {self.server.branch}")


class Webhook:
    """The server on a thread of its own; `stop()` ends it and closes its socket."""

    def __init__(self, listen: str, secret: str, branch: str, on_push: Callable[[], None],
                 log: Callable[[str], None]):
        if not secret:
            raise ListenError("--listen needs WEBHOOK_SECRET (env file, or CDTASKS_WEBHOOK_SECRET "
                              "in the environment): unsigned pushes are refused")
        address = parse_address(listen)
        try:
            self.server = _Server(address, _Handler, secret, branch, on_push, log)
        except OSError as exc:
            raise ListenError(f"--listen {listen}: {exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook",
                                       kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]  # an AF_INET server: (host, port)
        return str(host), int(port)

    def start(self) -> Webhook:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
