"""Docker HEALTHCHECK: exit 0 if GET PREFIX/health (default /hello/health) answers 200 within 2 s."""

import http.client
import os
import sys


def main() -> int:
    conn = http.client.HTTPConnection("127.0.0.1", int(os.environ.get("PORT") or 8080), timeout=2)
    try:
        conn.request("GET", (os.environ.get("PREFIX") or "/hello") + "/health")
        return 0 if conn.getresponse().status == 200 else 1
    except Exception:  # refused, timed out, garbled: all unhealthy
        return 1
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
