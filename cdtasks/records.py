"""JSON records kept on a cluster as Swarm configs, so they survive the machine the tool runs on:
versions that passed prod-like, the deployment history, and deployment locks.

Swarm configs are immutable and their names unique, which is what a lock needs: creating the
lock's config either succeeds or fails with a conflict, atomically, on the managers' Raft store.
Only a config's labels may change, and only at the version index last read (optimistic
concurrency): the lock's expiry is a label its holder renews, and a waiter marks an expired lock
as taken over the same way before removing it by its ID, so it never removes one renewed since.
A claim is a record whose name its key alone gives: two processes claiming one key (two
watchers taking one commit) cannot both succeed. Records beyond KEEP per kind are pruned.

Lease arithmetic that holds whatever the machines' clocks say: a waiter takes a lock over only
once it has seen it unchanged (same ID, same version) for a whole TTL on its own monotonic
clock; the expiry label (the holder's wall clock) is only a hint that makes a waiter watch. The
holder counts its lease from the moment it SENT its last accepted renewal (the waiter's watch
starts no earlier than the cluster applied it), acts only while LOCK_MARGIN of it is left, and
bounds each call of its lock to LOCK_CALL_TIMEOUT, well below the TTL.
"""

from __future__ import annotations

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

from . import interrupt
from .gateway import APIFailure, Config, Conflict, Gateway, NotFound

KIND_LABEL = "io.cdtasks.record"
LOCK_TTL = 90.0  # seconds a lock lives unless renewed; its holder renews it every third of that
LOCK_POLL = 2.0  # seconds between two looks of a waiter
LOCK_PROGRESS = 30.0  # seconds between two "still waiting" lines
LOCK_CALL_TIMEOUT = 10.0  # seconds a call about a lock may take (renewal, check, release)
LOCK_MARGIN = 10.0  # seconds of its lease a holder keeps unused (a check, then the change)
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
    manager: Gateway,
    kind: str,
    service: str,
    data: Mapping,
    group: Callable[[Mapping], object] = lambda row: None,
) -> str:
    """Store one record, then prune the kind beyond KEEP (`prunable`, with `group`); returns its
    config name (time-ordered, unique)."""
    name = f"cdtasks-{kind}-{int(time.time() * 1000)}-{secrets.token_hex(3)}"
    manager.create_config(
        name, json.dumps(dict(data)).encode(), labels={KIND_LABEL: kind, SERVICE_LABEL: service}
    )
    with contextlib.suppress(Exception):  # the record is stored; the next put prunes again
        prune(manager, kind, service, KEEP, group)
    return name


def claim_name(kind: str, service: str, key: str) -> str:
    """The one config name a claim of `key` can have (Swarm names: 64 characters at most)."""
    digest = hashlib.sha256(f"{service}\0{key}".encode()).hexdigest()[:32]
    return f"cdtasks-{kind}-claim-{digest}"


def claim(manager: Gateway, kind: str, service: str, key: str, data: Mapping) -> bool:
    """Store a record under a name that only `key` gives: atomic across processes and machines
    (the managers' Raft store refuses a second config of that name). False when a record of
    that key exists already (someone claimed it first). Not retried: a create whose answer was
    lost would then be taken for someone else's claim."""
    try:
        manager.create_config(
            claim_name(kind, service, key),
            json.dumps(dict(data)).encode(),
            labels={KIND_LABEL: kind, SERVICE_LABEL: service},
            retry=False,
        )
    except Conflict:
        return False
    return True


def entries(manager: Gateway, kind: str, service: str) -> list[tuple[str, dict]]:
    """(config ID, record) of every record of a kind for a service, oldest first: one list
    call, which carries each record's data."""
    configs = manager.configs(labels={KIND_LABEL: kind, SERVICE_LABEL: service}, data=True)
    # Records are never updated, so their version index is the Raft index of their creation:
    # one order for every writer, where names made in the same millisecond would tie.
    return [(c.id, json.loads(c.data)) for c in sorted(configs, key=lambda c: c.version)]


def load(manager: Gateway, kind: str, service: str) -> list[dict]:
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
    manager: Gateway,
    kind: str,
    service: str,
    keep: int,
    group: Callable[[Mapping], object] = lambda row: None,
) -> int:
    """Remove the records `prunable` names (each Swarm config costs the managers' Raft store and
    every load); returns how many went. A record removed meanwhile by another pruner is fine."""
    listed = entries(manager, kind, service)
    rows = [row for _, row in listed]
    return sum(manager.remove_config(listed[i][0]) for i in prunable(rows, keep, group))


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


