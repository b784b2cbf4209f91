"""The SSH tunnel's carrier threads: a broken link ends one connection, quietly (no engine)."""

from __future__ import annotations

import socket
import threading

import pytest

from cdtasks.tunnel import Tunnel


class DeadLink:
    """A channel on a link that went away: every call fails as paramiko's do then."""

    def exec_command(self, command):
        pass

    def recv(self, n):
        raise EOFError()

    def sendall(self, data):
        raise OSError("Socket is closed")

    def shutdown_write(self):
        raise EOFError()

    def close(self):  # closing sends a message on the dead link
        raise EOFError()


def _tunnel(session) -> Tunnel:
    t = Tunnel.__new__(Tunnel)  # no SSH connection or socket file: only the carrier is tested
    t._session = session
    return t


@pytest.mark.parametrize("session", [DeadLink, lambda: (_ for _ in ()).throw(EOFError())])
def test_a_broken_link_closes_the_connection_without_a_traceback(session, monkeypatch):
    raised = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    ours, theirs = socket.socketpair()
    theirs.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
    _tunnel(session)._carry(ours)
    assert ours.fileno() == -1  # the SDK's side sees the connection end
    assert raised == []  # nothing escaped the carrier threads
    theirs.close()
