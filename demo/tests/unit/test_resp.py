import io
import socket
import sys
import unittest
from pathlib import Path
from unittest import mock

_ROOT = Path(__file__).resolve().parents[2]  # demo/ in the repository, /app in the image
sys.path.insert(0, str(_ROOT / "app" if (_ROOT / "app").is_dir() else _ROOT))

import resp  # noqa: E402


def parse(data: bytes):
    return resp.read_reply(io.BytesIO(data))


class EncodeTest(unittest.TestCase):
    def test_command_is_an_array_of_bulk_strings(self):
        self.assertEqual(resp.encode("SADD", "persons", "Ana"),
                         b"*3\r\n$4\r\nSADD\r\n$7\r\npersons\r\n$3\r\nAna\r\n")

    def test_lengths_count_bytes_not_characters(self):
        self.assertEqual(resp.encode("é"), b"*1\r\n$2\r\n\xc3\xa9\r\n")

    def test_bytes_and_ints(self):
        self.assertEqual(resp.encode(b"a\r\nb", 7), b"*2\r\n$4\r\na\r\nb\r\n$1\r\n7\r\n")


class ReadReplyTest(unittest.TestCase):
    def test_simple_string(self):
        self.assertEqual(parse(b"+PONG\r\n"), "PONG")

    def test_error_is_returned_not_raised(self):
        reply = parse(b"-WRONGTYPE Operation against a key\r\n")
        self.assertIsInstance(reply, resp.RedisError)
        self.assertEqual(str(reply), "WRONGTYPE Operation against a key")

    def test_integer(self):
        self.assertEqual(parse(b":-42\r\n"), -42)

    def test_bulk_string_may_hold_crlf(self):
        self.assertEqual(parse(b"$4\r\na\r\nb\r\n"), b"a\r\nb")

    def test_null_bulk_and_null_array(self):
        self.assertIsNone(parse(b"$-1\r\n"))
        self.assertIsNone(parse(b"*-1\r\n"))

    def test_nested_array_with_error_inside(self):
        reply = parse(b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n+OK\r\n-ERR no\r\n")
        self.assertEqual(reply[:2], [1, [b"x", "OK"]])
        self.assertIsInstance(reply[2], resp.RedisError)

    def test_empty_array(self):
        self.assertEqual(parse(b"*0\r\n"), [])

    def test_truncated_replies(self):
        for data in (b"", b"+PON", b"$5\r\nab", b"*2\r\n:1\r\n"):
            with self.subTest(data=data), self.assertRaises(resp.ProtocolError):
                parse(data)

    def test_garbage(self):
        for data in (b"HTTP/1.1 400 Bad Request\r\n", b":abc\r\n"):
            with self.subTest(data=data), self.assertRaises(resp.ProtocolError):
                parse(data)

    def test_protocol_error_counts_as_unreachable(self):
        self.assertTrue(issubclass(resp.ProtocolError, OSError))


class RedisClientTest(unittest.TestCase):
    """The client over a socketpair standing in for a connection to redis-server."""

    def run_command(self, reply: bytes, *args):
        ours, theirs = socket.socketpair()
        theirs.sendall(reply)
        with theirs, mock.patch.object(resp.socket, "create_connection", return_value=ours) as connect:
            try:
                return resp.Redis("db", 6390, timeout=1.5).execute(*args)
            finally:
                connect.assert_called_once_with(("db", 6390), timeout=1.5)
                self.sent = theirs.recv(1024)

    def test_sends_the_command_and_returns_the_reply(self):
        self.assertEqual(self.run_command(b"*1\r\n$3\r\nAna\r\n", "SMEMBERS", "persons"), [b"Ana"])
        self.assertEqual(self.sent, resp.encode("SMEMBERS", "persons"))

    def test_error_reply_is_raised(self):
        with self.assertRaisesRegex(resp.RedisError, "ERR unknown command"):
            self.run_command(b"-ERR unknown command\r\n", "NOPE")

    def test_ping(self):
        ours, theirs = socket.socketpair()
        theirs.sendall(b"+PONG\r\n")
        with theirs, mock.patch.object(resp.socket, "create_connection", return_value=ours):
            self.assertTrue(resp.Redis("db").ping())


if __name__ == "__main__":
    unittest.main()
