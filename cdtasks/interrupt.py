"""One meaning for every way a run is stopped: Ctrl-C (SIGINT), SIGTERM (what a CI server sends
when a job is aborted) and SIGHUP (a closed terminal) all raise `Interrupted` in the main thread,
so every task takes the same path: clean up, record, exit 128 + the signal's number.

The clean-up after a signal is bounded: CLEANUP_BOUND seconds after it (or at once on a second
signal) the process exits anyway, first naming, one line each, what it leaves behind (what the
run `track`s: a compose project, a lock). Subprocesses registered with `stop_on_signal` (a build
beside the interrupted step) are told to stop when the first signal arrives. A signal the caller
set to be ignored (`nohup`, `&` in a script) stays ignored. `deferred` holds these signals back
across a write that must be whole (the last record of a run) and delivers them right after it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import overload

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CLEANUP_BOUND = 30.0  # seconds the clean-up after a signal may take before the process exits


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_code` is the shell's convention, 128 + signal."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for a plain KeyboardInterrupt (Ctrl-C), 128 + signal for an `Interrupted`."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


class _Handler:
    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.first: int | None = None
        self.watchdog: threading.Timer | None = None

    def __call__(self, signum, frame) -> None:
        if self.first is None:
            self.first = signum
            _state.deadline = time.monotonic() + CLEANUP_BOUND
            self.watchdog = threading.Timer(
                CLEANUP_BOUND, self.abandon, (f"the clean-up took over {CLEANUP_BOUND:.0f}s",)
            )
            self.watchdog.daemon = True
            self.watchdog.start()
            for stop in list(_stoppers.values()):
                with contextlib.suppress(Exception):
                    stop()
            raise Interrupted(signum)
        self.abandon(f"{signal.Signals(signum).name} received during the clean-up")

    def abandon(self, why: str) -> None:
        """End the process now (exit 128 + the first signal), naming what is left behind."""
        left = left_behind()
        self.say(f"{why}: stopping now" + ("" if left else "; nothing known left behind"))
        for line in left:
            self.say(f"left behind: {line}")
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(128 + (self.first or signal.SIGINT))

    def cancel(self) -> None:
        if self.watchdog:
            self.watchdog.cancel()


class _State:
    deadline: float | None = None  # time.monotonic() by which the clean-up must end


_state = _State()
_keys = itertools.count()
_tracked: dict[int, Callable[[], str]] = {}
_stoppers: dict[int, Callable[[], None]] = {}


@overload
def remaining(default: float) -> float: ...
@overload
def remaining(default: float | None = None) -> float | None: ...
def remaining(default: float | None = None) -> float | None:
    """Seconds left for the clean-up after a signal (at least 1); `default` when no signal
    came: what a call made during a clean-up may wait at most."""
    if _state.deadline is None:
        return default
    left = max(1.0, _state.deadline - time.monotonic())
    return left if default is None else min(default, left)


def stopping() -> bool:
    """A signal came: the run is cleaning up."""
    return _state.deadline is not None


def track(describe: Callable[[], str]) -> Callable[[], None]:
    """Until the returned function is called, `describe()` says what would be left behind if
    the process stopped now ("" when nothing): named when the clean-up is cut short."""
    key = next(_keys)
    _tracked[key] = describe

    def untrack() -> None:
        _tracked.pop(key, None)

    return untrack


def left_behind() -> list[str]:
    """What the tracked things say they would leave behind now, one line each."""
    lines = []
    for describe in list(_tracked.values()):
        with contextlib.suppress(Exception):
            lines.append(describe())
    return [line for line in lines if line]


@contextlib.contextmanager
def stop_on_signal(stop: Callable[[], None]) -> Iterator[None]:
    """Within the block, the first signal calls `stop()` (from the signal handler: it must
    return at once), for work off the main thread that the signal does not reach."""
    key = next(_keys)
    _stoppers[key] = stop
    try:
        yield
    finally:
        _stoppers.pop(key, None)


_active = threading.local()


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@contextlib.contextmanager
def signals_as_interrupt(say: Callable[[str], None] = _stderr) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise `Interrupted` once; the previous handlers
    are restored after. Outside the main thread (Python allows handlers only there), and when
    an enclosing block already handles them, it changes nothing."""
    if threading.current_thread() is not threading.main_thread() or getattr(_active, "on", False):
        yield
        return
    handler = _Handler(say)
    previous = {
        s: signal.signal(s, handler) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN
    }
    _active.on = True
    try:
        yield
    finally:
        handler.cancel()
        _state.deadline = None
        _active.on = False
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP wait: a record written there is written whole (a
    `finished` record cut off leaves its commit "unfinished" for good). The first signal that
    arrived is raised again right after the block, to whatever handles it outside (then an
    `Interrupted` propagates from the `with`). Outside the main thread it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, frame: held.append(signum))
        for s in SIGNALS
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if held:
            signal.raise_signal(held[0])