def _state(config: Config) -> LockState:
    try:
        holder = json.loads(config.data)
    except ValueError:
        holder = {}
    return LockState(
        config.id,
        config.version,
        config.name,
        dict(config.labels),
        holder if isinstance(holder, dict) else {},
    )


def _timeout() -> float:
    """What one call about a lock may take: LOCK_CALL_TIMEOUT, less after a signal."""
    return interrupt.remaining(LOCK_CALL_TIMEOUT)


def lock_state(manager, service: str) -> LockState | None:
    """The service's lock, or None when it is free."""
    try:
        return _state(manager.config(lock_name(service), timeout=_timeout()))
    except NotFound:
        return None


def _update_labels(manager: Gateway, state: LockState, labels: Mapping) -> None:
    """The labels at the version read, within `_timeout()`: Swarm refuses it (APIFailure) when
    the config changed since, and with NotFound when it is gone."""
    manager.update_config_labels(
        Config(state.id, state.name, state.version), labels, timeout=_timeout()
    )


def _remove(manager: Gateway, config_id: str) -> bool:
    """Remove a lock by the ID it was created with: a newer lock of the same name has another."""
    return manager.remove_config(config_id, timeout=_timeout())


def expired(state: LockState) -> str:
    """Whether a lock looks free, for display ("" while it holds): `takeover` says so, or its
    expiry passed by this machine's clock (a hint only: the holder's clock may differ)."""
    now = time.time()
    if now > state.expires:
        return f"not renewed, expired {now - state.expires:.0f}s ago by this machine's clock"
    return takeover(state)


