"""The team's API: version, schema (set by the migration job), greeting (a config), whether its
token (a secret) is there, and how much work the worker did; exits at once on SIGTERM."""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, "/app/shared")
import store  # noqa: E402

GREETING = os.environ.get("GREETING_FILE", "/etc/team/greeting.txt")
TOKEN = os.environ.get("TOKEN_FILE", "/run/secrets/api_token")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = {"ok": True}
        else:
            with open(GREETING) as f:
                greeting = f.read().strip()
            body = {
                "version": os.environ.get("APP_VERSION", "dev"),
                "schema": store.command("GET", "schema"),
                "greeting": greeting,
                "token": os.path.exists(TOKEN),
                "work": store.command("GET", "work"),
            }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("", int(os.environ.get("PORT", "8000"))), Handler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("api listening", flush=True)
server.serve_forever()
