"""ARCHITECTURE.md describes the code as it is: every `cdtasks/...` path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "ARCHITECTURE.md"
PATH = re.compile(r"\bcdtasks/[\w/.]*\w/?")


def named_paths(text: str) -> list[str]:
    return sorted(set(PATH.findall(text)))


def test_the_paths_are_read_from_the_text():
    text = "see `cdtasks/gateway.py`, cdtasks/providers/ and cdtasks/tasks/flags.py."
    assert named_paths(text) == [
        "cdtasks/gateway.py",
        "cdtasks/providers/",
        "cdtasks/tasks/flags.py",
    ]


def test_every_cdtasks_path_in_the_architecture_exists():
    paths = named_paths(DOC.read_text())
    assert len(paths) >= 20, paths  # the modules of every layer are named
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"ARCHITECTURE.md names what does not exist: {missing}"
