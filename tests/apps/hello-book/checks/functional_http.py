"""Functional checks against a running hello-book, at HOST_IP: "host:port" (the app itself, as
staging does) or "host" (port 80, through the proxy, as production does). Fails without HOST_IP:
these checks only run from the compose file, which always sets it."""

import http.client
import os
import time
import unittest

HOST_IP = os.environ.get("HOST_IP", "").strip()
PREFIX = os.environ.get("PREFIX") or "/hello"  # where the app is served (as it was built)
WAIT_SECONDS = 30  # the service, or the proxy's view of it, may still be starting


def get(path: str) -> tuple[int, str]:
    host, sep, port = HOST_IP.rpartition(":")
    conn = http.client.HTTPConnection(
        host if sep else HOST_IP, int(port) if sep else 80, timeout=10
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


class HelloBookTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not HOST_IP:
            raise AssertionError("HOST_IP is not set: no service to check")
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                last = get(PREFIX + "/health")
                if last[0] == 200:
                    return
            except (OSError, http.client.HTTPException) as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{HOST_IP}: {PREFIX}/health not answering after {WAIT_SECONDS}s: {last!r}"
                )
            time.sleep(1)

    def test_reports_its_version(self):
        status, version = get(PREFIX + "/version")
        self.assertEqual(status, 200)
        self.assertRegex(version, r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\n$")
        # Not compared with the answer above: behind a proxy the two requests may reach two
        # replicas, and right after a rolling update one may still be the old version.
        status, greeting = get(PREFIX)
        self.assertEqual(status, 200)
        self.assertRegex(greeting, r"^hello from hello-book [A-Za-z0-9_][A-Za-z0-9_.-]*\n$")

    def test_counts_visits_in_the_database(self):
        status, first = get(PREFIX + "/visits")
        self.assertEqual(status, 200, first)
        status, second = get(PREFIX + "/visits")
        self.assertEqual(status, 200, second)
        self.assertGreater(int(second), int(first))


if __name__ == "__main__":
    unittest.main()
