"""Every way a run is stopped takes one path: SIGINT, SIGTERM and SIGHUP raise `Interrupted`
once, with the shell's exit code; the clean-up after it is bounded, a second signal ends it at
once, and what it leaves is named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdtasks.interrupt import (
    Interrupted,
    deferred,
    exit_code,
    remaining,
    signals_as_interrupt,
    stop_on_signal,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_each_signal_raises_interrupted_with_its_exit_code(signum):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as err, signals_as_interrupt():
        os.kill(os.getpid(), signum)
    assert err.value.signum == signum
    assert exit_code(err.value) == 128 + signum
    assert signal.getsignal(signum) == before  # restored


def test_a_plain_keyboard_interrupt_is_130():
    assert exit_code(KeyboardInterrupt()) == 130


# A process of its own: the cut-short clean-up ends it with os._exit.
CLEANUP = """
import os, signal, sys, time
from cdtasks import interrupt
interrupt.CLEANUP_BOUND = float(sys.argv[1])
untrack = interrupt.track(lambda: "compose project p1 on node-1")
interrupt.track(lambda: "")  # released already: not named
try:
    with interrupt.signals_as_interrupt(print):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            print("cleaning up", interrupt.remaining() <= float(sys.argv[1]), flush=True)
            if sys.argv[2] == "again":
                os.kill(os.getpid(), signal.SIGINT)
            time.sleep(float(sys.argv[3]))
            untrack()
            print("cleaned up", flush=True)
except interrupt.Interrupted as exc:
    print("exit", exc.exit_code)
    sys.exit(exc.exit_code)
"""


def _cleanup(bound: float, again: bool, takes: float) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CLEANUP, str(bound), "again" if again else "once", str(takes)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    return proc.returncode, proc.stdout, time.monotonic() - start


def test_a_clean_up_within_the_bound_runs_to_its_end():
    code, out, _ = _cleanup(5, again=False, takes=0.2)
    assert code == 143 and "cleaning up True" in out and "cleaned up" in out
    assert "left behind" not in out


def test_a_clean_up_over_the_bound_is_cut_short_naming_what_is_left():
    code, out, took = _cleanup(1, again=False, takes=30)
    assert code == 143 and took < 10, out
    assert "the clean-up took over 1s: stopping now" in out
    assert out.count("left behind: ") == 1 and "left behind: compose project p1 on node-1" in out
    assert "cleaned up" not in out


def test_a_second_signal_ends_the_clean_up_at_once():
    code, out, took = _cleanup(30, again=True, takes=30)
    assert code == 143 and took < 10, out  # the first signal's exit code
    assert "SIGINT received during the clean-up: stopping now" in out
    assert "left behind: compose project p1 on node-1" in out and "cleaned up" not in out


def test_stoppers_are_told_at_the_first_signal_only_within_their_block():
    told = []
    with pytest.raises(Interrupted), signals_as_interrupt():
        with stop_on_signal(lambda: told.append("outside")):
            pass
        with stop_on_signal(lambda: told.append("inside")):
            os.kill(os.getpid(), signal.SIGTERM)
    assert told == ["inside"]
    assert remaining(7.0) == 7.0  # after the block: no clean-up is running


def test_nested_blocks_keep_the_outer_handler():
    with pytest.raises(Interrupted), signals_as_interrupt():
        outer = signal.getsignal(signal.SIGTERM)
        with signals_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is outer
        assert signal.getsignal(signal.SIGTERM) is outer
        os.kill(os.getpid(), signal.SIGTERM)


def test_an_ignored_signal_stays_ignored():
    """`nohup inv watch &`: SIGHUP is ignored before the tool starts, and stays so."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # nothing happens
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the others are handled
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_deferred_write_is_delivered_after_it(signum):
    written = []
    with pytest.raises(Interrupted) as err, signals_as_interrupt():
        outer = signal.getsignal(signum)
        with deferred():
            os.kill(os.getpid(), signum)
            os.kill(os.getpid(), signal.SIGTERM)  # a second one: only the first is raised
            time.sleep(0.05)  # the handler would run here, mid-write
            written.append("finished")
        assert signal.getsignal(signum) is outer  # restored before it is raised again
        written.append("after")  # not reached: the signal is raised as the block ends
    assert written == ["finished"]
    assert err.value.signum == signum


def test_a_deferred_block_without_a_signal_changes_nothing():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with deferred():
        pass
    assert {s: signal.getsignal(s) for s in before} == before


def test_deferred_keeps_an_ignored_signal_ignored():
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with deferred():
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
