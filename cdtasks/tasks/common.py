"""What every task module shares: loading settings, the exit codes, and turning library errors
into `Exit`. Imports stay light (no docker, paramiko, rich): `inv --list` loads every task
module, so the library is imported inside the tasks that use it."""
from __future__ import annotations

import functools
import signal
import sys

from invoke import Exit

from .. import config

# Exit codes, documented in the README (its table lists them in this order).
BAD_INPUT, UNREACHABLE, CLUSTER, DRIFT = 2, 3, 4, 5
STEP_FAILED = 10  # + the failed step's position: checkout 11 ... prodtest 17
ROLLED_BACK, NOT_RECOVERED, LOCKED = 20, 21, 22
INTERRUPTED = 130  # Ctrl-C; SIGTERM 143, SIGHUP 129 (128 + the signal, interrupt.exit_code)


def exit_code(exc: BaseException) -> int | None:
    """The exit code of a library error (the first that matches), None for anything else."""
    from docker.errors import DockerException
    from paramiko import SSHException

    from .. import delivery, deployment, records
    from ..engine import EngineError
    from ..images import ImageError
    from ..providers.base import ProviderError
    from ..services import ServiceError
    from ..swarm import SwarmError
    errors = ((config.ConfigError, BAD_INPUT), (delivery.DeliveryError, BAD_INPUT),
              (deployment.DeploymentError, BAD_INPUT), (records.LockHeld, LOCKED),
              (records.LockLost, LOCKED),
              (EngineError, UNREACHABLE), (ProviderError, UNREACHABLE), (SwarmError, CLUSTER),
              (ServiceError, CLUSTER), (ImageError, CLUSTER), (SSHException, UNREACHABLE),
              # Last resort for an engine answer no library layer turned into its own error.
              (DockerException, CLUSTER))
    return next((code for error, code in errors if isinstance(exc, error)), None)


def step_failed(position: int) -> int:
    """The exit code of a delivery whose step at `position` (0: checkout) failed."""
    return STEP_FAILED + 1 + position


def deployment_exit(result: str) -> int:
    """The exit code of a deployment's result (its history entry's `result`)."""
    if result == "failed, rolled back":
        return ROLLED_BACK
    return NOT_RECOVERED if result.startswith("failed") else 0


def settings(env: str, **overrides) -> config.Settings:
    return config.load(env, {k.upper(): v for k, v in overrides.items()})


def envs(env: str | None) -> list[str]:
    """`--env` given: that one (validated on load); none: every environment, test first."""
    if env:
        return [env]
    known = config.environments()
    return sorted(known, key=lambda e: (e != "test", e))


def user_errors(task_fn):
    """Library errors become one line on stderr and a documented exit code, not a traceback.
    SIGINT, SIGTERM and SIGHUP interrupt the whole task alike (the library cleans up on its
    way out): one line, exit 128 + the signal."""
    @functools.wraps(task_fn)
    def wrapper(*args, **kwargs):
        from .. import interrupt
        try:
            with interrupt.signals_as_interrupt():
                return task_fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            code = interrupt.exit_code(exc)
            raise Exit(f"interrupted ({signal.Signals(code - 128).name}): what ran was cleaned up",
                       code=code) from None
        except Exit:
            raise
        except Exception as exc:
            code = exit_code(exc)
            if code is None:
                raise
            raise Exit(f"error: {exc}", code=code) from None
    return wrapper


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
