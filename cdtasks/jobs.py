"""A release's jobs as gates: a stack's replicated-job on an image the release publishes (a
schema migration) runs to completion on the new image before the release's other services
update; one that fails or runs over JOB_TIMEOUT stops the release with the last lines of its
output. Swarm runs a job again whenever its spec changes (a new image): the tasks of that run,
its job iteration, say how it went."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from . import services
from .gateway import Gateway, Service, Task, engine_time
from .log import Log

FAILED = ("failed", "rejected")  # a task that ended without completing
ENDED = ("complete", "shutdown", "remove", "orphaned", *FAILED)
TAIL = 10  # lines of the job's output in a failure's message
PROGRESS_EVERY = 10.0  # seconds between "job running" lines


class JobFailed(RuntimeError):
    """A job failed or ran over its time: the message ends with its last output line,
    `tail` has its last TAIL lines."""

    def __init__(self, detail: str, tail: str):
        last = tail.splitlines()[-1] if tail else "(it printed nothing)"
        super().__init__(f"{detail}; last output: {last}")
        self.tail = tail


@dataclass(frozen=True)
class JobState:
    state: str  # running | complete | failed | stalled (failed, no task left: Swarm may restart)
    detail: str

    @property
    def said(self) -> str:
        """In a state line: a job that ended runs no task by design, so not "no replica"."""
        return {"complete": "job completed", "failed": "job failed"}.get(self.state, "job running")


def state_of(
    tasks: Sequence[Task], completions: int | None, condition: str, max_attempts: int
) -> JobState:
    """How one run of a job stands from its tasks (those of its job iteration). `completions`:
    how many must complete (None: a global job, every task it made); `condition` and
    `max_attempts`: its restart policy, which decides when Swarm gives up on a failed task
    (after MaxAttempts restarts; never with 0, unless the condition is none)."""
    done = sum(1 for t in tasks if t.state == "complete")
    failed = [t for t in tasks if t.state in FAILED]
    live = [t for t in tasks if t.state not in ENDED]
    wanted = completions if completions is not None else max(1, len(tasks) - len(failed))
    if tasks and done >= wanted and not live:
        return JobState("complete", f"{done}/{wanted} completed")
    if failed:
        last = failed[-1]
        reason = last.error or last.message or last.state
        code = f" (exit {last.exit_code})" if last.exit_code else ""
        detail = f"{len(failed)} failed, last: {reason}{code}"
        if condition == "none" or (max_attempts and len(failed) > max_attempts):
            return JobState("failed", detail)
        if not live:  # Swarm makes the next task when it takes the failure in: look again
            return JobState("stalled", detail)
    return JobState("running", f"{done}/{wanted} completed")


def current_run(svc: Service, tasks: Sequence[Task]) -> tuple[list[Task], JobState]:
    """The tasks of a job's current run among its `tasks` (those of the spec's job iteration),
    and how that run stands."""
    mine = [t for t in tasks if t.job_iteration == svc.job_iteration]
    return mine, state_of(mine, svc.replicas, svc.restart_condition, svc.max_attempts)


def run(
    gw: Gateway,
    name: str,
    image: str,
    timeout: float,
    log: Log,
    before: Callable[[], None] = lambda: None,
    labels: Mapping[str, str] | None = None,
    poll: float = 1.0,
) -> str:
    """The job's spec set to `image` (Swarm runs it again), then followed until its run
    completes: a detail line, or JobFailed when it fails (Swarm gave up restarting it) or runs
    over `timeout`, with its last output lines. An image it already runs is not run again.
    On failure the job is left as it is: the caller puts its previous spec back (which also
    stops a task that still runs)."""
    since = int(gw.clock().timestamp())  # the manager's clock: logs are filtered by it
    if not services.update_image(gw, name, image, before, labels):
        return f"{name}: job already ran on {image}"
    start = time.monotonic()
    said = start
    stalled = False
    while True:
        svc = services.existing(gw, name)
        every = gw.tasks(svc.id)
        mine, now = current_run(svc, every)
        # An earlier run's task Swarm is still stopping (a hanging one, after a timeout, within
        # its stop grace period): done only when nothing of the job runs but this run's.
        stopping = any(t.job_iteration != svc.job_iteration and t.state not in ENDED for t in every)
        elapsed = time.monotonic() - start
        if now.state == "complete" and not stopping:
            log(f"{name}: job completed on {image} ({elapsed:.0f}s)")
            return f"{name} ran to completion on {image} ({elapsed:.1f}s)"
        if now.state == "failed" or (now.state == "stalled" and stalled):
            raise JobFailed(
                f"job {name} failed on {image}: {now.detail}",
                output(gw, name, since, last_attempt(mine)),
            )
        stalled = now.state == "stalled"
        if elapsed > timeout:
            raise JobFailed(
                f"job {name} did not complete on {image} within {timeout:.0f}s "
                f"(JOB_TIMEOUT): {now.detail}",
                output(gw, name, since, last_attempt(mine)),
            )
        if time.monotonic() - said >= PROGRESS_EVERY:
            said = time.monotonic()
            log(f"{name}: job running ({elapsed:.0f}s)")
        time.sleep(poll)


def last_attempt(tasks: Sequence[Task]) -> Task | None:
    """The run's task made last: Swarm makes a new task for each restart of a failed one, so
    this is its last attempt (None: Swarm made none yet)."""
    return max(tasks, key=lambda t: engine_time(t.created_at), default=None)


def output(gw: Gateway, name: str, since: int, attempt: Task | None = None) -> str:
    """The job's last TAIL output lines since `since` (a Unix time), for a failure's report:
    those of `attempt` alone when given (the service's log interleaves every attempt's lines,
    the same failure several times over)."""
    only = None if attempt is None else [attempt.id]
    try:
        found = services.logs(gw, name, since=since, tasks=only, ordered=True)
        lines = [_message(line) for line in found]
    except Exception as exc:  # the failure stays the headline; say why its output is missing
        return f"(its output could not be read: {str(exc).splitlines()[0][:200]})"
    return "\n".join([line for line in lines if line.strip()][-TAIL:])


def _message(line: str) -> str:
    """A log line without its task prefix (`service.1.abc@node | `)."""
    _, sep, message = line.partition(" | ")
    return message if sep else line
