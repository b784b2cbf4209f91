"""Functional tests against a running go-demo service. SKIPPED unless HOST_IP is set
(so that a plain `pytest` passes); with REQUIRE_HOST_IP=1, as the compose file sets, a missing
HOST_IP fails instead of silently skipping.

HOST_IP is "host" (port 80: through the proxy, as the integration and production tests do)
or "host:port" (e.g. staging-dep:8080: the app itself, as the staging test does).
"""
import http.client
import os
import time
import unittest
import uuid

HOST_IP = os.environ.get("HOST_IP", "").strip()
REQUIRED = os.environ.get("REQUIRE_HOST_IP") == "1"
WAIT_SECONDS = 30  # the service (or the proxy's view of it) may still be starting


def request(method: str, path: str) -> tuple[int, str]:
    host, sep, port = HOST_IP.rpartition(":")
    conn = http.client.HTTPConnection(host if sep else HOST_IP, int(port) if sep else 80, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@unittest.skipUnless(HOST_IP or REQUIRED, "HOST_IP is not set: functional tests need a running service")
class FunctionalTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not HOST_IP:
            raise AssertionError("HOST_IP is not set (REQUIRE_HOST_IP=1): no service to test")
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                last = request("GET", "/demo/hello")
                if last[0] == 200:
                    return
            except (OSError, http.client.HTTPException) as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError(f"{HOST_IP} not serving /demo/hello after {WAIT_SECONDS}s: {last!r}")
            time.sleep(1)

    def test_hello(self):
        self.assertEqual(request("GET", "/demo/hello"), (200, "hello, world!\n"))

    def test_person_is_stored(self):
        name = f"functional-{uuid.uuid4().hex[:12]}"
        status, body = request("PUT", f"/demo/person?name={name}")
        self.assertEqual(status, 200, body)
        status, body = request("GET", "/demo/person")
        self.assertEqual(status, 200, body)
        self.assertIn(name, body.splitlines())


if __name__ == "__main__":
    unittest.main()
