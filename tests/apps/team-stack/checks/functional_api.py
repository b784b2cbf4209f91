"""Functional checks of the team's API at HOST_IP ("host:port"): the API itself in staging,
the stack's proxy in production. Fails without HOST_IP (only the compose file runs these)."""

import http.client
import json
import os
import time
import unittest

HOST_IP = os.environ.get("HOST_IP", "").strip()
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


class ApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not HOST_IP:
            raise AssertionError("HOST_IP is not set: no service to check")
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                last = get("/health")
                if last[0] == 200:
                    return
            except (OSError, http.client.HTTPException) as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError(f"{HOST_IP} not healthy after {WAIT_SECONDS}s: {last}")
            time.sleep(1)

    def test_root_answers_with_version_and_greeting(self):
        status, body = get("/")
        self.assertEqual(status, 200, body)
        doc = json.loads(body)
        self.assertTrue(doc["version"])
        self.assertTrue(doc["greeting"])


if __name__ == "__main__":
    unittest.main()
