"""What every task module shares: loading settings, the exit codes, and turning library errors
into `Exit`. Imports stay light (no docker, paramiko, rich): `inv --list` loads every task
module, so the library is imported inside the tasks that use it."""

from __future__ import annotations

import functools
import json
import signal
import sys
from pathlib import Path

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
    from ..compose import ContractError
    from ..engine import EngineError
    from ..images import ImageError
    from ..providers.base import ProviderError
    from ..services import ServiceError
    from ..swarm import SwarmError

    errors = (
        (config.ConfigError, BAD_INPUT),
        (delivery.DeliveryError, BAD_INPUT),
        (deployment.DeploymentError, BAD_INPUT),
        (ContractError, BAD_INPUT),
        (records.LockHeld, LOCKED),
        (records.LockLost, LOCKED),
        (EngineError, UNREACHABLE),
        (ProviderError, UNREACHABLE),
        (SwarmError, CLUSTER),
        (ServiceError, CLUSTER),
        (ImageError, CLUSTER),
        (SSHException, UNREACHABLE),
        # Last resort for an engine answer no library layer turned into its own error.
        (DockerException, CLUSTER),
    )
    return next((code for error, code in errors if isinstance(exc, error)), None)


def step_failed(position: int) -> int:
    """The exit code of a delivery whose step at `position` (0: checkout) failed."""
    return STEP_FAILED + 1 + position


def deployment_exit(result: str) -> int:
    """The exit code of a deployment's result (its history entry's `result`)."""
    if result == "failed, rolled back":
        return ROLLED_BACK
    return NOT_RECOVERED if result.startswith("failed") else 0


# Invoke configuration every task module's collection declares (Invoke reads INVOKE_CDTASKS_*
# only for declared keys): where a project's files are. None: the defaults of `_where`.
CONFIG = {"cdtasks": {"project_dir": None, "env_dir": None}}


def _where(c) -> dict:
    """`config.locate`'s arguments from the task's Invoke configuration (ns.configure,
    invoke.yaml, INVOKE_CDTASKS_*). The project directory defaults to the directory of the
    tasks.py Invoke loaded (also where it reads invoke.yaml), never the installed package; a
    Program with a fixed namespace loads none: then the current directory."""
    ours = c.config.get("cdtasks") or {}
    # Set by Invoke's Config.set_project_location when it loads tasks.py (no public accessor).
    base = Path(getattr(c.config, "_project_prefix", None) or ".")
    return {"project_dir": base / (ours.get("project_dir") or ""), "env_dir": ours.get("env_dir")}


def settings(c, env: str, **overrides) -> config.Settings:
    """The settings of `env` for a task's Context `c`: flags (`overrides`) over the rest."""
    return config.load(env, {k.upper(): v for k, v in overrides.items()}, **_where(c))


def envs(c, env: str | None) -> list[str]:
    """`--env` given: that one (validated on load); none: every environment of the chosen env
    directory, test first."""
    if env:
        return [env]
    env_dir = config.locate(**_where(c)).env_dir
    known = config.environments(env_dir)
    if not known:
        raise Exit(f"error: no environments (*.env files) in {env_dir}", code=BAD_INPUT)
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
            raise Exit(
                f"interrupted ({signal.Signals(code - 128).name}): what ran was cleaned up",
                code=code,
            ) from None
        except Exit:
            raise
        except Exception as exc:
            mapped = exit_code(exc)
            if mapped is None:
                raise
            raise Exit(f"error: {exc}", code=mapped) from None

    return wrapper


def out(line: str = "", stderr: bool = False) -> None:
    """A line for the user on stdout; on stderr under --json, whose stdout holds only JSON."""
    (sys.stderr if stderr else sys.stdout).write(line + "\n")


def print_json(doc) -> None:
    """One JSON document on one line of stdout (what --json prints)."""
    sys.stdout.write(json.dumps(doc) + "\n")
