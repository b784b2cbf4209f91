"""The `cdtasks` command (tasks.py-less): its version is the installed package's, its help
says what the tool is before Invoke's usage."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from cdtasks.tasks import DESCRIPTION, ns, program

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture(autouse=True)
def _own_namespace(monkeypatch):
    """A copy of the collection: parsing consumes the tasks' help dictionaries (Invoke pops
    them), which other tests read (test_json_output failed after this module)."""
    monkeypatch.setattr(program, "namespace", copy.deepcopy(ns))


def test_version_is_the_packages(capsys):
    program.run(["cdtasks", "--version"], exit=False)
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert capsys.readouterr().out == f"cdtasks {declared}\n"  # it said "cdtasks unknown"


def test_help_starts_with_what_the_tool_is(capsys):
    program.run(["cdtasks", "--help"], exit=False)
    out = capsys.readouterr().out
    assert out.startswith(DESCRIPTION + "\n\nUsage: cdtasks ")
    assert "deliver" in out and "Docker Swarm" in out
