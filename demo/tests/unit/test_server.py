import socket
import sys
import threading
import unittest
from pathlib import Path
from types import SimpleNamespace

_ROOT = Path(__file__).resolve().parents[2]  # demo/ in the repository, /app in the image
sys.path.insert(0, str(_ROOT / "app" if (_ROOT / "app").is_dir() else _ROOT))

import resp  # noqa: E402
import server  # noqa: E402


class FakeStore:
    def __init__(self):
        self.persons = set()

    def add(self, name):
        self.persons.add(name)

    def names(self):
        return sorted(self.persons)


class DownStore:
    def __init__(self, error):
        self.error = error

    def add(self, *args):
        raise self.error

    names = add


class ParseAddressTest(unittest.TestCase):
    def test_forms(self):
        cases = {
            "": ("go-demo-db", 6379),
            "db": ("db", 6379),
            "db:6390": ("db", 6390),
            "10.0.0.5:7000": ("10.0.0.5", 7000),
            " db:6390 ": ("db", 6390),
            "db:": ("db", 6379),
            ":6390": ("go-demo-db", 6390),
        }
        for value, expected in cases.items():
            with self.subTest(value=value):
                self.assertEqual(server.parse_address(value, "go-demo-db", 6379), expected)

    def test_bad_ports(self):
        for value in ("db:x", "db:0", "db:65536", "db:-1", "db:６３７９"):
            with self.subTest(value=value), self.assertRaises(ValueError):
                server.parse_address(value, "go-demo-db", 6379)


class ParseDelayTest(unittest.TestCase):
    def test_valid(self):
        self.assertEqual(server.parse_delay(None), 0)
        self.assertEqual(server.parse_delay("0"), 0)
        self.assertEqual(server.parse_delay("250"), 0.25)
        self.assertEqual(server.parse_delay(str(server.MAX_DELAY_MS)), server.MAX_DELAY_MS / 1000)

    def test_invalid(self):
        for value in ("", "-1", "1.5", "abc", "1_000", " 5", "٣", str(server.MAX_DELAY_MS + 1)):
            with self.subTest(value=value), self.assertRaises(ValueError):
                server.parse_delay(value)


