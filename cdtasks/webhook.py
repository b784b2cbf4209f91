"""Push notifications from a git server, instead of polling: an HTTP POST whose JSON body names
the pushed ref (`"ref": "refs/heads/BRANCH"`, as GitHub, Gitea, Forgejo and GitLab send it),
authenticated with a shared secret. Anything else is refused and never wakes the watcher.

Signatures accepted: `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>` (GitHub, Gitea,
Forgejo), `X-Gitea-Signature` / `X-Gogs-Signature: <hex HMAC-SHA256>`, and GitLab's
`X-Gitlab-Token: <the secret>`. A request must arrive whole (headers and body, at most
MAX_BODY) within TIMEOUT of its connection; one thread reads every connection as bytes come, so
clients that trickle cannot hold what a signed push needs.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
import json
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

MAX_BODY = 1 << 20  # bytes; a push event of 20 commits is well under 100 KB
MAX_HEADERS = 64 * 1024  # bytes of request line and headers (http.server's line limit)
TIMEOUT = 10.0  # seconds a client gets to send its whole request, headers and body
MAX_PENDING = 64  # connections being read at once; a newcomer closes the one waiting longest
_HEADERS_END = re.compile(rb"\r?\n\r?\n")
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


def _request_end(data: bytes) -> int:
    """Where the request's headers end in `data` (-1: not yet)."""
    found = _HEADERS_END.search(data)
    return found.end() if found else -1


def whole(data: bytes) -> bool:
    """`data` holds a whole request: its headers and the body its Content-Length announces; or
    enough to refuse it (headers too long, no usable length, a body over MAX_BODY)."""
    end = _request_end(data)
    if end < 0:
        return len(data) > MAX_HEADERS
    length = ""
    for line in data[:end].decode("latin-1").splitlines()[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "transfer-encoding":
            return True
        if name.strip().lower() == "content-length":
            length = value.strip()
    if not length.isdigit() or int(length) > MAX_BODY:
        return True
    return len(data) - end >= int(length)


@dataclass
class _Client:
    sock: socket.socket
    address: str
    deadline: float  # time.monotonic() by which its whole request must have arrived
    data: bytearray = field(default_factory=bytearray)


class _Server:
    """One thread reads every connection with a selector, so a slow client costs a buffer, not
    a thread or a slot: a request is handled once it has arrived whole; one that has not
    arrived whole TIMEOUT seconds after its connection is answered 408 and closed; past
    MAX_PENDING connections, the one that has waited longest is closed for the newcomer.
    Handling is quick (a signature check, waking the watcher), so it runs on that thread."""

    def __init__(
        self,
        address: tuple[str, int],
        secret: str,
        branch: str,
        on_push: Callable[[], None],
        log: Callable[[str], None],
    ):
        self.secret, self.branch, self.on_push, self.log = secret, branch, on_push, log
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.create_server(address, family=family, backlog=128)
        self.socket.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.socket, selectors.EVENT_READ)
        self.clients: dict[socket.socket, _Client] = {}  # in the order they connected
        self.stopping = threading.Event()

    def serve(self) -> None:
        while not self.stopping.is_set():
            now = time.monotonic()
            wait = min([c.deadline - now for c in self.clients.values()] + [0.2])
            for key, _ in self.selector.select(max(wait, 0.0)):
                if key.fileobj is self.socket:
                    self._accept()
                elif key.data.sock in self.clients:  # not closed earlier in this round
                    self._read(key.data)
            now = time.monotonic()
            for client in [c for c in self.clients.values() if c.deadline <= now]:
                self.log(f"webhook: 408 to {client.address}: request not whole within {TIMEOUT:g}s")
                self._close(client, _answer_bytes(408, "request not whole in time"))

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors, a connection reset before it was taken
                return
            if len(self.clients) >= MAX_PENDING:
                self._close(next(iter(self.clients.values())))
            sock.setblocking(False)
            client = _Client(sock, address[0], time.monotonic() + TIMEOUT)
            self.clients[sock] = client
            self.selector.register(sock, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> None:
        try:
            chunk = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the client
            chunk = b""
        if not chunk:  # the client left before its request was whole: nothing to answer
            self._close(client)
            return
        client.data += chunk
        if whole(bytes(client.data)):
            try:
                answer = _Handler(bytes(client.data), (client.address, 0), self).out.getvalue()
            except Exception as exc:  # a fault here must not end the thread every push needs
                self.log(f"webhook: 500 to {client.address}: {type(exc).__name__}: {exc}")
                answer = _answer_bytes(500, "internal error")
            self._close(client, answer)

    def _close(self, client: _Client, answer: bytes = b"") -> None:
        self.selector.unregister(client.sock)
        del self.clients[client.sock]
        try:
            if answer:  # a few hundred bytes: the socket's buffer takes them at once
                client.sock.settimeout(1.0)
                client.sock.sendall(answer)
        except OSError:  # the client left meanwhile: nothing more to tell it
            pass
        finally:
            client.sock.close()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        self.selector.close()
        self.socket.close()


def _answer_bytes(code: int, text: str) -> bytes:
    body = (text + "\n").encode()
    return (
        f"HTTP/1.0 {code} {HTTPStatus(code).phrase}\r\nContent-Type: text/plain; "
        f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class _Handler(BaseHTTPRequestHandler):
    """http.server's parsing and answers over a request already read whole (`raw`), handled
    as it is made; the answer is left in `out` for the server to send."""

    server_version = "cdtasks-webhook"
    sys_version = ""

    def __init__(self, raw: bytes, client_address: tuple[str, int], hook: _Server):
        # No socket: BaseRequestHandler's own __init__ (setup, handle, finish) is not used.
        self.hook, self.client_address = hook, client_address
        self.rfile, self.out = io.BytesIO(raw), io.BytesIO()
        self.wfile = self.out
        self.handle()

    def log_message(self, format, *args):  # requests are said by `_answer`, headers never
        pass

    def _answer(self, code: int, text: str) -> None:
        self.hook.log(f"webhook: {code} to {self.client_address[0]}: {text}")
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
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            return self._answer(400, "body shorter than its Content-Length")
        if not signed(self.hook.secret, body, self.headers):
            return self._answer(401, "missing or wrong signature")
        event = next((self.headers[h] for h in EVENT_HEADERS if self.headers.get(h)), "push")
        if event.lower() in PING_EVENTS:
            return self._answer(200, "pong")
        try:
            ref = pushed_ref(body, self.headers.get("Content-Type", ""))
        except (ValueError, UnicodeDecodeError) as exc:
            return self._answer(400, f"not a push event: {str(exc)[:100]}")
        if ref != f"refs/heads/{self.hook.branch}":
            return self._answer(202, f"ignored: {ref[:100]} is not the watched branch")
        self.hook.on_push()
        return self._answer(202, f"checking {self.hook.branch}")


class Webhook:
    """The server on a thread of its own; `stop()` ends it and closes its sockets."""

    def __init__(
        self,
        listen: str,
        secret: str,
        branch: str,
        on_push: Callable[[], None],
        log: Callable[[str], None],
    ):
        if not secret:
            raise ListenError(
                "--listen needs WEBHOOK_SECRET (env file, or CDTASKS_WEBHOOK_SECRET "
                "in the environment): unsigned pushes are refused"
            )
        address = parse_address(listen)
        try:
            self.server = _Server(address, secret, branch, on_push, log)
        except OSError as exc:
            raise ListenError(f"--listen {listen}: {exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.server.serve, name="webhook", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> Webhook:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.stopping.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.server.close()
