"""go-demo stand-in: a tiny HTTP service backed by Redis.

Env: PORT (default 8080), DB as "host" or "host:port" (default db:6379, the service of that
name in demo/stack.yml and the compose file).
"""
import os
import random
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from resp import Redis, RedisError

HELLO = "hello, world!\n"
MAX_DELAY_MS = 30_000  # the proxy's server timeout; longer delays could never be answered
DRAIN_SECONDS = 10
PERSONS_KEY = "persons"


def parse_address(value: str, default_host: str, default_port: int) -> tuple[str, int]:
    """'host' or 'host:port' -> (host, port); empty parts take the defaults."""
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        host, port = value.strip(), ""
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"invalid port in {value!r}")
    return host or default_host, int(port) if port else default_port


def parse_delay(value: str | None) -> float:
    """The ?delay= query value in milliseconds -> seconds (0 when absent)."""
    if value is None:
        return 0.0
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_DELAY_MS:
        raise ValueError(f"delay must be an integer from 0 to {MAX_DELAY_MS} (milliseconds)")
    return int(value) / 1000


class RedisStore:
    def __init__(self, client: Redis):
        self.client = client

    def add(self, name: str) -> None:
        self.client.execute("SADD", PERSONS_KEY, name)

    def names(self) -> list[str]:
        return sorted(n.decode(errors="replace") for n in self.client.execute("SMEMBERS", PERSONS_KEY))


class App:
    """Routing and handlers, independent of HTTP plumbing: handle() -> (status, body)."""

    def __init__(self, store, sleep=time.sleep, rand=random.random):
        self.store, self.sleep, self.rand = store, sleep, rand
        self.routes = {
            ("GET", "/demo/hello"): self.hello,
            ("PUT", "/demo/person"): self.put_person,
            ("GET", "/demo/person"): self.get_persons,
            ("GET", "/demo/random-error"): self.random_error,
        }

    def handle(self, method: str, target: str) -> tuple[int, str]:
        url = urlsplit(target)
        route = self.routes.get((method, url.path))
        if route is None:
            return 404, "Not found\n"
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            return route(query)
        except OSError as e:  # refused, unresolvable, timed out, not speaking RESP
            return 503, f"Database unavailable: {e}\n"
        except RedisError as e:
            return 500, f"Database error: {e}\n"

    def hello(self, query):
        try:
            delay = parse_delay(query.get("delay"))
        except ValueError as e:
            return 400, f"{e}\n"
        if delay:
            self.sleep(delay)
        return 200, HELLO

    def put_person(self, query):
        name = query.get("name", "")
        if not name or not name.isprintable():  # one name per line in GET /demo/person
            return 400, "Query parameter 'name' is required (printable text)\n"
        self.store.add(name)
        return 200, f"Stored {name}\n"

    def get_persons(self, query):
        return 200, "".join(f"{name}\n" for name in self.store.names())

    def random_error(self, query):
        if self.rand() < 0.1:
            return 500, "ERROR: Something, somewhere, went wrong!\n"
        return 200, "Everything is still OK\n"


class Handler(BaseHTTPRequestHandler):
    server_version = "go-demo-py"
    timeout = 10  # a client that sends nothing must not hold a thread (and the drain) forever

    def serve(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > 0:  # read the unused body: closing with unread data resets the connection
            self.rfile.read(min(length, 1 << 20))
        status, body = self.server.app.handle("GET" if self.command == "HEAD" else self.command, self.path)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = serve

    def log_request(self, code="-", size="-"):
        if isinstance(code, int) and code >= 500:  # health checks hit us twice a second: log errors only
            super().log_request(code, size)

    def log_message(self, format, *args):
        print(f"{self.address_string()} {format % args}", flush=True)


class Server(ThreadingHTTPServer):
    """Counts requests in flight so that a shutdown can wait for them."""

    request_queue_size = 128

    def __init__(self, address, app):
        super().__init__(address, Handler)
        self.app = app
        self._busy = 0
        self._idle = threading.Condition()

    def process_request(self, request, client_address):
        with self._idle:  # counted before the thread starts, so drain() can't miss it
            self._busy += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if some still are after timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


def main() -> int:
    port = int(os.environ.get("PORT") or 8080)
    db_host, db_port = parse_address(os.environ.get("DB", ""), "db", 6379)
    redis = Redis(db_host, db_port)
    server = Server(("", port), App(RedisStore(redis)))

    def stop(signum, frame):
        # shutdown() waits for serve_forever(), which runs in this (main) thread: call it from another
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        db_state = "answers PING" if redis.ping() else "gave an odd PING reply"
    except (OSError, RedisError) as e:
        db_state = f"is not reachable yet ({e})"
    print(f"listening on :{port}; database {db_host}:{db_port} {db_state}", flush=True)
    server.serve_forever()
    server.server_close()  # stop accepting; requests in flight go on in their threads
    if server.drain(DRAIN_SECONDS):
        print("stopped", flush=True)
    else:
        print(f"stopped with requests still in flight after {DRAIN_SECONDS}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
