"""Results as values: how a deployment ended (`Outcome`, the `result` of its history entry), and
the one table from outcomes, failed delivery steps and library errors to the exit codes the
README documents (its table lists them in this order). Light to import: every task module
reads it."""

from __future__ import annotations

from enum import StrEnum

BAD_INPUT, UNREACHABLE, CLUSTER, DRIFT = 2, 3, 4, 5
STEP_FAILED = 10  # + the failed step's position: checkout 11 ... prodtest 17
ROLLED_BACK, NOT_RECOVERED, LOCKED = 20, 21, 22
INTERRUPTED = 130  # Ctrl-C; SIGTERM 143, SIGHUP 129 (128 + the signal, interrupt.exit_code)


class Outcome(StrEnum):
    """A deployment's result. The values are what history records hold, on the cluster and in
    the local log, since the first version: records of any version load as these."""

    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled back"  # `inv rollback` went back and the production tests passed
    FAILED_ROLLED_BACK = "failed, rolled back"
    FAILED_NOT_RECOVERED = "failed, rollback failed"
    FAILED = "failed"  # nothing rolled back (`--no-rollback`, or no previous version)
    # A canary that failed its gate (production untouched); the record's text goes on with the
    # figure that failed: "canary aborted: 23.4 % errors > 1 % ...".
    CANARY_ABORTED = "canary aborted"
    INTERRUPTED = "interrupted"
    LOCK_LOST = "stopped, lock lost"
    STARTED = "started"  # the entry written before anything changes
    UNFINISHED = "unfinished"  # started, never finished, its lock gone (killed, machine died)
    RUNNING = "running"  # started, its lock still held

    @classmethod
    def of(cls, result: str) -> Outcome:
        """A record's `result` as an Outcome (a failure worded otherwise counts as not
        recovered, what a reader must assume)."""
        try:
            return cls(result)
        except ValueError:
            if result.startswith(f"{cls.CANARY_ABORTED}:"):
                return cls.CANARY_ABORTED
            return cls.FAILED_NOT_RECOVERED if result.startswith("failed") else cls.UNFINISHED

    @property
    def ok(self) -> bool:
        """The version wanted runs and its production tests passed."""
        return self in (Outcome.DEPLOYED, Outcome.ROLLED_BACK)

    @property
    def failed(self) -> bool:
        return self in (
            Outcome.FAILED_ROLLED_BACK,
            Outcome.FAILED_NOT_RECOVERED,
            Outcome.FAILED,
            Outcome.CANARY_ABORTED,
        )

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self, 0)


EXIT_CODES = {
    Outcome.FAILED_ROLLED_BACK: ROLLED_BACK,
    Outcome.CANARY_ABORTED: ROLLED_BACK,  # as the README says: production is as it was
    Outcome.FAILED_NOT_RECOVERED: NOT_RECOVERED,
    Outcome.FAILED: NOT_RECOVERED,
    Outcome.LOCK_LOST: LOCKED,
    Outcome.INTERRUPTED: INTERRUPTED,
}


def step_failed(position: int) -> int:
    """The exit code of a delivery whose step at `position` (0: checkout) failed."""
    return STEP_FAILED + 1 + position


def error_code(exc: BaseException) -> int | None:
    """The exit code of a library error (the first that matches), None for anything else."""
    from paramiko import SSHException

    from . import config, delivery, deployment, records
    from .compose import ContractError
    from .engine import EngineError
    from .gateway import APIFailure
    from .images import ImageError
    from .providers.base import ProviderError
    from .services import ServiceError
    from .stackfile import StackFileError
    from .stackplan import StackError
    from .swarm import SwarmError

    errors = (
        (config.ConfigError, BAD_INPUT),
        (delivery.DeliveryError, BAD_INPUT),
        (deployment.DeploymentError, BAD_INPUT),
        (ContractError, BAD_INPUT),
        (StackFileError, BAD_INPUT),
        (StackError, BAD_INPUT),
        (records.LockHeld, LOCKED),
        (records.LockLost, LOCKED),
        (EngineError, UNREACHABLE),
        (ProviderError, UNREACHABLE),
        (SwarmError, CLUSTER),
        (ServiceError, CLUSTER),
        (ImageError, CLUSTER),
        (SSHException, UNREACHABLE),
        # Last resort for an engine answer no library layer turned into its own error.
        (APIFailure, CLUSTER),
    )
    return next((code for error, code in errors if isinstance(exc, error)), None)
