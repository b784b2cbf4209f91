"""services.wait_updated with a fake gateway: an update that changes no image (a config's new
generation) counts as done only when every replica runs the service's current spec and no
older task still runs; Swarm pausing or rolling it back is a failure."""

from __future__ import annotations

import pytest

from cdtasks import services
from cdtasks.gateway import Service, Task


class Steps:
    """A manager whose answers move on after each look at the tasks told to shut down (the
    last of one round): (update state, digests of the tasks that should run, digests of the
    tasks told to shut down that still run)."""

    def __init__(self, *steps):
        self.steps, self.at, self.rounds = list(steps), 0, 0

    def service(self, name):
        state = self.steps[self.at][0]
        return Service("s1", name, 2, "img:1", 2, update_state=state, container_digest="new")

    def tasks(self, service, desired_state=None):
        _, running, stopping = self.steps[self.at]
        digests = stopping if desired_state == "shutdown" else running
        if desired_state == "shutdown":
            self.at, self.rounds = min(self.at + 1, len(self.steps) - 1), self.rounds + 1
        return [
            Task(f"t{i}", "s1", "n1", "running", desired_state or "running", "img:1", **d)
            for i, d in enumerate({"container_digest": x} for x in digests)
        ]


def test_done_once_every_replica_runs_the_new_spec_and_the_old_ones_stopped():
    gw = Steps(
        ("", ["old", "old"], []),  # Swarm has not begun
        ("updating", ["new", "old"], []),
        ("updating", ["new", "new"], ["old"]),  # the last old task still stops
        ("completed", ["new", "new"], []),
        ("completed", ["new", "new"], []),
    )
    lines: list[str] = []
    services.wait_updated(gw, ["team_api"], 5, lines.append, poll=0)
    assert gw.rounds == 4  # done at the fourth step, not before
    assert lines[-1] == "team_api: 2/2 replicas updated, 0 older still running"


@pytest.mark.parametrize("state", ["paused", "rollback_completed"])
def test_swarm_pausing_or_rolling_back_is_a_failure(state, monkeypatch):
    monkeypatch.setattr(services, "diagnose", lambda gw, name: "task: exit 1")
    gw = Steps(("updating", ["new", "old"], []), (state, ["old", "old"], []))
    with pytest.raises(services.ServiceError, match=f"update is {state}: .*task: exit 1"):
        services.wait_updated(gw, ["team_api"], 5, lambda line: None, poll=0)


def test_a_timeout_names_what_is_left(monkeypatch):
    monkeypatch.setattr(services, "diagnose", lambda gw, name: "no task reported an error")
    gw = Steps(("updating", ["new", "old"], []))
    with pytest.raises(services.ServiceError, match="team_api: 1/2 replicas updated, 1 older"):
        services.wait_updated(gw, ["team_api"], 0, lambda line: None, poll=0)
