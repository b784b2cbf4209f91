"""One meaning for every way a run is stopped: Ctrl-C (SIGINT), SIGTERM (what a CI server sends
when a job is aborted) and SIGHUP (a closed terminal) all raise `Interrupted` in the main thread,
so every task takes the same path: clean up, record, exit 128 + the signal's number.

Once a run is interrupted, further signals do not break off its clean-up (a second Ctrl-C would
otherwise leave a compose project or a lock behind); they are counted and said, and SIGKILL still
stops the process at once. A signal the caller set to be ignored (`nohup`, `&` in a script)
stays ignored. `deferred` holds these signals back across a write that must be whole (the last
record of a run) and delivers them right after it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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

    def __call__(self, signum, frame) -> None:
        if self.first is None:
            self.first = signum
            raise Interrupted(signum)
        self.say(
            f"{signal.Signals(signum).name} received: still cleaning up after "
            f"{signal.Signals(self.first).name}; SIGKILL stops at once, leaving things behind"
        )


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
