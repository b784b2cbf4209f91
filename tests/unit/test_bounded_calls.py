"""Every outside call has a time limit, and what it started dies with it: git (and its transport
helpers), mmdebstrap (and its apt), commands over SSH (Fabric/Invoke), Engine API connections."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest
from invoke.exceptions import CommandTimedOut

from cdtasks import checkout, checks, engine, git, images, watch
from cdtasks.config import ConfigError
from cdtasks.runner import StepFailed

HANGING_HELPER = """#!/bin/sh
echo $$ > "{pidfile}"
exec sleep 60
"""


@pytest.fixture
def hanging_remote(tmp_path, monkeypatch) -> Path:
    """A git transport (`hang://`) whose helper never answers; returns where it writes its pid."""
    pidfile = tmp_path / "helper.pid"
    helper = tmp_path / "bin" / "git-remote-hang"
    helper.parent.mkdir()
    helper.write_text(HANGING_HELPER.format(pidfile=pidfile))
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    return pidfile


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # killed, waiting to be reaped by its new parent
            return True
        time.sleep(0.05)
    return False


def test_a_hung_git_is_killed_with_its_transport_helper(hanging_remote):
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        git.run(["ls-remote", "hang://example"], timeout=1)
    assert time.monotonic() - start < 5
    assert _gone(int(hanging_remote.read_text()))


def test_the_repo_flag_check_gives_up_on_a_hung_remote(hanging_remote):
    with pytest.raises(ConfigError, match=r"did not answer `git ls-remote` within 1s"):
        checks.repo("hang://example", timeout=1)
    assert _gone(int(hanging_remote.read_text()))


def test_the_watcher_gives_up_on_a_hung_remote(hanging_remote, monkeypatch):
    monkeypatch.setattr(watch, "GIT_TIMEOUT", 1)
    with pytest.raises(watch.SourceError, match=r"`git ls-remote` got no answer in 1s"):
        watch.head("hang://example", "main")
    assert _gone(int(hanging_remote.read_text()))


def test_a_clone_that_hangs_fails_the_checkout_step(hanging_remote, monkeypatch, tmp_path):
    monkeypatch.setattr(checkout, "GIT_TIMEOUT", 1)
    with pytest.raises(StepFailed, match=r"`git clone .*` did not finish within 1s"):
        checkout._git(["clone", "--quiet", "--", "hang://example", str(tmp_path / "c")])
    assert _gone(int(hanging_remote.read_text()))


def test_mmdebstrap_is_stopped_with_what_it_started(monkeypatch, tmp_path):
    # A child that keeps its output open: without the group killed, this would wait 60 s.
    monkeypatch.setattr(
        images, "mmdebstrap_command", lambda *a: ["sh", "-c", "sleep 60 & sleep 60"]
    )
    rootfs = next(iter(images.IMAGES.values())).rootfs
    start = time.monotonic()
    with pytest.raises(images.ImageError, match=r"did not finish image .* within 1s"):
        images.mmdebstrap(rootfs, tmp_path / "r.tar", tmp_path / "v", timeout=1)
    assert time.monotonic() - start < 5


def test_commands_on_a_node_end_after_the_ssh_command_timeout(monkeypatch):
    monkeypatch.setattr(engine, "SSH_COMMAND_TIMEOUT", 1)
    shell = engine.CommandShell(("sh", "-c"))  # the `docker-machine ssh NODE` way
    start = time.monotonic()
    with pytest.raises(CommandTimedOut):
        shell.run("exec sleep 30", hide=True)
    assert time.monotonic() - start < 10


def test_a_timeout_is_a_timeout_even_when_the_killed_command_is_reaped_first(monkeypatch):
    # What a busy machine did in CI: the command, killed by Invoke's timer, was reaped while
    # the timer's thread still ran, and Invoke reported a plain exit -9 instead of a timeout.
    import invoke.runners

    class SlowToEndTimer(threading.Timer):
        def run(self):
            self.finished.wait(self.interval)
            if not self.finished.is_set():
                self.function()
                time.sleep(1.5)  # the thread outlives the command it killed
            self.finished.set()

    monkeypatch.setattr(invoke.runners.threading, "Timer", SlowToEndTimer)
    monkeypatch.setattr(engine, "SSH_COMMAND_TIMEOUT", 1)
    with pytest.raises(CommandTimedOut):
        engine.CommandShell(("sh", "-c")).run("exec sleep 30", hide=True)


def test_node_clients_connect_within_the_connect_timeout():
    ep = engine.Endpoint("n1", "tcp://127.0.0.1:9", None, "10.0.0.1")
    timeout = engine.client(ep, check=False).api.timeout
    assert timeout.connect_timeout == engine.CONNECT_TIMEOUT < engine.TIMEOUT
    assert timeout.read_timeout == engine.TIMEOUT
    # docker-py adds a container's stop grace period to the client's timeout
    assert (timeout + 10).read_timeout == engine.TIMEOUT + 10
    assert (timeout + 10).connect_timeout == engine.CONNECT_TIMEOUT


class _SilentServer(paramiko.ServerInterface):
    """Any key gets in; a command is accepted and not answered (a stuck mount, a dead engine)."""

    def __init__(self):
        self.commands: list[bytes] = []

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        self.commands.append(command)
        # Ended by the server after a while: a client without a timeout fails, not hangs.
        backstop = threading.Timer(15, channel.close)
        backstop.daemon = True
        backstop.start()
        return True


@pytest.fixture
def silent_ssh(tmp_path):
    """An SSH server on 127.0.0.1 (host key in its own known_hosts) whose commands hang; yields
    an Endpoint that reaches it through Fabric and the server."""
    host_key, user_key = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    user_key.write_private_key_file(str(tmp_path / "id"))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    server, transports = _SilentServer(), []

    def serve():
        with contextlib.suppress(OSError):
            while True:
                sock, _ = listener.accept()
                t = paramiko.Transport(sock)
                t.add_server_key(host_key)
                t.start_server(server=server)
                transports.append(t)

    threading.Thread(target=serve, daemon=True).start()
    yield (
        engine.Endpoint(
            "n1",
            f"ssh://root@127.0.0.1:{port}",
            None,
            "10.0.0.1",
            ssh_host="127.0.0.1",
            ssh_port=port,
            ssh_key=tmp_path / "id",
            known_hosts=known,
        ),
        server,
    )
    listener.close()
    for t in transports:
        t.close()


def test_a_command_over_fabric_ends_after_the_ssh_command_timeout(silent_ssh, monkeypatch):
    endpoint, server = silent_ssh
    monkeypatch.setattr(engine, "SSH_COMMAND_TIMEOUT", 1)
    conn = engine.ssh(endpoint)
    try:
        start = time.monotonic()
        with pytest.raises(CommandTimedOut):
            conn.run("docker info", hide=True)
        assert time.monotonic() - start < 10
    finally:
        conn.close()
    assert server.commands == [b"docker info"]
