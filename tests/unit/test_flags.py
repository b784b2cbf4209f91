"""One flag vocabulary: every task's flags as Invoke's own parser builds them (the collection's
parser contexts, what `inv TASK --help` shows), checked across tasks: a short flag means one long
flag everywhere, a long flag has one meaning, a meaning has one long flag."""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from pathlib import Path

import pytest

from cdtasks import ns
from cdtasks.tasks.flags import VOCABULARY, help_text

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def contexts():
    # A copy: building contexts consumes the tasks' help dictionaries (Invoke pops them).
    return {ctx.name: ctx for ctx in copy.deepcopy(ns).to_contexts()}


def flags(ctx):
    """(long name, short names, help) of each of a task's flags."""
    seen = {id(arg): arg for arg in ctx.flags.values()}.values()
    return [
        (
            next(n for n in arg.names if len(n) > 1),
            [n for n in arg.names if len(n) == 1],
            arg.help or "",
        )
        for arg in seen
    ]


def test_a_short_flag_means_one_long_flag_in_every_task(contexts):
    meanings = defaultdict(set)
    for name, ctx in contexts.items():
        for long, shorts, _ in flags(ctx):
            assert len(shorts) <= 1, f"{name} --{long}: {shorts}"
            for short in shorts:
                meanings[short].add(long)
    clashes = {short: longs for short, longs in meanings.items() if len(longs) > 1}
    assert not clashes, clashes
    assert meanings["e"] == {"env"} and meanings["n"] == {"dry-run"}


def test_a_concept_has_one_long_name_and_one_meaning(contexts):
    """Each flag's help starts with its vocabulary meaning (what the task adds follows), so a
    long name means one thing; the vocabulary's meanings are distinct, so one thing has one
    long name."""
    for name, ctx in contexts.items():
        for long, shorts, help in flags(ctx):
            key = long.replace("-", "_")
            assert key in VOCABULARY, f"{name} --{long}: not in the vocabulary"
            meaning = VOCABULARY[key].meaning
            assert help == meaning or help.startswith(meaning + "; "), f"{name} --{long}: {help}"
            assert shorts == ([VOCABULARY[key].short] if VOCABULARY[key].short else [])
    meanings = [flag.meaning for flag in VOCABULARY.values()]
    assert len(set(meanings)) == len(meanings)
    shorts = [flag.short for flag in VOCABULARY.values() if flag.short]
    assert len(set(shorts)) == len(shorts)


def test_the_names_the_issue_found_twice_are_gone(contexts):
    """The environment deployed to was --env and --to-env, the verifying one --env and
    --source, a version --version and --to."""
    every = {long for ctx in contexts.values() for long, _, _ in flags(ctx)}
    assert not every & {"to-env", "source", "to"}
    assert {"env", "prod-env", "test-env", "version"} <= every
    for name in ("deploy", "rollback", "history", "deliver", "watch", "report", "status", "lock"):
        assert "env" in {long for long, _, _ in flags(contexts[name])}, name


def test_help_texts_the_issue_found_wrong(contexts):
    history = dict((long, help) for long, _, help in flags(contexts["history"]))
    assert "deploy to" not in history["env"]
    assert "to update" not in VOCABULARY["service"].meaning
    # `inv --list` sorts by name: no step claims a number there.
    assert not any(
        ns.tasks[step].__doc__.startswith("Step")
        for step in ("checkout", "unit", "build", "staging", "publish", "prodlike", "prodtest")
    )
    assert ns.tasks["images"].name == "images"  # `inv -l -F json` named it build-images


def test_json_on_every_task_that_prints_tables(contexts):
    for name in ("status", "history", "deliver", "deploy", "rollback", "services", "lock", "watch"):
        assert "json" in {long for long, _, _ in flags(contexts[name])}, name


def test_help_text_adds_what_the_task_means():
    assert help_text("env", "default prod") == VOCABULARY["env"].meaning + "; default prod"


def readme_table(header: str) -> list[list[str]]:
    """The rows of the README's table whose header line is `header`, as cells."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(header) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def test_the_readme_names_every_flag_and_each_tasks_env_default(contexts):
    flags_table = {
        row[0].strip("`"): row[1].strip("`") for row in readme_table("| flag | short | meaning |")
    }
    for key, flag in VOCABULARY.items():
        long = "--" + key.replace("_", "-")
        if flag.short:  # every flag with a short form is in the table, with that short form
            assert flags_table.get(long) == f"-{flag.short}", long
    defaults, checked = {}, set()
    for tasks, default in readme_table("| task | `--env` default |"):
        for name in re.findall(r"`([a-z]+)`", tasks):
            defaults[name] = default
    for name, ctx in contexts.items():
        if "--env" not in ctx.flags:
            continue
        checked.add(name)
        wanted = ctx.flags["--env"].default  # what Invoke gives the task without --env
        cell = defaults[name]
        assert (
            cell.startswith(f"`{wanted}`")
            if wanted
            else ("every environment" in cell or "NODES" in cell)
        ), (name, wanted, cell)
    assert {"deliver", "deploy", "status", "env", "unit"} <= checked
