"""JSON records kept on a cluster as Swarm configs, so they survive the machine the tool runs on:
versions that passed prod-like, the deployment history, and deployment locks.

Swarm configs are immutable and their names unique, which is what a lock needs: creating the
lock's config either succeeds or fails with a conflict, atomically, on the managers' Raft store.
"""
from __future__ import annotations

import base64
import datetime
import getpass
import json
import os
import secrets
import socket
import time
from typing import Callable, Mapping

from docker.errors import APIError, NotFound

KIND_LABEL = "io.cdtasks.record"
LOCK_TTL = 15 * 60  # seconds after which a lock whose holder vanished counts as expired
LOCK_POLL = 2.0
SERVICE_LABEL = "io.cdtasks.service"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def put(manager, kind: str, service: str, data: Mapping) -> str:
    """Store one record; returns its config name (time-ordered, unique)."""
    name = f"cdtasks-{kind}-{int(time.time() * 1000)}-{secrets.token_hex(3)}"
    manager.api.create_config(name, json.dumps(dict(data)).encode(),
                              labels={KIND_LABEL: kind, SERVICE_LABEL: service})
    return name


def _data(manager, config_id: str) -> dict:
    return json.loads(base64.b64decode(manager.api.inspect_config(config_id)["Spec"]["Data"]))


def load(manager, kind: str, service: str) -> list[dict]:
    """All records of a kind for a service, oldest first."""
    configs = manager.api.configs(filters={"label": [f"{KIND_LABEL}={kind}",
                                                     f"{SERVICE_LABEL}={service}"]})
    return [_data(manager, c["ID"]) for c in sorted(configs, key=lambda c: c["Spec"]["Name"])]


# -- locks -------------------------------------------------------------------------------------
class LockHeld(RuntimeError):
    """Another deployment holds the service's lock."""


def lock_name(service: str) -> str:
    return f"cdtasks-lock-{service}"


def try_lock(manager, service: str, holder: Mapping) -> dict | None:
    """Take the lock (None) or return the current holder's record."""
    try:
        manager.api.create_config(lock_name(service), json.dumps(dict(holder)).encode(),
                                  labels={KIND_LABEL: "lock", SERVICE_LABEL: service})
        return None
    except APIError as exc:
        if exc.status_code != 409:
            raise
    try:
        return _data(manager, lock_name(service))
    except NotFound:  # released between our two calls: try again
        return try_lock(manager, service, holder)


def unlock(manager, service: str, token: str | None = None) -> bool:
    """Remove the lock; with `token`, only if this holder still owns it."""
    try:
        if token is not None and _data(manager, lock_name(service)).get("token") != token:
            return False
        manager.api.remove_config(lock_name(service))
        return True
    except NotFound:
        return False


def _holder_text(h: dict) -> str:
    return (f"{h.get('user')}@{h.get('host')} (pid {h.get('pid')}) since {h.get('time')}, "
            f"{h.get('action', 'deploying')} {h.get('version')}")


def lock_expired(holder: dict, at: float | None = None, host: str | None = None) -> bool:
    """Expired when its time is up, or when its holder ran on this host and is gone."""
    if (at or time.time()) > float(holder.get("expires", 0)):
        return True
    try:
        pid = int(holder.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid > 0 and holder.get("host") == (host or socket.gethostname()):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, someone else's
            return False
    return False


def acquire(manager, service: str, version: str, wait: float, log: Callable[[str], None],
            action: str = "deploying") -> str:
    """Take the lock that lets one release at a time change a service (waiting up to `wait`
    seconds); returns its token for `unlock`."""
    token = secrets.token_hex(8)
    holder = {"user": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid(),
              "time": now(), "version": version, "action": action,
              "expires": time.time() + LOCK_TTL, "token": token}
    deadline = time.monotonic() + wait
    told = False
    while True:
        current = try_lock(manager, service, holder)
        if current is None:
            return token
        if lock_expired(current):
            log(f"removing an expired lock of {_holder_text(current)}")
            unlock(manager, service, current.get("token"))
            continue
        if time.monotonic() >= deadline:
            raise LockHeld(f"{service} is being deployed by {_holder_text(current)}"
                           + ("" if wait else "; use --wait to wait for it"))
        if not told:
            log(f"waiting for the lock held by {_holder_text(current)}")
            told = True
        time.sleep(LOCK_POLL)
