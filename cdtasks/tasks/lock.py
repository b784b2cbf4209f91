"""lock: who holds a service's deployment lock, and removing a stale one by hand."""

from __future__ import annotations

import time

from invoke import Collection, Exit

from .common import BAD_INPUT, CONFIG, envs, out, print_json, settings, user_errors
from .flags import task


@task(
    notes={
        "env": "default: every environment",
        "service": "here: whose lock (default STACK_NAME: one lock for the whole stack)",
        "force": "with release: remove the lock whoever holds it; its run stops before its "
        "next change",
    }
)
@user_errors
def lock(c, action, env=None, service=None, force=False, json=False):
    """Show who holds a service's deployment lock (status), or remove it (release --force)."""
    if action not in ("status", "release"):
        raise Exit(f"error: unknown action {action!r}: use status or release", code=BAD_INPUT)
    if action == "release" and not force:
        raise Exit(
            "error: not released: --force removes the lock whoever holds it (that run "
            "stops before its next change); see `inv lock status` first",
            code=BAD_INPUT,
        )
    from .. import records, release  # imported here: `inv --list` stays light
    from ..cluster import Cluster

    docs = {}
    for e in envs(c, env):
        s = settings(c, e)
        svc = service or release.key(s)
        manager = Cluster.of(s).discover().gateway()
        if action == "release":
            removed = records.force_release(manager, svc)
            docs[e] = {"service": svc, "removed": removed.holder if removed else None}
            out(
                f"{e}: removed the lock of {svc} held by {records.describe(removed.holder)}"
                if removed
                else f"{e}: {svc} free, nothing to remove",
                json,
            )
            continue
        state = records.lock_state(manager, svc)
        if state is None:
            docs[e] = {"service": svc, "holder": None, "expires_in": None, "expired": ""}
            out(f"{e}: {svc} free", json)
            continue
        why = records.expired(state)
        docs[e] = {
            "service": svc,
            "holder": state.holder,
            "expires_in": round(state.expires - time.time()),
            "expired": why,
        }
        left = (
            f"the next run takes it over ({why})"
            if why
            else f"expires in {state.expires - time.time():.0f}s unless renewed"
        )
        out(f"{e}: {svc} locked by {records.describe(state.holder)}; {left}", json)
    if json:
        print_json(docs)


ns = Collection("lock", lock)
ns.configure(CONFIG)
