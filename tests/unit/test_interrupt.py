"""Every way a run is stopped takes one path: SIGINT, SIGTERM and SIGHUP raise `Interrupted`
once, with the shell's exit code; later signals do not break off the clean-up."""
from __future__ import annotations

import os
import signal

import pytest

from cdtasks.interrupt import Interrupted, exit_code, signals_as_interrupt


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
