"""JSON records kept on a cluster as Swarm configs, so they survive the machine the tool runs on:
versions that passed prod-like, the deployment history, and deployment locks.

Swarm configs are immutable and their names unique, which is what a lock needs: creating the
lock's config either succeeds or fails with a conflict, atomically, on the managers' Raft store.
Only a config's labels may change, and only at the version index last read (optimistic
concurrency): the lock's expiry is a label its holder renews, and a waiter marks an expired lock
as taken over the same way before removing it by its ID, so it never removes one renewed since.
A claim is a record whose name its key alone gives: two processes claiming one key (two
watchers taking one commit) cannot both succeed. Records beyond KEEP per kind are pruned.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import getpass
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from docker.errors import APIError, NotFound

KIND_LABEL = "io.cdtasks.record"
LOCK_TTL = 90.0  # seconds a lock lives unless renewed; its holder renews it every third of that
LOCK_POLL = 2.0  # seconds between two looks of a waiter
LOCK_PROGRESS = 30.0  # seconds between two "still waiting" lines
EXPIRES_LABEL = "io.cdtasks.expires"  # epoch seconds, renewed by the holder
TAKEN_LABEL = "io.cdtasks.taken-by"  # set by a waiter on an expired lock just before removing it
SERVICE_LABEL = "io.cdtasks.service"
# Records of a kind kept per service; older ones are pruned at each put, except the newest of
# each group the kind's writer names (what a reader still needs: a branch's last taken commit,
# the last successful deployment). The page shows the last 20; `inv history` what is kept.
KEEP = 200


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def put(
    manager,
    kind: str,
    service: str,
    data: Mapping,
    group: Callable[[Mapping], object] = lambda row: None,
) -> str:
    """Store one record, then prune the kind beyond KEEP (`prunable`, with `group`); returns its
    config name (time-ordered, unique)."""
    name = f"cdtasks-{kind}-{int(time.time() * 1000)}-{secrets.token_hex(3)}"
    manager.api.create_config(
        name, json.dumps(dict(data)).encode(), labels={KIND_LABEL: kind, SERVICE_LABEL: service}
    )
    with contextlib.suppress(Exception):  # the record is stored; the next put prunes again
        prune(manager, kind, service, KEEP, group)
    return name


def claim_name(kind: str, service: str, key: str) -> str:
    """The one config name a claim of `key` can have (Swarm names: 64 characters at most)."""
    digest = hashlib.sha256(f"{service}\0{key}".encode()).hexdigest()[:32]
    return f"cdtasks-{kind}-claim-{digest}"


def claim(manager, kind: str, service: str, key: str, data: Mapping) -> bool:
    """Store a record under a name that only `key` gives: atomic across processes and machines
    (the managers' Raft store refuses a second config of that name). False when a record of
    that key exists already (someone claimed it first)."""
    try:
        manager.api.create_config(
            claim_name(kind, service, key),
            json.dumps(dict(data)).encode(),
            labels={KIND_LABEL: kind, SERVICE_LABEL: service},
        )
    except APIError as exc:
        if exc.status_code != 409:
            raise
        return False
    return True


def _data(manager, config: Mapping) -> dict:
    data = (config.get("Spec") or {}).get("Data")
    if data is None:  # an engine whose list leaves the data out: ask for this one
        data = manager.api.inspect_config(config["ID"])["Spec"]["Data"]
    return json.loads(base64.b64decode(data))


def entries(manager, kind: str, service: str) -> list[tuple[str, dict]]:
    """(config ID, record) of every record of a kind for a service, oldest first: one list
    call, which carries each record's data."""
    configs = manager.api.configs(
        filters={"label": [f"{KIND_LABEL}={kind}", f"{SERVICE_LABEL}={service}"]}
    )
    # Records are never updated, so their version index is the Raft index of their creation:
    # one order for every writer, where names made in the same millisecond would tie.
    return [
        (c["ID"], _data(manager, c)) for c in sorted(configs, key=lambda c: c["Version"]["Index"])
    ]


def load(manager, kind: str, service: str) -> list[dict]:
    """All records of a kind for a service, oldest first."""
    return [row for _, row in entries(manager, kind, service)]


def prunable(
    rows: Sequence[Mapping], keep: int, group: Callable[[Mapping], object] = lambda row: None
) -> list[int]:
    """Indexes of the records (oldest first) beyond the newest `keep` that may go: all but the
    newest of each group (`group(row)`, None: no group) kept for what a reader still needs."""
    kept_groups: set = set()
    out = []
    for i in range(len(rows) - 1, -1, -1):
        g = group(rows[i])
        newest_of_group = g is not None and g not in kept_groups
        if g is not None:
            kept_groups.add(g)
        if i < len(rows) - keep and not newest_of_group:
            out.append(i)
    return sorted(out)


def prune(
    manager,
    kind: str,
    service: str,
    keep: int,
    group: Callable[[Mapping], object] = lambda row: None,
) -> int:
    """Remove the records `prunable` names (each Swarm config costs the managers' Raft store and
    every load); returns how many went. A record removed meanwhile by another pruner is fine."""
    listed = entries(manager, kind, service)
    gone = 0
    for i in prunable([row for _, row in listed], keep, group):
        try:
            manager.api.remove_config(listed[i][0])
            gone += 1
        except NotFound:
            pass
    return gone


# -- locks -------------------------------------------------------------------------------------
class LockHeld(RuntimeError):
    """Another deployment holds the service's lock."""


class LockLost(RuntimeError):
    """The lock this run held is gone (taken over, removed by hand, or not renewed in time)."""

    results: list  # the steps that ran before, set by the run that lost it


def lock_name(service: str) -> str:
    return f"cdtasks-lock-{service}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _started(pid: int | str) -> str:
    """A process's start time (clock ticks after boot, /proc/PID/stat field 22): with the pid, it
    names one process of one boot, whatever pid is reused later. "" when it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rpartition(")")[2].split()[19] if stat else ""


def identity() -> dict:
    """Who this process is, precisely enough that two containers with the same hostname are not
    taken for one: the machine id (the host and the boot id where there is none), the boot and
    pid namespace in which the pid means something, the pid and its start time."""
    host = socket.gethostname()
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    machine = (
        _read("/etc/machine-id")
        or _read("/var/lib/dbus/machine-id")
        or (f"{host}/{boot}" if boot else "")
    )
    return {
        "user": getpass.getuser(),
        "host": host,
        "machine": machine,
        "boot": boot,
        "pidns": pidns,
        "pid": os.getpid(),
        "started": _started(os.getpid()),
    }


def holder_gone(holder: Mapping, me: Mapping | None = None) -> bool:
    """True only when the holder ran in this machine, boot and pid namespace (so its pid means
    here what it meant there) and that process no longer runs. Anything else is left to expiry."""
    me = me or identity()
    if not me["boot"] or any(holder.get(k) != me[k] for k in ("machine", "boot", "pidns")):
        return False
    try:
        pid = int(holder.get("pid", 0))
    except (TypeError, ValueError):
        return False
    return pid > 0 and _started(pid) != str(holder.get("started"))


def describe(holder: Mapping) -> str:
    """One line naming a holder: who, where, since when, doing what."""
    machine = str(holder.get("machine") or "?")[:12]
    return (
        f"{holder.get('user')}@{holder.get('host')} (machine {machine}, pid {holder.get('pid')})"
        f" since {holder.get('time')}, "
        f"{holder.get('action', 'deploying')} {holder.get('version')}"
    )


@dataclass(frozen=True)
class LockState:
    """A service's lock as the cluster has it now."""

    id: str
    version: int  # the config's version index, which an update must name
    name: str
    labels: dict
    holder: dict

    @property
    def expires(self) -> float:
        """Epoch seconds; a lock of an earlier version of the tool has its expiry in its data."""
        try:
            return float(self.labels.get(EXPIRES_LABEL, self.holder.get("expires", 0)))
        except (TypeError, ValueError):
            return 0.0

    @property
    def taken_by(self) -> str:
        return self.labels.get(TAKEN_LABEL, "")

    @property
    def ttl(self) -> float:
        try:
            return float(self.holder.get("ttl", LOCK_TTL))
        except (TypeError, ValueError):
            return LOCK_TTL


def _state(config: dict) -> LockState:
    spec = config["Spec"]
    try:
        holder = json.loads(base64.b64decode(spec.get("Data") or b""))
    except ValueError:
        holder = {}
    return LockState(
        config["ID"],
        config["Version"]["Index"],
        spec["Name"],
        dict(spec.get("Labels") or {}),
        holder if isinstance(holder, dict) else {},
    )


def lock_state(manager, service: str) -> LockState | None:
    """The service's lock, or None when it is free."""
    try:
        return _state(manager.api.inspect_config(lock_name(service)))
    except NotFound:
        return None


def _update_labels(manager, state: LockState, labels: Mapping) -> None:
    """POST /configs/{id}/update at the version read: docker-py 7.1 has no update_config, so this
    goes through the client's own request helpers. Swarm refuses it (APIError) when the config
    changed since, and with NotFound when it is gone."""
    api = manager.api
    res = api._post_json(
        api._url("/configs/{0}/update", state.id),
        params={"version": state.version},
        data={"Name": state.name, "Labels": dict(labels)},
    )
    api._raise_for_status(res)


def _remove(manager, config_id: str) -> bool:
    """Remove a lock by the ID it was created with: a newer lock of the same name has another."""
    try:
        manager.api.remove_config(config_id)
        return True
    except NotFound:
        return False


def expired(state: LockState) -> str:
    """Why a lock may be taken over ("" while it holds): marked by another waiter, its expiry
    passed (by this machine's clock), or its holder known to be gone."""
    now = time.time()
    if state.taken_by:
        return f"being taken over by {state.taken_by}"
    if now > state.expires:
        return f"not renewed, expired {now - state.expires:.0f}s ago"
    if holder_gone(state.holder):
        return "its process is gone"
    return ""


def force_release(manager, service: str) -> LockState | None:
    """Remove the service's lock whoever holds it (for a human who knows it is stale); returns
    what was removed, None when it was free."""
    state = lock_state(manager, service)
    return state if state and _remove(manager, state.id) else None


class Lock:
    """One release at a time changes a service. `acquire(wait)` takes the lock (a Swarm config
    created atomically) and renews it from a daemon thread every third of its TTL; the holder
    calls `check()` before each change, which raises LockLost naming who took it;
    `release()` removes it by its config ID. Also a context manager:
    `with Lock(manager, service, version).acquire(wait) as lock: ...`."""

    def __init__(
        self,
        manager,
        service: str,
        version: str,
        action: str = "deploying",
        log: Callable[[str], None] = lambda line: None,
        ttl: float = LOCK_TTL,
        holder: Mapping | None = None,
    ):
        self.manager, self.service, self.log, self.ttl = manager, service, log, ttl
        # holder: this process unless given (a test standing in for another machine).
        self.holder = {
            **(holder or identity()),
            "time": now(),
            "version": version,
            "action": action,
            "ttl": ttl,
            "nonce": secrets.token_hex(8),
            # Read only by runs of the tool's previous version, which renew nothing.
            "expires": time.time() + 15 * 60,
        }
        self.id = ""
        self.lost: LockLost | None = None
        self._renewed = 0.0  # time.monotonic() of the last renewal the cluster accepted
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _labels(self) -> dict:
        return {
            KIND_LABEL: "lock",
            SERVICE_LABEL: self.service,
            EXPIRES_LABEL: f"{time.time() + self.ttl:.3f}",
        }

    def _create(self) -> bool:
        try:
            self._renewed = time.monotonic()
            created = self.manager.api.create_config(
                lock_name(self.service), json.dumps(self.holder).encode(), labels=self._labels()
            )
        except APIError as exc:
            if exc.status_code != 409:
                raise
            return False
        self.id = created["ID"]
        return True

    def acquire(self, wait: float, heartbeat: bool = True) -> Lock:
        """Take the lock, waiting up to `wait` seconds for its holder (LockHeld after that);
        an expired lock is taken over. `heartbeat=False` leaves renewing to the caller."""
        start = time.monotonic()
        told, last_told = "", 0.0
        seen: tuple[tuple[str, int] | None, float] = (None, 0.0)  # (id, version) and since when
        try:
            while not self._create():
                state = lock_state(self.manager, self.service)
                if state is None:  # released between our two calls
                    continue
                if seen[0] != (state.id, state.version):
                    seen = ((state.id, state.version), time.monotonic())
                why = expired(state)
                if not why and time.monotonic() - seen[1] > state.ttl:
                    # Its holder's clock may be ahead of ours: unchanged for a whole TTL here.
                    why = f"not renewed for {time.monotonic() - seen[1]:.0f}s"
                if why:
                    self._take_over(state, why)
                    continue
                waited = time.monotonic() - start
                if waited >= wait:
                    raise LockHeld(
                        f"{self.service} is being deployed by {describe(state.holder)}"
                        + (f" (waited {waited:.0f}s)" if wait else "; use --wait to wait for it")
                    )
                if told != state.id:
                    self.log(
                        f"waiting for the lock of {self.service}, held by {describe(state.holder)}"
                    )
                    told, last_told = state.id, time.monotonic()
                elif time.monotonic() - last_told >= LOCK_PROGRESS:
                    self.log(
                        f"still waiting for the lock of {self.service} ({waited:.0f}s of "
                        f"{wait:.0f}s), held by {state.holder.get('user')}@"
                        f"{state.holder.get('host')}"
                    )
                    last_told = time.monotonic()
                time.sleep(min(LOCK_POLL, max(0.0, wait - waited)))
        except LockHeld:
            raise
        except BaseException:
            if not self.id:  # interrupted (Ctrl-C) around our own create: leave nothing behind
                self._remove_unrecorded()
            raise
        if heartbeat:
            self._beat = threading.Thread(
                target=self._heartbeat, daemon=True, name=f"lock-{self.service}"
            )
            self._beat.start()
        return self

    def _remove_unrecorded(self) -> None:
        """Our lock, if the create went through but its answer never reached us."""
        try:
            state = lock_state(self.manager, self.service)
            if state and state.holder.get("nonce") == self.holder["nonce"]:
                _remove(self.manager, state.id)
        except Exception:  # clean-up must not hide why acquiring stopped
            pass

    def _take_over(self, state: LockState, why: str) -> None:
        """Mark the expired lock at the version read, then remove it by its ID: a holder that
        renewed meanwhile changed the version, so the mark fails and its lock stays."""
        if not state.taken_by:
            try:
                _update_labels(
                    self.manager, state, {**state.labels, TAKEN_LABEL: describe(self.holder)}
                )
            except APIError:  # renewed, or removed, since we read it: look again
                return
        self.log(f"taking over the lock of {self.service} from {describe(state.holder)}: {why}")
        _remove(self.manager, state.id)

    def _own_state(self) -> LockState:
        """Our lock as the cluster has it; LockLost when it is no longer ours."""
        try:
            state = _state(self.manager.api.inspect_config(self.id))
        except NotFound:
            now_held = lock_state(self.manager, self.service)
            by = f"; now held by {describe(now_held.holder)}" if now_held else ""
            raise LockLost(f"the lock of {self.service} was removed{by}") from None
        if state.taken_by:
            raise LockLost(f"the lock of {self.service} was taken over by {state.taken_by}")
        return state

    def _verify(self) -> LockState:
        """Our lock as the cluster has it, within its lease; LockLost (naming who took it, where
        someone did) otherwise."""
        if self.lost:
            raise self.lost
        if not self.id:
            raise LockLost(f"the lock of {self.service} is not held")
        state = self._own_state()
        late = time.monotonic() - self._renewed
        if late > self.ttl:  # a waiter may rightly take it any moment: never renew or act on it
            raise LockLost(
                f"the lock of {self.service} was not renewed for {late:.0f}s "
                f"(TTL {self.ttl:.0f}s); another run may take it"
            )
        return state

    def renew(self) -> None:
        """Push the expiry one TTL ahead; LockLost when the lock is no longer ours."""
        state = self._verify()
        try:
            _update_labels(self.manager, state, self._labels())
        except APIError:
            self._own_state()  # gone or taken over: LockLost; otherwise a transient failure
            raise
        self._renewed = time.monotonic()

    def check(self) -> None:
        """Before a change: raises LockLost (naming who took it) unless we still hold the lock."""
        self._verify()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except LockLost as exc:
                self.lost = exc
                self.log(f"lost: {exc}")
                return
            except Exception as exc:  # the engine did not answer: check() fails once the TTL is up
                self.log(
                    f"could not renew the lock of {self.service}: {str(exc).splitlines()[0][:160]}"
                )

    def release(self) -> bool:
        """Stop renewing and remove the lock by its ID (never a newer lock of the same name);
        False when it was already gone."""
        self._stop.set()
        if self._beat:
            self._beat.join()
        removed = bool(self.id) and _remove(self.manager, self.id)
        self.id = ""
        return removed
