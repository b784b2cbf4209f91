"""hello-book: answers its version over HTTP on 8080 and counts visits in Redis.

Env: PORT (default 8080), APP_VERSION (default "dev"), DB as "host" or "host:port" (default db:6379),
PREFIX: the path it is served under (default /hello; behind a shared proxy, the path the proxy
routes to it).
"""

import os
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = os.environ.get("PREFIX") or "/hello"


def db_address(value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        return value.strip() or "db", 6379
    return host or "db", int(port)


def count_visit(address: tuple[str, int]) -> int:
    """INCR visits in Redis (an inline command: no client library needed)."""
    with socket.create_connection(address, timeout=2) as conn:
        conn.sendall(b"INCR hello-book:visits\r\n")
        reply = conn.makefile("rb").readline()
    if not reply.startswith(b":"):
        raise OSError(f"unexpected reply {reply[:80]!r}")
    return int(reply[1:])


def route(path: str, version: str, visit, prefix: str = PREFIX) -> tuple[int, str]:
    """The answer to GET `path` under `prefix`: (status, body)."""
    if path in (prefix, prefix + "/"):
        return 200, f"hello from hello-book {version}\n"
    if path == prefix + "/version":
        return 200, f"{version}\n"
    if path == prefix + "/health":
        return 200, "ok\n"
    if path == prefix + "/visits":
        try:
            return 200, f"{visit()}\n"
        except OSError as e:
            return 503, f"database unavailable: {e}\n"
    return 404, "not found\n"


class Handler(BaseHTTPRequestHandler):
    timeout = 10  # an idle client must not hold a thread (and the shutdown) for long

    def do_GET(self):
        status, body = route(self.path.split("?", 1)[0], self.server.version, self.server.visit)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code="-", size="-"):
        if isinstance(code, int) and code >= 500:  # health checks come every 2 s: errors only
            super().log_request(code, size)


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() then waits for requests in flight


def main() -> int:
    port = int(os.environ.get("PORT") or 8080)
    server = Server(("", port), Handler)
    server.version = os.environ.get("APP_VERSION") or "dev"
    address = db_address(os.environ.get("DB", ""))
    server.visit = lambda: count_visit(address)

    def stop(signum, frame):
        # shutdown() waits for serve_forever(), which runs in this thread: call it from another.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"hello-book {server.version} listening on :{port}", flush=True)
    server.serve_forever()
    server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
