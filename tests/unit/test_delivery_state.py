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


def test_after_a_failed_prod_like_a_job_says_how_its_run_went_not_no_replica(tmp_path):
    """A job that ended runs no task by design: the state line says how its current run went
    (the one its spec's image made), the services what each replica runs."""
    from types import SimpleNamespace

    from cdtasks.gateway import Node, Service, Task

    api = job = "r/team-api:2.1@sha256:a"  # the job runs on the API's image
    found = {
        "team_api": Service("s1", "team_api", 3, api, 1),
        "team_migrate": Service(
            "s2", "team_migrate", 5, job, 1, job=True, job_iteration=2, restart_condition="none"
        ),
    }
    runs = {"failed": ("complete", "failed"), "completed": ("failed", "complete")}

    def gateway(last_run: str):
        earlier, now = runs[last_run]
        tasks = {
            "s1": [Task("t1", "s1", "n1", "running", "running", api)],
            "s2": [
                Task("t2", "s2", "n1", earlier, "complete", job, job_iteration=1),
                Task("t3", "s2", "n1", now, "complete", job, job_iteration=2),
            ],
        }
        return SimpleNamespace(
            service=found.get,
            tasks=lambda sid, desired=None: [
                t for t in tasks[sid] if desired is None or t.desired_state == desired
            ],
            nodes=lambda: [Node("n1", "swarm-test-2", "manager", "ready")],
        )

    r = _delivery(tmp_path)
    r.targets = {"team_api": api, "team_migrate": job}
    failed = _ok("checkout", "unit", "build", "staging", "publish") + [
        StepResult("prodlike", False, 1.0, "job team_migrate failed")
    ]
    for last_run in runs:
        r._cluster = SimpleNamespace(gateway=lambda log=None, run=last_run: gateway(run))
        assert state_after(r, failed) == (
            f"prod-like runs {api} on swarm-test-2; team_migrate: job {last_run} on {job}"
        )
