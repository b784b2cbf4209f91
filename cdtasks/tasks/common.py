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

# The exit codes and their one table are outcome's: the task modules take them from here.
from ..outcome import (  # noqa: F401
    BAD_INPUT,
    CLUSTER,
    DRIFT,
    INTERRUPTED,
    LOCKED,
    NOT_RECOVERED,
    ROLLED_BACK,
    STEP_FAILED,
    UNREACHABLE,
    step_failed,
)
from ..outcome import error_code as exit_code

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
