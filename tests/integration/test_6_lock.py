"""The deployment lock on a real manager: holders are separate processes using the Lock API, the
way two runs of the tool meet; `inv lock status|release` as a user runs them. Only the test
cluster's manager is used. Tests run in file order and each leaves the lock free."""

from __future__ import annotations

import getpass
import signal
import subprocess
import sys
import time

import pytest

from cdtasks import records
from cdtasks.cluster import Cluster

from .conftest import manager_of

ROOT = __file__.rsplit("/tests/", 1)[0]
SVC = "go-demo"  # STACK_NAME: one lock for the whole sample stack
USER = getpass.getuser()
TTL = 9.0  # short, so expiry is seen in seconds; the heartbeat renews every 3 s

HOLDER = """
import sys
from cdtasks import config, records
from cdtasks.cluster import Cluster
manager = Cluster.of(config.load("test")).discover().gateway()
lock = records.Lock(manager, sys.argv[1], "9.9", action="testing", ttl=float(sys.argv[2]),
                    log=lambda line: print(line, flush=True)).acquire(0)
print("held", lock.id, flush=True)
for _ in sys.stdin:  # a run making one change after another (when the test says), checking
    try:             # the lock before each
        lock.check()
    except records.LockLost as exc:
        print("stopped:", exc, flush=True)
        sys.exit(3)
    print("changed", flush=True)
"""


@pytest.fixture(scope="module")
def manager(lab):
    return manager_of(Cluster.of(lab.settings("test")).discover())


class Holder:
    """Another run holding the lock, in its own process."""

    def __init__(self, lab, ttl: float = TTL):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, SVC, str(ttl)],
            cwd=ROOT,
            env=lab.env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("held "), line + self.proc.stdout.read()
        self.id = line.split()[1]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Its exit code and what it said, once its next change stopped it."""
        self.proc.stdin.write("change\n")
        self.proc.stdin.flush()
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def test_records_come_back_in_creation_order(manager):
    for n in range(5):
        records.put(manager, "history", "lock-test", {"n": n})
    assert [r["n"] for r in records.load(manager, "history", "lock-test")] == list(range(5))


def test_status_shows_the_holder_and_a_waiter_times_out_naming_it(lab, manager):
    holder = Holder(lab)
    try:
        status = lab.inv("lock", "status", "--env", "test").stdout
        assert f"test: {SVC} locked by {USER}@" in status, status
        assert f"pid {holder.proc.pid})" in status and "testing 9.9" in status
        assert "expires in" in status
        first = records.lock_state(manager, SVC)
        lines = []
        start = time.monotonic()
        with pytest.raises(records.LockHeld, match=rf"pid {holder.proc.pid}\).*9\.9 \(waited"):
            records.Lock(manager, SVC, "1.0", log=lines.append).acquire(TTL + 3)
        print(f"\nwaited {time.monotonic() - start:.1f}s past a TTL of {TTL}s: {lines}")
        assert f"pid {holder.proc.pid})" in lines[0]
        # The heartbeat renewed the same lock (its version index moved on) and kept us out.
        now = records.lock_state(manager, SVC)
        assert now.id == first.id == holder.id and now.version > first.version
        assert holder.proc.poll() is None
    finally:
        holder.kill()
    lab.inv("lock", "release", "--force", "--env", "test")


def test_a_holder_that_stops_renewing_is_taken_over_after_expiry_and_stops(lab, manager):
    holder = Holder(lab)
    holder.signal(signal.SIGSTOP)  # alive (so not known dead) but renewing nothing
    try:
        lines = []
        start = time.monotonic()
        taker = records.Lock(manager, SVC, "2.0", log=lines.append).acquire(60)
        waited = time.monotonic() - start
        print(f"\ntaken over after {waited:.1f}s (TTL {TTL}s): {lines}")
        assert waited < TTL + 2 * records.LOCK_POLL + 5, lines
        assert any(f"taking over the lock of {SVC} from" in x and "not renewed" in x for x in lines)
        assert records.lock_state(manager, SVC).id == taker.id != holder.id
        holder.signal(signal.SIGCONT)
        code, said = holder.finish()
        assert code == 3 and f"stopped: the lock of {SVC} was removed; now held by {USER}@" in said
        assert "2.0" in said.splitlines()[-1]
        assert taker.release() is True
    finally:
        holder.signal(signal.SIGCONT)
        holder.kill()
    assert records.lock_state(manager, SVC) is None


def test_a_killed_holder_on_this_machine_is_taken_over_at_once(lab, manager):
    holder = Holder(lab, ttl=300)
    holder.signal(signal.SIGKILL)
    holder.kill()
    status = lab.inv("lock", "status", "--env", "test").stdout
    assert "the next run takes it over (its process is gone)" in status, status
    lines = []
    with records.Lock(manager, SVC, "3.0", log=lines.append).acquire(0) as taker:
        assert records.lock_state(manager, SVC).id == taker.id != holder.id
    assert "its process is gone" in lines[0]
    assert records.lock_state(manager, SVC) is None


def test_release_needs_force_and_says_whose_lock_it_removed(lab, manager):
    holder = Holder(lab, ttl=300)
    try:
        refused = lab.inv("lock", "release", "--env", "test", check=False)
        assert refused.returncode == 2 and "--force removes the lock" in refused.stderr
        assert records.lock_state(manager, SVC).id == holder.id
        released = lab.inv("lock", "release", "--force", "--env", "test").stdout
        assert f"test: removed the lock of {SVC} held by {USER}@" in released
        assert f"pid {holder.proc.pid})" in released
        code, said = holder.finish()
        assert code == 3 and f"stopped: the lock of {SVC} was removed" in said
    finally:
        holder.kill()
    assert lab.inv("lock", "status", "--env", "test").stdout.strip() == f"test: {SVC} free"
    assert "nothing to remove" in lab.inv("lock", "release", "--force", "--env", "test").stdout