def takeover(state: LockState, wall: Callable[[], float] = time.time) -> str:
    """Why a waiter may take a lock over at once ("" otherwise): marked by another waiter, its
    holder known to be gone, or a lock of the tool's previous version (no lease: its expiry,
    in its data, is all there is) past that expiry."""
    if state.taken_by:
        return f"being taken over by {state.taken_by}"
    if holder_gone(state.holder):
        return "its process is gone"
    if EXPIRES_LABEL not in state.labels and wall() > state.expires:
        return f"a lock of an earlier version, expired {wall() - state.expires:.0f}s ago"
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
    `with Lock(manager, service, version).acquire(wait) as lock: ...`.
    `clock`, `wall` and `sleep` are injected by tests (monotonic time, epoch time, waiting)."""

    def __init__(
        self,
        manager,
        service: str,
        version: str,
        action: str = "deploying",
        log: Callable[[str], None] = lambda line: None,
        ttl: float = LOCK_TTL,
        holder: Mapping | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.manager, self.service, self.log, self.ttl = manager, service, log, ttl
        self.clock, self.wall, self.sleep = clock, wall, sleep
        # holder: this process unless given (a test standing in for another machine).
        self.holder = {
            **(holder or identity()),
            "time": now(),
            "version": version,
            "action": action,
            "ttl": ttl,
            "nonce": secrets.token_hex(8),
            # Read only by runs of the tool's previous version, which renew nothing.
            "expires": wall() + 15 * 60,
        }
        self.id = ""
        self.lost: LockLost | None = None
        self._renewed = 0.0  # clock() when the last renewal the cluster accepted was sent
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._untrack: Callable[[], object] | None = None

    @property
    def margin(self) -> float:
        """Seconds of the lease left unused: LOCK_MARGIN, less for a short TTL (tests)."""
        return min(LOCK_MARGIN, self.ttl / 3)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _labels(self) -> dict:
        return {
            KIND_LABEL: "lock",
            SERVICE_LABEL: self.service,
            EXPIRES_LABEL: f"{self.wall() + self.ttl:.3f}",
        }

    def _create(self) -> bool:
        try:
            self._renewed = self.clock()
            created = self.manager.create_config(
                lock_name(self.service),
                json.dumps(self.holder).encode(),
                labels=self._labels(),
                retry=False,
            )
        except Conflict:
            return False
        self.id = created
        return True

    def acquire(self, wait: float, heartbeat: bool = True) -> Lock:
        """Take the lock, waiting up to `wait` seconds for its holder (LockHeld after that);
        an expired lock is taken over. `heartbeat=False` leaves renewing to the caller."""
        start = self.clock()
        told, last_told = "", 0.0
        seen: tuple[tuple[str, int] | None, float] = (None, 0.0)  # (id, version) and since when
        limit, hinted = wait, ""
        try:
            while not self._create():
                state = lock_state(self.manager, self.service)
                if state is None:  # released between our two calls
                    continue
                now = self.clock()
                if seen[0] != (state.id, state.version):
                    seen = ((state.id, state.version), now)
                unchanged = now - seen[1]
                why = takeover(state, self.wall)
                if not why and unchanged > state.ttl:
                    why = f"not renewed for {unchanged:.0f}s (its TTL: {state.ttl:.0f}s)"
                if why:
                    self._take_over(state, why)
                    continue
                waited = now - start
                behind = self.wall() - state.expires
                if behind > 0 and hinted != state.id:
                    # Only a hint (either clock may be wrong): watch it one TTL, then decide.
                    hinted, limit = state.id, max(limit, waited + state.ttl + LOCK_POLL)
                    self.log(
                        f"the lock of {self.service} looks expired by this machine's "
                        f"clock ({behind:.0f}s ago): taken over if it stays unchanged for "
                        f"its TTL ({state.ttl:.0f}s)"
                    )
                if waited >= limit:
                    raise LockHeld(
                        f"{self.service} is being deployed by {describe(state.holder)}"
                        + (f" (waited {waited:.0f}s)" if wait else "; use --wait to wait for it")
                    )
                if told != state.id:
                    self.log(
                        f"waiting for the lock of {self.service}, held by {describe(state.holder)}"
                    )
                    told, last_told = state.id, now
                elif now - last_told >= LOCK_PROGRESS:
                    self.log(
                        f"still waiting for the lock of {self.service} ({waited:.0f}s of "
                        f"{limit:.0f}s), held by {state.holder.get('user')}@"
                        f"{state.holder.get('host')}"
                    )
                    last_told = now
                self.sleep(min(LOCK_POLL, max(0.0, limit - waited)))
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
        self._untrack = interrupt.track(self.left_behind)
        return self

    def left_behind(self) -> str:
        """What a process stopping now leaves of this lock ("" when released)."""
        if not self.id:
            return ""
        free = self.wall() + self.ttl - (self.clock() - self._renewed)
        at = datetime.datetime.fromtimestamp(free, datetime.UTC).strftime("%H:%M:%S")
        return (
            f"lock of {self.service} not released: another run can take it over once it "
            f"has gone unrenewed for its {self.ttl:.0f}s TTL (from about {at} UTC), or "
            f"`inv unlock` removes it"
        )

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
            except APIFailure:  # renewed, or removed, since we read it: look again
                return
        self.log(f"taking over the lock of {self.service} from {describe(state.holder)}: {why}")
        _remove(self.manager, state.id)

    def _own_state(self) -> LockState:
        """Our lock as the cluster has it; LockLost when it is no longer ours."""
        try:
            state = _state(self.manager.config(self.id, timeout=_timeout()))
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
        late = self.clock() - self._renewed
        # A waiter may take it once it is unchanged for a TTL after our last renewal reached
        # the cluster (not before we sent it): never renew or act on it that late.
        if late > self.ttl - self.margin:
            raise LockLost(
                f"the lock of {self.service} was not renewed for {late:.0f}s "
                f"(TTL {self.ttl:.0f}s); another run may take it"
            )
        return state

    def renew(self) -> None:
        """Push the expiry one TTL ahead; LockLost when the lock is no longer ours. The lease
        counts from when the renewal was sent."""
        state = self._verify()
        sent = self.clock()
        try:
            _update_labels(self.manager, state, self._labels())
        except APIFailure:
            self._own_state()  # gone or taken over: LockLost; otherwise a transient failure
            raise
        self._renewed = sent

    def check(self) -> None:
        """Before a change: raises LockLost (naming who took it) unless we still hold the lock."""
        self._verify()

    def _heartbeat(self) -> None:
        pause = self.ttl / 3
        while not self._stop.wait(pause):
            pause = self.ttl / 3
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
                pause = self.ttl / 9  # soon again, while the lease lasts

    def release(self) -> bool:
        """Stop renewing and remove the lock by its ID (never a newer lock of the same name);
        False when it was already gone, or when the cluster did not answer (then said, with
        when another run can take it)."""
        self._stop.set()
        if self._beat:
            self._beat.join(_timeout())  # a renewal under way is itself bounded
        try:
            removed = bool(self.id) and _remove(self.manager, self.id)
        except Exception as exc:
            self.log(f"{self.left_behind()} ({str(exc).splitlines()[0][:160]})")
            removed = False
        self.id = ""
        if self._untrack:
            self._untrack()
        return removed
