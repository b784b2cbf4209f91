"""Checks of the delivery's flags before any step runs (real git on local repositories and a
local server that never answers; no network)."""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import threading
import time

import pytest

from cdtasks import checks
from cdtasks.config import ConfigError


def git(*args: str, cwd=None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository with ci/compose.yml committed and later.yml only in the working tree."""
    r = tmp_path / "repo"
    (r / "ci").mkdir(parents=True)
    (r / "ci" / "compose.yml").write_text("services: {}\n")
    git("init", "-q", str(r))
    git("add", ".", cwd=r)
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "one", cwd=r)
    git("tag", "v1", cwd=r)
    (r / "later.yml").write_text("services: {}\n")
    return r


@pytest.mark.parametrize("value", ["1.1", "v2.0.3-rc1", "abc1234", "A_b"])
def test_version_accepts_pinned_tags(value):
    assert checks.version(value) == value


@pytest.mark.parametrize(
    "value", ["", "latest", "1.1;rm -rf /", "$(id)", "a b", "-1", ".x", "x" * 129]
)
def test_version_refuses_empty_latest_and_shell_characters(value):
    with pytest.raises(ConfigError) as err:
        checks.version(value)
    assert str(err.value).startswith(f"--version {value!r}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["HEAD", "main", "v1.1", "feature/x", "HEAD~1", "8416da5"])
def test_ref_accepts_branches_tags_commits(value):
    assert checks.ref(value) == value


@pytest.mark.parametrize("value", ["", "-b", "--upload-pack=touch /tmp/x", "a b", "x\ny", "x\x00"])
def test_ref_refuses_options_and_whitespace(value):
    with pytest.raises(ConfigError, match=r"^--ref "):
        checks.ref(value)


def test_repo_empty_local_git_and_plain_directory(repo, tmp_path):
    assert checks.repo("") == ""
    assert checks.repo(str(repo)) == str(repo)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert checks.repo(str(plain)) == str(plain)


def test_repo_missing_path_and_option_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^--repo '.*nope': no such directory"):
        checks.repo(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="not an option"):
        checks.repo("--upload-pack=touch x")


def test_repo_url_that_answers_ls_remote(repo):
    assert checks.repo(f"file://{repo}") == f"file://{repo}"


def test_repo_url_that_fails_names_it_without_credentials(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there any more: refused at once
    url = f"https://deploy:s3cr3t-token@127.0.0.1:{port}/group/app.git"
    with pytest.raises(ConfigError) as err:
        checks.repo(url)
    message = str(err.value)
    assert message.startswith(f"--repo 'https://***@127.0.0.1:{port}/group/app.git': ")
    assert "s3cr3t" not in message and "\n" not in message


def test_repo_url_that_never_answers_times_out(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks
    held = []
    stop = threading.Event()

    def hold():
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError, match=r"did not answer `git ls-remote` within 1s"):
            checks.repo(f"http://127.0.0.1:{port}/app.git", timeout=1)
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()
    assert time.monotonic() - started < 5


def test_repo_url_asking_for_credentials_fails_at_once_without_a_prompt(monkeypatch):
    class AskForPassword(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    monkeypatch.delenv("GIT_ASKPASS", raising=False)
    monkeypatch.delenv("SSH_ASKPASS", raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AskForPassword)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError) as err:
            checks.repo(f"http://127.0.0.1:{server.server_port}/app.git", timeout=20)
    finally:
        server.shutdown()
        server.server_close()
    assert "terminal prompts disabled" in str(err.value)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("value", ["ci/compose.yml", "./ci/compose.yml", "ci/../ci/compose.yml"])
def test_compose_file_in_the_repository_at_the_ref(repo, value):
    assert checks.compose_file(value, str(repo), "v1") == value
    assert checks.compose_file(value) == value  # no repository to look into: the path only


def test_compose_file_not_at_the_ref_is_refused(repo):
    with pytest.raises(ConfigError, match=r"^--compose-file 'later.yml': not in .* at v1$"):
        checks.compose_file("later.yml", str(repo), "v1")
    with pytest.raises(ConfigError, match="at HEAD"):
        checks.compose_file("ci/nope.yml", str(repo))


def test_compose_file_in_a_plain_directory(tmp_path):
    (tmp_path / "c.yml").write_text("services: {}\n")
    assert checks.compose_file("c.yml", str(tmp_path)) == "c.yml"
    with pytest.raises(ConfigError, match="not in"):
        checks.compose_file("d.yml", str(tmp_path))


@pytest.mark.parametrize(
    "value, why",
    [
        ("", "relative"),
        ("/etc/compose.yml", "relative"),
        ("~/c.yml", "relative"),
        ("../c.yml", r"leaves the repository"),
        ("ci/../../c.yml", r"leaves the repository"),
    ],
)
def test_compose_file_outside_the_checkout_is_refused(value, why):
    with pytest.raises(ConfigError, match=why) as err:
        checks.compose_file(value)
    assert str(err.value).startswith(f"--compose-file {value!r}: ")


def test_inside_follows_symbolic_links(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "ci").mkdir(parents=True)
    (checkout / "ci" / "c.yml").write_text("services: {}\n")
    (checkout / "out.yml").symlink_to(tmp_path / "elsewhere.yml")
    assert checks.inside(checkout, "ci/c.yml") == (checkout / "ci" / "c.yml").resolve()
    with pytest.raises(ConfigError, match="resolves outside the checkout"):
        checks.inside(checkout, "out.yml")


@pytest.mark.parametrize(
    "value, url",
    [
        ("https://h/x.git", True),
        ("git+https://h/x", True),
        ("file:///srv/x", True),
        ("git@github.com:me/x.git", True),
        ("/srv/x", False),
        ("./x", False),
        ("x:y", False),
    ],
)
def test_is_url(value, url):
    assert checks.is_url(value) is url


def test_an_unknown_ref_is_left_to_the_checkout_step_to_name(tmp_path):
    """The compose-file check cannot look at a ref that does not exist: the checkout step
    says `--ref X: no such branch, tag or commit` (exit 11), not a misleading missing file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "c.yml").write_text("services: {}\n")
    subprocess.run([*git, "add", "c.yml"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    assert checks.compose_file("c.yml", str(repo), "no-such-ref") == "c.yml"
    with pytest.raises(ConfigError, match="not in"):
        checks.compose_file("missing.yml", str(repo), "HEAD")


def test_max_errors_is_a_whole_number_or_not_given():
    assert checks.max_errors(None) is None
    assert checks.max_errors("0") == 0 and checks.max_errors(" 12 ") == 12
    for bad in ("-1", "1.5", "ten", "", "١"):
        with pytest.raises(ConfigError, match=r"^--max-errors .*whole number"):
            checks.max_errors(bad)
