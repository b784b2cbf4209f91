"""Functional checks against a running hello-book, at HOST_IP: "host:port" (the app itself, as
staging does) or "host" (port 80, through the proxy, as production does). Fails without HOST_IP:
these checks only run from the compose file, which always sets it."""
import http.client
import os
import time
import unittest

HOST_IP = os.environ.get("HOST_IP", "").strip()
WAIT_SECONDS = 30  # the service, or the proxy's view of it, may still be starting


def get(path: str) -> tuple[int, str]:
    host, sep, port = HOST_IP.rpartition(":")
    conn = http.client.HTTPConnection(host if sep else HOST_IP, int(port) if sep else 80,
                                      timeout=10)
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
                last = get("/hello/health")
                if last[0] == 200:
                    return
            except (OSError, http.client.HTTPException) as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError(f"{HOST_IP}: /hello/health not answering after "
                                     f"{WAIT_SECONDS}s: {last!r}")
            time.sleep(1)

    def test_reports_its_version(self):
        status, version = get("/hello/version")
        self.assertEqual(status, 200)
        self.assertRegex(version, r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\n$")
        self.assertEqual(get("/hello"), (200, f"hello from hello-book {version}"))

    def test_counts_visits_in_the_database(self):
        status, first = get("/hello/visits")
        self.assertEqual(status, 200, first)
        status, second = get("/hello/visits")
        self.assertEqual(status, 200, second)
        self.assertGreater(int(second), int(first))


if __name__ == "__main__":
    unittest.main()