class AppTest(unittest.TestCase):
    def setUp(self):
        self.store = FakeStore()
        self.slept = []
        self.app = server.App(self.store, sleep=self.slept.append, rand=lambda: 0.5)

    def test_hello(self):
        self.assertEqual(self.app.handle("GET", "/demo/hello"), (200, "hello, world!\n"))
        self.assertEqual(self.slept, [])

    def test_hello_with_delay(self):
        self.assertEqual(self.app.handle("GET", "/demo/hello?delay=1500"), (200, "hello, world!\n"))
        self.assertEqual(self.slept, [1.5])

    def test_hello_with_bad_delay(self):
        for query in ("delay=abc", "delay=", "delay=-3"):
            with self.subTest(query=query):
                self.assertEqual(self.app.handle("GET", f"/demo/hello?{query}")[0], 400)
        self.assertEqual(self.slept, [])

    def test_put_then_get_persons(self):
        self.assertEqual(self.app.handle("PUT", "/demo/person?name=Viktor%20Farcic")[0], 200)
        self.assertEqual(self.app.handle("PUT", "/demo/person?name=Ana")[0], 200)
        self.assertEqual(self.app.handle("GET", "/demo/person"), (200, "Ana\nViktor Farcic\n"))

    def test_get_persons_when_empty(self):
        self.assertEqual(self.app.handle("GET", "/demo/person"), (200, ""))

    def test_put_person_needs_a_printable_name(self):
        for target in ("/demo/person", "/demo/person?name=", "/demo/person?other=x", "/demo/person?name=a%0Ab"):
            with self.subTest(target=target):
                self.assertEqual(self.app.handle("PUT", target)[0], 400)
        self.assertEqual(self.store.persons, set())

    def test_random_error(self):
        self.assertEqual(self.app.handle("GET", "/demo/random-error"), (200, "Everything is still OK\n"))
        self.app.rand = lambda: 0.05
        self.assertEqual(self.app.handle("GET", "/demo/random-error")[0], 500)

    def test_random_error_rate_is_about_one_in_ten(self):
        app = server.App(FakeStore())
        errors = sum(app.handle("GET", "/demo/random-error")[0] == 500 for _ in range(2000))
        self.assertTrue(100 < errors < 320, errors)

    def test_unknown_routes_and_methods(self):
        for method, target in (("GET", "/"), ("GET", "/demo"), ("GET", "/demo/hello/"),
                               ("POST", "/demo/hello"), ("DELETE", "/demo/person"), ("PUT", "/demo/hello")):
            with self.subTest(method=method, target=target):
                self.assertEqual(self.app.handle(method, target)[0], 404)

    def test_database_unreachable_is_503(self):
        for error in (ConnectionRefusedError(111, "Connection refused"), socket.timeout("timed out"),
                      socket.gaierror(-2, "Name or service not known"), resp.ProtocolError("garbage")):
            app = server.App(DownStore(error))
            for method, target in (("PUT", "/demo/person?name=x"), ("GET", "/demo/person")):
                with self.subTest(error=repr(error), method=method):
                    status, body = app.handle(method, target)
                    self.assertEqual(status, 503)
                    self.assertTrue(body.startswith("Database unavailable") and body.count("\n") == 1, body)

    def test_database_error_reply_is_500(self):
        app = server.App(DownStore(resp.RedisError("WRONGTYPE Operation")))
        self.assertEqual(app.handle("GET", "/demo/person"), (500, "Database error: WRONGTYPE Operation\n"))

    def test_hello_does_not_need_the_database(self):
        app = server.App(DownStore(ConnectionRefusedError()))
        self.assertEqual(app.handle("GET", "/demo/hello"), (200, "hello, world!\n"))


class RedisStoreTest(unittest.TestCase):
    def test_commands(self):
        calls = []
        replies = {"SADD": 1, "SMEMBERS": [b"b", b"a"]}
        client = SimpleNamespace(execute=lambda *args: calls.append(args) or replies[args[0]])
        store = server.RedisStore(client)
        store.add("a")
        self.assertEqual(store.names(), ["a", "b"])
        self.assertEqual(calls, [("SADD", "persons", "a"), ("SMEMBERS", "persons")])


class HandlerTest(unittest.TestCase):
    """The HTTP handler over a socketpair: the real request parsing, no network."""

    def exchange(self, raw: bytes) -> bytes:
        ours, theirs = socket.socketpair()
        fake_server = SimpleNamespace(app=server.App(self.store, sleep=lambda s: None))
        worker = threading.Thread(target=server.Handler, args=(ours, ("127.0.0.1", 0), fake_server))
        worker.start()
        with theirs:
            theirs.sendall(raw)
            worker.join(5)
            ours.close()
            chunks = []
            while chunk := theirs.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks)

    def setUp(self):
        self.store = FakeStore()

    def test_get_hello(self):
        reply = self.exchange(b"GET /demo/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = reply.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.0 200 "), head)
        self.assertIn(b"Content-Length: 14", head)
        self.assertEqual(body, b"hello, world!\n")

    def test_put_with_a_body(self):
        reply = self.exchange(b"PUT /demo/person?name=Ana HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        self.assertTrue(reply.startswith(b"HTTP/1.0 200 "), reply)
        self.assertEqual(self.store.persons, {"Ana"})

    def test_head_has_no_body(self):
        reply = self.exchange(b"HEAD /demo/hello HTTP/1.1\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.0 200 ") and reply.endswith(b"\r\n\r\n"), reply)

    def test_unknown_path(self):
        self.assertTrue(self.exchange(b"POST /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 404 "))


if __name__ == "__main__":
    unittest.main()
