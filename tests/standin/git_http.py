"""A git server over HTTP on 127.0.0.1 that wants a token: `git http-backend` (CGI) behind
Basic authentication. Run by the tests: `python3 git_http.py ROOT`, with GIT_USER and GIT_TOKEN in
its environment; it prints its port on the first line of stdout and serves until killed. Each
request's credentials are appended to ROOT/../auth.log as `ok` or `refused` (never the token).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class GitHandler(BaseHTTPRequestHandler):
    root: Path
    expected: str

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, *args) -> None:
        pass

    def _serve(self) -> None:
        given = self.headers.get("Authorization")
        with open(self.root.parent / "auth.log", "a") as log:
            log.write(("ok" if given == self.expected else "refused" if given else "none") + "\n")
        if given != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": self.headers.get("Content-Type") or "",
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding") or "",
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol") or "",
            "REMOTE_USER": "git",
            "REMOTE_ADDR": "127.0.0.1",
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=120
        ).stdout
        head, sep, payload = out.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = out.partition(b"\n\n")
        headers = [line.split(b":", 1) for line in head.splitlines() if b":" in line]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == b"status"), 200)
        self.send_response(status)
        for key, value in headers:
            if key.lower() != b"status":
                self.send_header(key.decode(), value.strip().decode())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    GitHandler.root = Path(sys.argv[1]).resolve()
    pair = f"{os.environ['GIT_USER']}:{os.environ['GIT_TOKEN']}".encode()
    GitHandler.expected = "Basic " + base64.b64encode(pair).decode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), GitHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
