"""Named steps -> results: run them in order, stop at the first failure, run a step beside the
one before it where that is safe, and undo it when that one fails. Knows nothing of Docker."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from . import interrupt
from .interrupt import Interrupted
from .log import Log

Step = Callable[[], str]  # does the work, returns a one-line detail, raises StepFailed
Undo = Callable[["StepResult"], None]


class StepFailed(RuntimeError):
    def __init__(self, detail: str, output_tail: str = ""):
        super().__init__(detail)
        self.output_tail = output_tail


@dataclass(frozen=True)
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    output_tail: str = ""
    skipped: bool = False
    interrupted: bool = False  # stopped by a signal while it ran (failed, detail "interrupted")
    started: float | None = None  # seconds since the run began (0.1 s); None outside a run

    @property
    def status(self) -> str:
        if self.interrupted:
            return "interrupted"
        return "skipped" if self.skipped else "ok" if self.ok else "FAILED"

    @property
    def failed(self) -> bool:
        return not (self.ok or self.skipped)


class RunInterrupted(Interrupted):
    """Steps stopped by a signal: `results` are the steps so far, the interrupted one last
    (then the ones not run); `record` what the run wrote about itself (a history entry)."""

    def __init__(self, signum: int, results: list[StepResult]):
        super().__init__(signum)
        self.results = results
        self.record: dict | None = None


def signum_of(exc: KeyboardInterrupt) -> int:
    """The signal behind an interruption: SIGINT for a plain KeyboardInterrupt."""
    return getattr(exc, "signum", signal.SIGINT)


def beside(fn: Callable, *args, **kwargs) -> Future:
    """Start `fn` on a thread of its own; the caller goes on and waits on the future later."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def offset(origin: float | None) -> float | None:
    """Seconds from `origin` (the run's time.monotonic() at its start) to now, to 0.1 s."""
    return None if origin is None else round(time.monotonic() - origin, 1)


def attempt(
    name: str, step: Step, dry_run: bool = False, origin: float | None = None
) -> StepResult:
    """One step with its timing (and its start since `origin`, when given); a failure becomes
    a failed StepResult, Ctrl-C propagates."""
    start, started = time.monotonic(), offset(origin)
    try:
        detail = step()
        if dry_run:
            detail = f"dry run, not done: {detail}"
        return StepResult(name, True, time.monotonic() - start, detail, started=started)
    except StepFailed as exc:
        return StepResult(
            name, False, time.monotonic() - start, str(exc), exc.output_tail, started=started
        )
    except Exception as exc:  # an engine or API error: still a failed step, with its reason
        return StepResult(
            name,
            False,
            time.monotonic() - start,
            f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
            started=started,
        )


def run_step(
    name: str, step: Step, progress, dry_run: bool = False, origin: float | None = None
) -> StepResult:
    """One step shown by `progress`; a signal raises RunInterrupted with this step's result."""
    progress.step(name)
    start, started = time.monotonic(), offset(origin)
    try:
        result = attempt(name, step, dry_run, origin)
    except RunInterrupted:
        raise
    except KeyboardInterrupt as exc:
        result = StepResult(
            name, False, time.monotonic() - start, "interrupted", interrupted=True, started=started
        )
        progress.done(result)
        raise RunInterrupted(signum_of(exc), [result]) from exc
    progress.done(result)
    return result


def run_steps(
    names: Sequence[str],
    steps: Mapping[str, Step],
    progress,
    *,
    overlap: Mapping[str, tuple[str, Undo]] | None = None,
    dry_run: bool = False,
    log: Log = print,
) -> list[StepResult]:
    """Run the named steps in order; the first failure stops the run, the rest are skipped.
    overlap: a step -> (the step after it that does not need its result, how to undo that one
    when the first fails): the second runs beside the first when both are asked for.
    Each result's `started` is its offset from the start of this call."""
    origin = time.monotonic()
    overlap = overlap or {}
    results: list[StepResult] = []
    ahead: dict[str, tuple[Future, Undo]] = {}  # step started beside the previous one
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        for i, name in enumerate(names):
            if results and (results[-1].failed or results[-1].skipped):
                if name in ahead:  # it ran beside the step that failed: undo it
                    _undo(name, *ahead.pop(name), log)
                results.append(not_run(name, offset(origin)))
                continue
            try:
                if name in ahead:
                    result = ahead.pop(name)[0].result()
                    progress.done(result)
                    results.append(result)
                    continue
                if name in overlap and i + 1 < len(names) and names[i + 1] == overlap[name][0]:
                    partner, undo = overlap[name]
                    ahead[partner] = (
                        pool.submit(attempt, partner, steps[partner], dry_run, origin),
                        undo,
                    )
                results.append(run_step(name, steps[name], progress, dry_run, origin))
            except KeyboardInterrupt as exc:
                # What ran beside the interrupted step is undone too; the rest is not run.
                for other, (future, undo) in ahead.items():
                    _undo(other, future, undo, log)
                stopped = (
                    exc.results
                    if isinstance(exc, RunInterrupted)
                    else [
                        StepResult(
                            name,
                            False,
                            0.0,
                            "interrupted",
                            interrupted=True,
                            started=offset(origin),
                        )
                    ]
                )
                results += stopped + [
                    not_run(n, offset(origin)) for n in names[len(results) + len(stopped) :]
                ]
                raise RunInterrupted(signum_of(exc), results) from exc
    finally:
        # After a signal, a step still running beside is not waited for (it was told to stop).
        pool.shutdown(wait=not interrupt.stopping())
    return results


def not_run(name: str, started: float | None = None) -> StepResult:
    return StepResult(name, False, 0.0, "not run", skipped=True, started=started)


def _undo(name: str, future: Future, undo: Undo, log: Log) -> None:
    """Undo a step that ran beside one that failed, once it ends; after a signal, only if it
    ends within the clean-up's time."""
    try:
        undo(future.result(timeout=interrupt.remaining()))
    except FutureTimeout:
        log(f"left behind: {name}, still running beside the interrupted step")
    except Exception as exc:  # the run already failed; say what is left, do not hide why
        log(f"could not undo {name}: {exc}")
