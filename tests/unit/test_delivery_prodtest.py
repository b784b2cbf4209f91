"""Production tests that fail on prod-like after the run's own prodlike changed the release's
services: every service goes back (the same `restore` as a failed rollout, the lock still
held), the history says how it ended and the step's message says so (exit 17 stays the step's).
The cluster, the tests and the rollout are fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdtasks import delivery, rollout
from cdtasks.config import load
from cdtasks.delivery import Delivery
from cdtasks.outcome import Outcome
from cdtasks.runner import StepFailed, StepResult

NEW = {"team_api": "r/team-api:1.2@sha256:b", "team_worker": "r/team-worker:1.2@sha256:d"}
OLD = {"team_api": "r/team-api:1.1@sha256:a", "team_worker": "r/team-worker:1.1@sha256:c"}


class FakeLock:
    released = False

    def release(self) -> None:
        self.released = True


@pytest.fixture
def seen(tmp_path: Path, monkeypatch) -> dict:
    """What the step asked for: the restore (service -> image), the history's result."""
    out: dict = {"restore": None, "history": None, "restored": True}

    def failing_tests(*args):
        raise StepFailed("production tests failed: compose run production exited 1", "tail")

    def restore(d, back):
        out["restore"] = back
        if out["restored"]:
            return True, "rolled back on every replica: ..."
        return False, "rolling back failed too: paused"

    monkeypatch.setattr(rollout, "production_tests", failing_tests)
    monkeypatch.setattr(delivery, "restore", restore)
    monkeypatch.setattr(delivery, "write_history", lambda d, r: out.update(history=r))
    monkeypatch.setattr(delivery, "mark_delivered", lambda d: pytest.fail("marked verified"))
    return out


def _delivery(tmp_path: Path, lock: FakeLock | None, previous: dict[str, str]) -> Delivery:
    (tmp_path / "test.env").write_text("")
    d = Delivery(load("test", environ={}, env_dir=tmp_path), repo="", version="1.2")
    d.targets, d.previous, d.lock = dict(NEW), dict(previous), lock  # type: ignore[assignment]
    return d


def test_failed_tests_put_every_service_back_and_say_so(tmp_path, seen):
    lock = FakeLock()
    d = _delivery(tmp_path, lock, OLD)
    with pytest.raises(StepFailed) as failed:
        delivery.prodtest(d)
    assert seen["restore"] == OLD  # both services, also the one whose tests were not at fault
    assert seen["history"] == Outcome.FAILED_ROLLED_BACK
    text = str(failed.value)
    assert "1.2 is not recorded as verified" in text and "rolled back on every replica" in text
    assert failed.value.output_tail == "tail"
    assert lock.released  # after the restore, not before
    assert delivery.failed_code([StepResult("prodtest", False, 1.0, "failed")]) == 17


def test_a_restore_that_fails_is_recorded_as_not_recovered(tmp_path, seen):
    seen["restored"] = False
    with pytest.raises(StepFailed, match="rolling back failed too"):
        delivery.prodtest(_delivery(tmp_path, FakeLock(), OLD))
    assert seen["history"] == Outcome.FAILED_NOT_RECOVERED


def test_only_services_that_changed_go_back(tmp_path, seen):
    with pytest.raises(StepFailed):
        delivery.prodtest(
            _delivery(tmp_path, FakeLock(), {**OLD, "team_worker": NEW["team_worker"]})
        )
    assert seen["restore"] == {"team_api": OLD["team_api"]}


def test_a_step_run_alone_changes_nothing_back(tmp_path, seen):
    """`inv prodtest` alone holds no lock of the rollout and does not know what ran before it."""
    with pytest.raises(StepFailed) as failed:
        delivery.prodtest(_delivery(tmp_path, None, {}))
    assert seen["restore"] is None and seen["history"] is None
    assert str(failed.value).endswith("1.2 is not recorded as verified")
