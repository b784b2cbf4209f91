"""Unit checks of the shared store client: how a command is written on the wire."""

import sys
import unittest
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))
import store  # noqa: E402


class Socket:
    def __init__(self, reply: bytes):
        self.reply, self.sent = reply, b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def sendall(self, data: bytes):
        self.sent += data

    def recv(self, _size: int) -> bytes:
        return self.reply


class StoreTest(unittest.TestCase):
    def test_command_is_sent_as_resp_and_bulk_reply_read(self):
        sock = Socket(b"$1\r\n7\r\n")
        with mock.patch.object(store.socket, "create_connection", return_value=sock):
            self.assertEqual(store.command("GET", "work"), "7")
        self.assertEqual(sock.sent, b"*2\r\n$3\r\nGET\r\n$4\r\nwork\r\n")

    def test_error_reply_raises(self):
        error = Socket(b"-ERR x\r\n")
        with (
            mock.patch.object(store.socket, "create_connection", return_value=error),
            self.assertRaises(RuntimeError),
        ):
            store.command("GET", "work")


if __name__ == "__main__":
    unittest.main()
