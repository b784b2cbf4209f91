"""JSON records kept on a cluster as Swarm configs, so they survive the machine the tool runs on:
versions that passed prod-like, the deployment history, and deployment locks.

Swarm configs are immutable and their names unique, which is what a lock needs: creating the
lock's config either succeeds or fails with a conflict, atomically, on the managers' Raft store.
"""
from __future__ import annotations

import base64
import datetime
import json
import secrets
import time
from typing import Mapping

from docker.errors import APIError, NotFound

KIND_LABEL = "io.cdtasks.record"
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
