"""The one-line state a delivery leaves behind, as printed and reported (no engine needed for
these paths)."""

from pathlib import Path

from cdtasks.config import load
from cdtasks.delivery import Delivery, state_after
from cdtasks.runner import StepResult


def _delivery(tmp_path: Path, **kw) -> Delivery:
    (tmp_path / "test.env").write_text("")
    return Delivery(load("test", environ={}, env_dir=tmp_path), repo="", version="2.1", **kw)


def _ok(*names):
    return [StepResult(n, True, 0.1, "") for n in names]


def test_a_full_delivery_names_what_runs_on_prod_like(tmp_path):
    r = _delivery(tmp_path)
    state = state_after(
        r, _ok("checkout", "unit", "build", "staging", "publish", "prodlike", "prodtest")
    )
    assert state == "go-demo runs localhost:5000/go-demo:2.1 on prod-like"


def test_a_release_of_several_services_names_each_one(tmp_path):
    r = _delivery(tmp_path)
    r.targets = {"team_worker": "r/team-worker:2.1@sha256:b", "team_api": "r/team-api:2.1@sha256:a"}
    state = state_after(r, _ok("prodlike", "prodtest"))
    assert state == (
        "prod-like: team_api runs r/team-api:2.1@sha256:a, team_worker runs r/team-worker:2.1@sha256:b"
    )


def test_steps_run_alone_do_not_claim_a_rollout(tmp_path):
    assert (
        state_after(_delivery(tmp_path), _ok("publish")) == "publish passed; prod-like not changed"
    )


def test_a_dry_run_says_nothing_changed(tmp_path):
    assert "nothing was built" in state_after(_delivery(tmp_path, dry_run=True), _ok("checkout"))


def test_a_failure_before_publish_leaves_nothing_behind(tmp_path):
    results = _ok("checkout") + [StepResult("unit", False, 1.0, "failed")]
    assert state_after(_delivery(tmp_path), results).startswith("nothing left behind")


def test_an_interrupted_release_s_history_entry_never_hides_the_interruption(tmp_path):
    """A cluster that does not answer while the "interrupted" entry is written: said in one
    line; the interruption, not this error, ends the run."""
    from types import SimpleNamespace

    from cdtasks import delivery

    said = []
    r = _delivery(tmp_path, log=said.append)

    def unreachable(log=None):
        raise ConnectionError("swarm-test-1: no route to host\nmore")

    r._cluster = SimpleNamespace(gateway=unreachable)
    r.targets = {"go-demo": "localhost:5000/go-demo:2.1@sha256:a"}
    delivery.history_of_interrupted(r)
    assert said == ["the history could not be written: swarm-test-1: no route to host"]
