"""Named steps -> results: run them in order, stop at the first failure, run a step beside the
one before it where that is safe, and undo it when that one fails. Knows nothing of Docker."""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

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

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else "ok" if self.ok else "FAILED"

    @property
    def failed(self) -> bool:
        return not (self.ok or self.skipped)


def beside(fn: Callable, *args, **kwargs) -> Future:
    """Start `fn` on a thread of its own; the caller goes on and waits on the future later."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def attempt(name: str, step: Step, dry_run: bool = False) -> StepResult:
    """One step with its timing; a failure becomes a failed StepResult, Ctrl-C propagates."""
    start = time.monotonic()
    try:
        detail = step()
        if dry_run:
            detail = f"dry run, not done: {detail}"
        return StepResult(name, True, time.monotonic() - start, detail)
    except StepFailed as exc:
        return StepResult(name, False, time.monotonic() - start, str(exc), exc.output_tail)
    except Exception as exc:  # an engine or API error: still a failed step, with its reason
        return StepResult(name, False, time.monotonic() - start,
                          f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


def run_step(name: str, step: Step, progress, dry_run: bool = False) -> StepResult:
    progress.step(name)
    start = time.monotonic()
    try:
        result = attempt(name, step, dry_run)
    except KeyboardInterrupt:
        progress.done(StepResult(name, False, time.monotonic() - start, "interrupted"))
        raise
    progress.done(result)
    return result


def run_steps(names: Sequence[str], steps: Mapping[str, Step], progress, *,
              overlap: Mapping[str, tuple[str, Undo]] | None = None, dry_run: bool = False,
              log: Log = print) -> list[StepResult]:
    """Run the named steps in order; the first failure stops the run, the rest are skipped.
    overlap: a step -> (the step after it that does not need its result, how to undo that one
    when the first fails): the second runs beside the first when both are asked for."""
    overlap = overlap or {}
    results: list[StepResult] = []
    ahead: dict[str, tuple[Future, Undo]] = {}  # step started beside the previous one
    with ThreadPoolExecutor(max_workers=1) as pool:
        for i, name in enumerate(names):
            if results and (results[-1].failed or results[-1].skipped):
                if name in ahead:  # it ran beside the step that failed: undo it
                    _undo(name, *ahead.pop(name), log)
                results.append(StepResult(name, False, 0.0, "not run", skipped=True))
                continue
            if name in ahead:
                result = ahead.pop(name)[0].result()
                progress.done(result)
                results.append(result)
                continue
            partner, undo = overlap.get(name, (None, None))
            if partner and names[i + 1:i + 2] == [partner]:
                ahead[partner] = (pool.submit(attempt, partner, steps[partner], dry_run), undo)
            results.append(run_step(name, steps[name], progress, dry_run))
    return results


def _undo(name: str, future: Future, undo: Undo, log: Log) -> None:
    try:
        undo(future.result())
    except Exception as exc:  # the run already failed; say what is left, do not hide why
        log(f"could not undo {name}: {exc}")
