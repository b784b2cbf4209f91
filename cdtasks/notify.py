"""Telling a team how a run ended, without a CI server: the run's result as JSON, posted to a
URL (`NOTIFY_URL`) and/or given on stdin to a command (`NOTIFY_COMMAND`, shell words run as an
argv list, never through a shell). A notification that fails is said and changes nothing else."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import requests

TIMEOUT = 30  # seconds a command or a URL gets to take the notification


def where(url: str) -> str:
    """The URL as logs show it: scheme and host only (paths of chat webhooks hold tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}"


def send(
    payload: Mapping,
    url: str = "",
    command: Sequence[str] = (),
    log: Callable[[str], None] = print,
    timeout: float = TIMEOUT,
) -> list[str]:
    """Send `payload` to each target given; returns what failed, one line each (also logged)."""
    body = json.dumps(dict(payload), indent=2)
    problems = []
    if command:
        try:
            proc = subprocess.run(
                list(command), input=body, capture_output=True, text=True, timeout=timeout
            )
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no message"])[-1][:200]
                problems.append(f"NOTIFY_COMMAND {command[0]} exited {proc.returncode}: {last}")
        except subprocess.TimeoutExpired:  # its message would repeat the argv, maybe a token
            problems.append(f"NOTIFY_COMMAND {command[0]} gave no answer in {timeout:.0f}s")
        except OSError as exc:
            problems.append(f"NOTIFY_COMMAND {command[0]}: {exc.strerror or type(exc).__name__}")
    if url:
        try:
            answer = requests.post(
                url,
                data=body.encode(),
                timeout=timeout,
                headers={"Content-Type": "application/json"},
            )
            if not answer.ok:
                problems.append(f"NOTIFY_URL {where(url)} answered {answer.status_code}")
        except requests.RequestException as exc:
            problems.append(f"NOTIFY_URL {where(url)}: {type(exc).__name__}")
    for line in problems:
        log(f"notification failed: {line}")
    return problems
