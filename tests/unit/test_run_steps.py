"""run_steps: order, stopping at the first failure, and the build beside the unit tests in a
whole run (fake steps; the real overlap is exercised by tests/integration/test_3_deliver.py)."""
from __future__ import annotations

import threading
import time

import pytest

from cdtasks import pipeline
from cdtasks.config import load
from cdtasks.pipeline import Release, StepFailed


class Quiet:
    def __init__(self):
        self.done_names = []

    def step(self, name):
        pass

    def done(self, result):
        self.done_names.append(result.name)


@pytest.fixture
def steps(monkeypatch, tmp_path):
    """Fake steps recording when they start and end; `fail` names steps that fail."""
    events, fail, undone = [], set(), []

    def fake(name, seconds):
        def step(r):
            events.append((name, "start", threading.current_thread() is threading.main_thread()))
            time.sleep(seconds)
            events.append((name, "end"))
            if name in fail:
                raise StepFailed(f"{name} failed")
            return f"{name} ok"
        return step

    monkeypatch.setattr(pipeline, "STEP_FUNCS", {
        "checkout": fake("checkout", 0), "unit": fake("unit", 0.3), "build": fake("build", 0.1),
        "staging": fake("staging", 0)})
    monkeypatch.setitem(pipeline.OVERLAP, "unit", ("build", lambda r, res: undone.append(res)))
    settings = load("test", {"STATE_DIR": str(tmp_path)}, environ={})
    return events, fail, undone, settings


NAMES = ["checkout", "unit", "build", "staging"]


def test_a_whole_run_builds_beside_the_unit_tests(steps):
    events, _, undone, settings = steps
    progress = Quiet()
    results = pipeline.run_steps(Release(settings, "", version="1.1", defer_down=True), NAMES, progress)
    assert [r.name for r in results] == NAMES and all(r.ok for r in results)
    order = [e[:2] for e in events]
    # The build started before the unit tests ended, off the main thread.
    assert order.index(("build", "start")) < order.index(("unit", "end"))
    assert ("build", "start", False) in events
    assert progress.done_names == NAMES  # reported in the pipeline's order all the same
    assert undone == []


def test_failed_unit_tests_undo_the_build_and_skip_it(steps):
    events, fail, undone, settings = steps
    fail.add("unit")
    results = pipeline.run_steps(Release(settings, "", version="1.1", defer_down=True), NAMES, Quiet())
    assert [(r.name, r.ok, r.skipped) for r in results] == [
        ("checkout", True, False), ("unit", False, False), ("build", False, True),
        ("staging", False, True)]
    assert [u.name for u in undone] == ["build"] and undone[0].ok  # it had run: undone


def test_steps_run_one_after_another_outside_a_whole_run(steps):
    events, _, _, settings = steps
    for release in (Release(settings, "", version="1.1"),  # a task chaining steps itself
                    Release(settings, "", version="1.1", defer_down=True, dry_run=True)):
        events.clear()
        pipeline.run_steps(release, NAMES, Quiet())
        order = [e[:2] for e in events]
        assert order.index(("build", "start")) > order.index(("unit", "end"))
