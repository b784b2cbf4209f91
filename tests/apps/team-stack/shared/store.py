"""The tiny Redis client both images share (RESP over a socket: no library to install)."""

import os
import socket


def command(*args: str) -> str:
    host, _, port = os.environ.get("STORE", "store:6379").partition(":")
    with socket.create_connection((host, int(port or 6379)), timeout=5) as s:
        s.sendall(
            f"*{len(args)}\r\n".encode()
            + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
        )
        reply = s.recv(65536).decode()
    kind, body = reply[:1], reply[1:].split("\r\n")
    if kind == "-":
        raise RuntimeError(body[0])
    if kind == "$":
        return "" if body[0] == "-1" else body[1]
    return body[0]
