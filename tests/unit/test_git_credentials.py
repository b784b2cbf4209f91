"""A repository URL's token reaches git through its environment only: a real git server on
127.0.0.1 that wants it (tests/standin/git_http.py), and a `git` on PATH in front of the real one
that writes down every argv it gets. A delivery from such a server on the lab:
tests/integration/test_6_untrusted.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdtasks import checks, config, git_credentials, watch
from cdtasks.checkout import Checkout

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-3f9a1c2e7b"
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@cdtasks.invalid"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A bare repository `app.git` (a compose file on branch main) served with user `ci` and
    TOKEN; yields its URL without credentials."""
    base = tmp_path_factory.mktemp("git-server")
    work, served = base / "work", base / "repos"
    work.mkdir()
    served.mkdir()
    (work / "compose.yml").write_text("services: {}\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "one"]):
        subprocess.run(["git", *GIT_ID, *args], cwd=work, check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(served / "app.git")], check=True)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/standin/git_http.py"), str(served)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "GIT_USER": "ci", "GIT_TOKEN": TOKEN},
    )
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/app.git"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def argv_log(tmp_path, monkeypatch) -> Path:
    """Every git command's argv, one line each, from a `git` on PATH before the real one."""
    shim, log = tmp_path / "bin", tmp_path / "argv.log"
    shim.mkdir()
    real = subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip()
    (shim / "git").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (shim / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    return log


def with_token(url: str, token: str = TOKEN) -> str:
    return url.replace("http://", f"http://ci:{token}@")


def test_the_url_loses_its_credentials_and_the_environment_carries_them():
    assert git_credentials.url("https://ci:t%40k@git.example/a.git") == "https://git.example/a.git"
    for plain in ("https://git.example/a.git", "git@host:a.git", "/srv/a", "ssh://u@h/a"):
        assert git_credentials.url(plain) == plain
        assert git_credentials.environment(plain) == {}
    env = git_credentials.environment(
        "https://ci:t%40k@git.example:8443/a.git", {"GIT_CONFIG_COUNT": "1"}
    )
    assert env["CD_GIT_USERNAME"] == "ci" and env["CD_GIT_PASSWORD"] == "t@k"
    assert env["GIT_CONFIG_COUNT"] == "3"  # after the caller's own entry 0
    assert (
        env["GIT_CONFIG_KEY_1"]
        == env["GIT_CONFIG_KEY_2"]
        == "credential.https://git.example:8443.helper"
    )
    assert env["GIT_CONFIG_VALUE_1"] == "" and "t@k" not in env["GIT_CONFIG_VALUE_2"]


def test_checks_clone_and_watch_reach_the_server_with_the_token_in_no_argv(
    server, argv_log, tmp_path
):
    url = with_token(server)
    assert checks.repo(url) == url
    assert len(watch.head(url, "main")) == 40
    (tmp_path / "t.env").write_text(f"STATE_DIR={tmp_path / 'state'}\nCOMPOSE_FILE=compose.yml\n")
    s = config.load("t", environ={}, env_dir=tmp_path, project_dir=ROOT)
    co = Checkout(s, url, "main", "v1", log=lambda line: None)
    try:
        detail = co.clone()
        assert TOKEN not in detail
        assert TOKEN not in (co.workdir / ".git" / "config").read_text()
        assert server in (co.workdir / ".git" / "config").read_text()
        assert TOKEN not in "\n".join(co.commands)
    finally:
        co.close()
    assert "clone" in argv_log.read_text()
    assert TOKEN not in argv_log.read_text()


def test_a_wrong_token_is_refused_in_a_line_that_does_not_show_it(server, argv_log):
    wrong = "wrong-7d1e0b55"
    with pytest.raises(config.ConfigError) as refused:
        checks.repo(with_token(server, wrong))
    message = str(refused.value)
    assert "Authentication failed" in message and len(message.splitlines()) == 1
    assert wrong not in message and TOKEN not in message
    with pytest.raises(watch.SourceError, match="Authentication failed") as refused:
        watch.head(with_token(server, wrong), "main")
    assert wrong not in str(refused.value)
    assert wrong not in argv_log.read_text()
