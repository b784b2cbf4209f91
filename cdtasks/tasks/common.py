"""What every task module shares: loading settings, and turning library errors into `Exit`."""
from __future__ import annotations

import functools
import sys

from docker.errors import DockerException
from invoke import Exit
from paramiko import SSHException

from .. import config
from ..engine import EngineError
from ..images import ImageError
from ..providers.base import ProviderError
from ..services import ServiceError
from ..swarm import SwarmError

# Exit codes, documented in the README.
BAD_INPUT, UNREACHABLE, CLUSTER = 2, 3, 4
ERRORS = ((config.ConfigError, BAD_INPUT), (EngineError, UNREACHABLE),
          (ProviderError, UNREACHABLE), (SwarmError, CLUSTER), (ServiceError, CLUSTER),
          (ImageError, CLUSTER), (SSHException, UNREACHABLE),
          # Last resort for an engine answer no library layer turned into its own error.
          (DockerException, CLUSTER))


def settings(env: str, **overrides) -> config.Settings:
    return config.load(env, {k.upper(): v for k, v in overrides.items()})


def envs(env: str | None) -> list[str]:
    """`--env` given: that one (validated on load); none: every environment, test first."""
    if env:
        return [env]
    known = config.environments()
    return sorted(known, key=lambda e: (e != "test", e))


def user_errors(task_fn):
    """Library errors become one line on stderr and a documented exit code, not a traceback."""
    @functools.wraps(task_fn)
    def wrapper(*args, **kwargs):
        try:
            return task_fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130)
        except tuple(e for e, _ in ERRORS) as exc:
            code = next(c for e, c in ERRORS if isinstance(exc, e))
            raise Exit(f"error: {exc}", code=code) from None
    return wrapper


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
