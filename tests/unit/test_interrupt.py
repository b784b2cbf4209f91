"""Every way a run is stopped takes one path: SIGINT, SIGTERM and SIGHUP raise `Interrupted`
once, with the shell's exit code; later signals do not break off the clean-up."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cdtasks.interrupt import Interrupted, deferred, exit_code, signals_as_interrupt


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


def test_a_second_signal_does_not_break_off_the_clean_up():
    said, cleaned = [], []
    with pytest.raises(Interrupted) as err, signals_as_interrupt(said.append):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # would abort the clean-up below
            cleaned.append(True)
    assert cleaned == [True]
    assert err.value.signum == signal.SIGTERM
    assert len(said) == 1 and "SIGINT received: still cleaning up after SIGTERM" in said[0]


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
