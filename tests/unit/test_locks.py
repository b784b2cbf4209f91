"""When a deployment lock counts as expired (pure logic; the lock itself is tested on the lab)."""
import os
import subprocess
import time

from cdtasks.records import lock_expired


def _holder(**kw):
    return {"host": "here", "pid": os.getpid(), "expires": time.time() + 600, **kw}


def test_a_live_holder_on_this_host_keeps_the_lock():
    assert not lock_expired(_holder(), host="here")


def test_time_up_expires_whoever_holds_it():
    assert lock_expired(_holder(expires=time.time() - 1), host="here")
    assert lock_expired(_holder(host="elsewhere", expires=100.0), at=101.0, host="here")


def test_a_dead_holder_on_this_host_expires_at_once():
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert lock_expired(_holder(pid=dead.pid), host="here")


def test_a_holder_on_another_host_is_trusted_until_its_time_is_up():
    assert not lock_expired(_holder(host="elsewhere", pid=999999), host="here")


def test_a_garbled_pid_is_not_taken_for_a_dead_process():
    assert not lock_expired(_holder(pid="x"), host="here")
    assert not lock_expired(_holder(pid=0), host="here")
