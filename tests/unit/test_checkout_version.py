"""The version a delivery builds: --version, else the git tag, else the short commit id; and the
version rule of the env files refuses the rest (a real git repository, no cluster: the lab
shares its workspace, so nothing is copied to a node)."""

from __future__ import annotations

import subprocess

import pytest

from cdtasks.checkout import Checkout, check_version
from cdtasks.config import load
from cdtasks.runner import StepFailed

GIT_ID = ["-c", "user.name=cdtasks tests", "-c", "user.email=tests@cdtasks.invalid"]


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", *GIT_ID, *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    r.mkdir()
    (r / "docker-compose.yml").write_text("services: {}\n")
    git(r, "init", "--quiet")
    git(r, "add", ".")
    git(r, "commit", "--quiet", "-m", "first")
    return r


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "test.env").write_text(
        f"STATE_DIR={tmp_path / 'state'}\nCOMPOSE_FILE=docker-compose.yml\n"
    )
    return load("test", environ={}, env_dir=tmp_path)


def test_the_git_tag_names_the_version(repo, settings):
    git(repo, "tag", "2.5")
    co = Checkout(settings, str(repo))
    assert "as version 2.5" in co.clone()
    assert co.version == "2.5" and co.commit == git(repo, "rev-parse", "HEAD")


def test_without_a_tag_the_short_commit_id(repo, settings):
    co = Checkout(settings, str(repo))
    co.clone()
    assert co.version == git(repo, "rev-parse", "--short", "HEAD")


def test_a_given_version_wins_over_the_tag(repo, settings):
    git(repo, "tag", "2.5")
    co = Checkout(settings, str(repo), version="2.6")
    co.clone()
    assert co.version == "2.6"


def test_a_latest_tag_is_refused(repo, settings):
    git(repo, "tag", "latest")
    with pytest.raises(StepFailed, match="version 'latest' is refused"):
        Checkout(settings, str(repo)).clone()


def test_a_directory_without_git_needs_a_version(repo, settings, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "docker-compose.yml").write_text("services: {}\n")
    with pytest.raises(StepFailed, match="not a git repository: give --version"):
        Checkout(settings, str(plain)).clone()
    co = Checkout(settings, str(plain), version="3.0")
    co.clone()
    assert co.version == "3.0" and co.commit == ""


@pytest.mark.parametrize("version", ["", "latest", "1.0 beta", ".hidden", "x" * 129])
def test_the_env_files_version_rule_refuses(version):
    with pytest.raises(StepFailed, match="is refused"):
        check_version(version)


@pytest.mark.parametrize("version", ["1.0", "v2.3.4-rc1", "abc1234", "_build"])
def test_the_env_files_version_rule_accepts(version):
    assert check_version(version) == version
