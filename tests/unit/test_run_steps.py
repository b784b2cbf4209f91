"""delivery.run (the runner with delivery's steps): order, stopping at the first failure, and the build beside the unit tests in a
whole run (fake steps; the real overlap is exercised by tests/integration/test_3_deliver.py)."""

from __future__ import annotations

import threading
import time

import pytest

from cdtasks import delivery, runner
from cdtasks.checkout import Checkout
from cdtasks.config import load
from cdtasks.delivery import Delivery
from cdtasks.runner import StepFailed


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

    monkeypatch.setattr(
        delivery,
        "STEP_FUNCS",
        {
            "checkout": fake("checkout", 0),
            "unit": fake("unit", 0.3),
            "build": fake("build", 0.1),
            "staging": fake("staging", 0),
        },
    )
    monkeypatch.setitem(delivery.OVERLAP, "unit", ("build", lambda r, res: undone.append(res)))
    settings = load("test", {"STATE_DIR": str(tmp_path)}, environ={})
    return events, fail, undone, settings


NAMES = ["checkout", "unit", "build", "staging"]


# deliver passes its STEPS tuple, a step task a list: the overlap must not depend on which.
@pytest.mark.parametrize("names", [NAMES, tuple(NAMES)], ids=["list", "tuple"])
def test_a_whole_run_builds_beside_the_unit_tests(steps, names):
    events, _, undone, settings = steps
    progress = Quiet()
    results = delivery.run(Delivery(settings, "", version="1.1", defer_down=True), names, progress)
    assert [r.name for r in results] == NAMES and all(r.ok for r in results)
    order = [e[:2] for e in events]
    # The build started before the unit tests ended, off the main thread.
    assert order.index(("build", "start")) < order.index(("unit", "end"))
    assert ("build", "start", False) in events
    assert progress.done_names == NAMES  # reported in the pipeline's order all the same
    assert undone == []


def test_the_delivery_s_own_step_list_puts_the_build_right_after_the_unit_tests():
    unit = delivery.STEPS.index("unit")
    assert isinstance(delivery.STEPS, tuple)  # what the parametrized test above covers
    assert delivery.STEPS[unit + 1] == delivery.OVERLAP["unit"][0]


def test_failed_unit_tests_undo_the_build_and_skip_it(steps):
    events, fail, undone, settings = steps
    fail.add("unit")
    results = delivery.run(Delivery(settings, "", version="1.1", defer_down=True), NAMES, Quiet())
    assert [(r.name, r.ok, r.skipped) for r in results] == [
        ("checkout", True, False),
        ("unit", False, False),
        ("build", False, True),
        ("staging", False, True),
    ]
    assert [u.name for u in undone] == ["build"] and undone[0].ok  # it had run: undone


def test_steps_run_one_after_another_outside_a_whole_run(steps):
    events, _, _, settings = steps
    for d in (
        Delivery(settings, "", version="1.1"),  # a task chaining steps itself
        Delivery(settings, "", version="1.1", defer_down=True, dry_run=True),
    ):
        events.clear()
        delivery.run(d, NAMES, Quiet())
        order = [e[:2] for e in events]
        assert order.index(("build", "start")) > order.index(("unit", "end"))


def test_a_teardown_runs_beside_the_next_steps_and_is_waited_for(monkeypatch, tmp_path):
    settings = load("test", {"STATE_DIR": str(tmp_path)}, environ={})
    started, release_down = threading.Event(), threading.Event()
    threads = []

    def slow_down(r, quiet=False):
        threads.append(threading.current_thread() is threading.main_thread())
        started.set()
        release_down.wait(5)
        r.compose_left = False

    monkeypatch.setattr(Checkout, "take_down", slow_down)
    r = Delivery(settings, "", version="1.1", defer_down=True, compose_left=True)
    r.tear_down_beside()
    assert started.wait(5) and threads == [False]  # off the main thread; the caller went on
    assert r.teardown is not None and not r.teardown.done()
    release_down.set()
    r.torn_down()
    assert r.teardown is None and not r.compose_left


def test_a_failed_teardown_is_reported_and_left_for_the_clean_up(monkeypatch, tmp_path):
    settings = load("test", {"STATE_DIR": str(tmp_path)}, environ={})
    logged = []

    def broken_down(r, quiet=False):
        raise RuntimeError("engine gone")

    monkeypatch.setattr(Checkout, "take_down", broken_down)
    r = Delivery(settings, "", version="1.1", defer_down=True, compose_left=True, log=logged.append)
    r.project = "go-demo-1-1-abc"
    r.tear_down_beside()
    r.torn_down()
    assert r.compose_left  # still up: cleanup() takes it down again
    assert logged == ["could not take the compose project go-demo-1-1-abc down: engine gone"]


def test_a_dry_run_lists_the_teardown_in_order(monkeypatch, tmp_path):
    settings = load("test", {"STATE_DIR": str(tmp_path)}, environ={})
    calls = []
    monkeypatch.setattr(
        Checkout,
        "take_down",
        lambda r: calls.append(threading.current_thread() is threading.main_thread()),
    )
    r = Delivery(settings, "", version="1.1", defer_down=True, dry_run=True, compose_left=True)
    r.tear_down_beside()
    assert calls == [True] and r.teardown is None


def test_each_result_says_when_its_step_started_in_the_run(steps):
    """`started`: seconds since the run began; the build beside the unit tests starts with them,
    the next step after both; skipped steps when they were skipped."""
    events, fail, _, settings = steps
    results = delivery.run(Delivery(settings, "", version="1.1", defer_down=True), NAMES, Quiet())
    at = {r.name: r for r in results}
    assert at["checkout"].started == pytest.approx(0.0, abs=0.1)
    assert abs(at["build"].started - at["unit"].started) <= 0.2  # beside each other
    assert at["build"].started < at["unit"].started + at["unit"].seconds
    assert at["staging"].started >= round(at["unit"].started + at["unit"].seconds, 1) - 0.1
    assert all(round(r.started, 1) == r.started for r in results)

    fail.add("unit")
    results = delivery.run(Delivery(settings, "", version="1.1", defer_down=True), NAMES, Quiet())
    unit, build, staging = results[1:]
    assert build.skipped and staging.skipped
    assert staging.started >= build.started >= round(unit.started + unit.seconds, 1) - 0.1


def test_a_step_run_alone_has_no_start_offset_unless_given_its_runs_start():
    assert runner.attempt("one", lambda: "done").started is None
    origin = time.monotonic() - 2.0
    assert runner.attempt("one", lambda: "done", origin=origin).started == pytest.approx(
        2.0, abs=0.2
    )


def test_a_signal_in_a_step_reports_it_interrupted_and_the_rest_not_run():
    import signal

    from cdtasks.interrupt import Interrupted
    from cdtasks.runner import RunInterrupted, run_steps

    def stopped():
        raise Interrupted(signal.SIGTERM)

    progress = Quiet()
    with pytest.raises(RunInterrupted) as caught:
        run_steps(
            ["a", "b", "c"], {"a": lambda: "fine", "b": stopped, "c": lambda: "never"}, progress
        )
    assert caught.value.signum == signal.SIGTERM
    assert [(r.name, r.status) for r in caught.value.results] == [
        ("a", "ok"),
        ("b", "interrupted"),
        ("c", "skipped"),
    ]
    assert caught.value.results[1].detail == "interrupted"
    assert progress.done_names == ["a", "b"]
