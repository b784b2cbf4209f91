"""Docker over SSH for `ssh://` endpoints, with the tool's own host key policy.

Docker's ssh:// transport (SDK and CLI) runs `docker system dial-stdio` on the node through the
user's `ssh` and its ~/.ssh/config: no way to insist on one key file and one known_hosts. So the
tool opens one verified SSH connection per node (Fabric, strict host keys) and serves a local
unix socket, readable by this user only, whose every connection becomes an SSH channel running
`docker system dial-stdio`. The SDK and `docker compose` both point at that socket.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import fabric
import paramiko

DIAL = "docker system dial-stdio"
CHUNK = 1 << 16
SSH_CHANNEL_TIMEOUT = 30  # seconds to open a channel on a link (a dead link does not answer)


def _pump(
    read: Callable[[int], bytes], write: Callable[[bytes], object], done: Callable[[], object]
) -> None:
    """Copy one direction until EOF, then half-close the other side (HTTP upgrades need it)."""
    try:
        while data := read(CHUNK):
            write(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the other side went away: the connection is over either way
    finally:
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            done()


class Tunnel:
    """A unix socket on this machine that reaches one node's Docker over a verified SSH link."""

    def __init__(self, node: str, connect: Callable[[], fabric.Connection]):
        self.node = node
        self._connect = connect  # -> an opened Fabric Connection (host key already verified)
        self._conns = [connect()]
        self._lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="cdtasks-ssh-"))  # mode 0700
        self.path = self._dir / "docker.sock"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(64)
        threading.Thread(target=self._accept, name=f"tunnel-{node}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _session(self):
        """A new channel. sshd allows MaxSessions (10 by default) per connection, and pooled
        HTTP connections keep theirs open: when every link is full, or dropped (node
        restarted), another link is opened."""
        with self._lock:
            self._conns = [c for c in self._conns if c.is_connected]
            for conn in self._conns:
                try:
                    return conn.client.get_transport().open_session(timeout=SSH_CHANNEL_TIMEOUT)
                except (paramiko.ChannelException, paramiko.SSHException):
                    continue
            conn = self._connect()
            self._conns.append(conn)
            return conn.client.get_transport().open_session(timeout=SSH_CHANNEL_TIMEOUT)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        chan = None
        try:
            chan = self._session()
            chan.exec_command(DIAL)
            upstream = threading.Thread(
                target=_pump, daemon=True, args=(client.recv, chan.sendall, chan.shutdown_write)
            )
            upstream.start()
            _pump(chan.recv, client.sendall, lambda: client.shutdown(socket.SHUT_WR))
            upstream.join()
        except Exception:  # a link that could not open or broke (node gone, process exiting):
            pass  # the SDK sees its connection close and reports the engine unreachable
        finally:
            # Closing a channel sends a message: on a link already gone that raises too.
            with contextlib.suppress(Exception):
                if chan is not None:
                    chan.close()
            client.close()

    def close(self) -> None:
        self._server.close()
        for conn in self._conns:
            conn.close()
        shutil.rmtree(self._dir, ignore_errors=True)


_tunnels: dict[object, Tunnel] = {}
_guard = threading.Lock()


def open_for(key: object, node: str, connect: Callable[[], object]) -> Tunnel:
    """The process's tunnel for `key` (an endpoint), opened on first use."""
    with _guard:
        if key not in _tunnels:
            _tunnels[key] = Tunnel(node, connect)
        return _tunnels[key]


@atexit.register
def close_all() -> None:
    with _guard:
        while _tunnels:
            _tunnels.popitem()[1].close()
