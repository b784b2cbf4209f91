"""A minimal Redis client speaking RESP2: one connection per command, enough for go-demo."""
import socket


class RedisError(Exception):
    """An error reply (-ERR ...) from the server."""


class ProtocolError(ConnectionError):
    """The peer does not speak RESP (or hung up mid-reply)."""


def encode(*args) -> bytes:
    """Encode a command as an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_reply(f):
    """Read one reply from a binary file object.

    Error replies are returned as RedisError instances rather than raised, so that an error
    nested in an array does not leave the rest of the array unread.
    """
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ProtocolError("connection closed before a full reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode(errors="replace"))
    try:
        number = int(rest)
    except ValueError:
        raise ProtocolError(f"unexpected reply {line[:40]!r}") from None
    if kind == b":":
        return number
    if kind == b"$":
        if number < 0:
            return None
        data = f.read(number + 2)
        if len(data) != number + 2:
            raise ProtocolError("connection closed inside a bulk string")
        return data[:-2]
    if kind == b"*":
        return None if number < 0 else [read_reply(f) for _ in range(number)]
    raise ProtocolError(f"unexpected reply {line[:40]!r}")


class Redis:
    def __init__(self, host: str, port: int = 6379, timeout: float = 2.0):
        self.host, self.port, self.timeout = host, port, timeout

    def execute(self, *args):
        """Send one command and return its reply; OSError if the server can't be reached."""
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            sock.sendall(encode(*args))
            with sock.makefile("rb") as f:
                reply = read_reply(f)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def ping(self) -> bool:
        return self.execute("PING") == "PONG"
