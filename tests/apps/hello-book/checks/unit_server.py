"""Unit checks: routing, the Redis reply, and a prompt exit on SIGTERM. No service needed."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "hello"
sys.path.insert(0, str(APP))

import server  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RouteTest(unittest.TestCase):
    def test_version_and_health(self):
        self.assertEqual(
            server.route("/hello", "1.2", None, "/hello"), (200, "hello from hello-book 1.2\n")
        )
        self.assertEqual(server.route("/hello/version", "1.2", None, "/hello"), (200, "1.2\n"))
        self.assertEqual(server.route("/hello/health", "1.2", None, "/hello"), (200, "ok\n"))
        self.assertEqual(server.route("/other", "1.2", None, "/hello")[0], 404)

    def test_served_under_another_prefix(self):
        self.assertEqual(
            server.route("/demo/hello", "1.2", None, "/demo/hello"),
            (200, "hello from hello-book 1.2\n"),
        )
        self.assertEqual(
            server.route("/demo/hello/health", "1", None, "/demo/hello"), (200, "ok\n")
        )
        self.assertEqual(server.route("/hello/health", "1", None, "/demo/hello")[0], 404)

    def test_visits_and_a_database_that_is_down(self):
        self.assertEqual(server.route("/hello/visits", "1", lambda: 7, "/hello"), (200, "7\n"))

        def down():
            raise ConnectionRefusedError("refused")

        status, body = server.route("/hello/visits", "1", down, "/hello")
        self.assertEqual(status, 503)
        self.assertIn("refused", body)

    def test_db_address(self):
        self.assertEqual(server.db_address(""), ("db", 6379))
        self.assertEqual(server.db_address("cache"), ("cache", 6379))
        self.assertEqual(server.db_address("cache:7000"), ("cache", 7000))


class CountVisitTest(unittest.TestCase):
    def test_reads_the_integer_reply(self):
        listener = socket.create_server(("127.0.0.1", 0))
        received = []

        def answer():
            conn, _ = listener.accept()
            with conn:
                received.append(conn.recv(100))
                conn.sendall(b":41\r\n")

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            self.assertEqual(server.count_visit(listener.getsockname()), 41)
        finally:
            thread.join(5)
            listener.close()
        self.assertEqual(received, [b"INCR hello-book:visits\r\n"])


class StopTest(unittest.TestCase):
    def test_sigterm_stops_the_server_promptly(self):
        port = free_port()
        env = {**os.environ, "PORT": str(port), "APP_VERSION": "9.9", "PREFIX": "/hello"}
        proc = subprocess.Popen(
            [sys.executable, "-u", str(APP / "server.py")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            self.assertIn("listening", proc.stdout.readline())
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/hello/version")
            self.assertEqual(conn.getresponse().read(), b"9.9\n")
            conn.close()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(5), 0)
            self.assertLess(time.monotonic() - started, 3)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()


if __name__ == "__main__":
    unittest.main()
