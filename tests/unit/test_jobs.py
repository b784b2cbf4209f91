"""A release's jobs as gates: how one run of a job stands from its tasks (pure), and a release
whose job fails changes no other service (the gateway replaced by a stand-in)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from cdtasks import jobs, rollout, services
from cdtasks.gateway import Node, Service, Task
from cdtasks.runner import StepFailed

NEW = "localhost:5000/team-api:1.1@sha256:aa"
WORKER = "localhost:5000/team-worker:1.1@sha256:bb"


def task(state: str, desired: str = "complete", **kw) -> Task:
    return Task(f"t-{state}", "s", "n", state, desired, NEW, **kw)


@pytest.mark.parametrize(
    ("states", "want"),
    [
        ((), "running"),  # Swarm has not made the run's task yet
        (("pending",), "running"),
        (("running",), "running"),
        (("complete",), "complete"),
        (("failed", "complete"), "complete"),  # a restart that completed
        (("failed", "running"), "running"),  # restarted, still going
        (("failed", "ready"), "running"),  # restarted, waiting out the restart delay
        (("failed",), "stalled"),  # Swarm may still make the next task
        (("failed", "failed", "failed", "rejected"), "failed"),  # 3 restarts, then it gave up
    ],
)
def test_a_run_stands_by_its_tasks_and_restart_policy(states, want):
    got = jobs.state_of([task(s) for s in states], 1, "on-failure", 3)
    assert got.state == want, got


def test_without_restarts_one_failure_fails_the_job_and_names_the_exit():
    got = jobs.state_of(
        [task("failed", error="task: non-zero exit (3)", exit_code=3)], 1, "none", 0
    )
    assert got == jobs.JobState("failed", "1 failed, last: task: non-zero exit (3) (exit 3)")


def test_unlimited_restarts_never_fail_the_job_by_count_only_by_the_time():
    many = [task("failed") for _ in range(20)]
    assert jobs.state_of([*many, task("starting")], 1, "on-failure", 0).state == "running"


def test_completions_wanted_are_counted():
    assert jobs.state_of([task("complete"), task("running")], 2, "none", 0).state == "running"
    assert jobs.state_of([task("complete"), task("complete")], 2, "none", 0).state == "complete"


def test_a_log_line_loses_its_task_prefix():
    assert jobs._message("team_migrate.1.abc@swarm-test-2 | schema 7: boom") == "schema 7: boom"
    assert jobs._message("no prefix") == "no prefix"


# Each attempt's lines as a service's log gives them (details: the task ID; the engine's time
# of each line): interleaved, and the last attempt's error (stderr) before its stdout's line.
LOG = [
    ("2026-12-06T05:00:09.000000000Z", "t0", "the previous run"),
    ("2026-12-06T05:00:10.000000001Z", "t1", "step 1 (first attempt)"),
    ("2026-12-06T05:00:10.200000000Z", "t2", "boom"),
    ("2026-12-06T05:00:10.000000002Z", "t1", "boom (first attempt)"),
    ("2026-12-06T05:00:10.199999999Z", "t2", "step 1"),
]


class Swarm:
    """A stand-in gateway: one job service whose run (a failed attempt, then one that ends as
    `end`) follows an earlier run's, their interleaved log, and updates."""

    def __init__(self, end: str, stopping: int = 0):
        self.end, self.updated, self.stopping, self.looks = end, [], stopping, 0

    def clock(self):
        return datetime(2026, 12, 6, tzinfo=UTC)

    def tasks(self, service_id):
        self.looks += 1
        # the previous run's task (a hanging one) stops only after `stopping` looks
        old = "running" if self.looks <= self.stopping else "shutdown"
        made = "2026-12-06T05:00:10.1234Z"  # the Engine API's times drop trailing zeros:
        later = "2026-12-06T05:00:10.12345Z"  # as text, this one would sort first
        return [
            Task("t0", "job", "n", old, "remove", NEW, job_iteration=6, created_at=made),
            Task("t2", "job", "n", self.end, "complete", NEW, job_iteration=7, created_at=later),
            Task("t1", "job", "n", "failed", "complete", NEW, job_iteration=7, created_at=made),
        ]

    def nodes(self):
        return [Node("n", "swarm-test-2", "manager", "ready")]

    def service_logs(self, service_id, timestamps=False, **kw):
        return iter(
            [
                f"{at + ' ' if timestamps else ''}com.docker.swarm.node.id=n,"
                f"com.docker.swarm.task.id={task} {line}\n".encode()
                for at, task, line in LOG
            ]
        )


@pytest.fixture
def swarm(monkeypatch):
    def make(end: str, stopping: int = 0) -> Swarm:
        sw = Swarm(end, stopping)
        job = Service(
            "job", "team_migrate", 9, NEW, 1, job=True, job_iteration=7, restart_condition="none"
        )
        monkeypatch.setattr(services, "existing", lambda gw, name: job)
        monkeypatch.setattr(
            services,
            "update_image",
            lambda gw, name, image, before=None, labels=None: sw.updated.append(name) or True,
        )
        monkeypatch.setattr(rollout, "prepull", lambda *a: [])
        monkeypatch.setattr(rollout.stack, "job_names", lambda s: {"team_migrate"})
        monkeypatch.setattr(
            services,
            "wait_rollout",
            lambda gw, name, image, *a, **k: services.Rollout(name, image, "completed", 1.0),
        )
        monkeypatch.setattr(rollout, "settle", lambda *a: None)
        return sw

    return make


def release(sw: Swarm, dry_run: bool = False, record=None):
    settings = SimpleNamespace(stack=SimpleNamespace(stack_file="stack.yml", job_timeout=30))
    cluster = SimpleNamespace(gateway=lambda log=None: sw, client=None, settings=settings)
    images = {"team_api": NEW, "team_migrate": NEW, "team_worker": WORKER}
    return rollout.update(
        cluster, SimpleNamespace(services_timeout=60), images, print, dry_run, record
    )


def test_the_job_runs_to_completion_before_the_services_update(swarm):
    sw = swarm("complete")
    results = release(sw)
    assert sw.updated == ["team_migrate", "team_api", "team_worker"]
    assert [r.service for r in results] == ["team_api", "team_worker"]


def test_a_failing_job_stops_the_release_before_any_other_service_changes(swarm):
    sw = swarm("failed")
    with pytest.raises(StepFailed, match=r"job team_migrate failed on .*last output: boom") as exc:
        release(sw)
    # its last attempt's lines, no earlier one's, in the order it printed them
    assert exc.value.output_tail == "step 1\nboom"
    assert sw.updated == ["team_migrate"]


def test_before_any_attempt_the_output_is_the_whole_run_s_in_time_order(swarm):
    sw = swarm("failed")
    want = [line for _, _, line in sorted(LOG)]
    assert jobs.output(sw, "team_migrate", 0, jobs.last_attempt([])).splitlines() == want


def test_the_dry_run_shows_the_job_first_and_changes_nothing(swarm):
    sw, seen = swarm("complete"), []
    release(sw, dry_run=True, record=seen.append)
    assert [argv[-1] for argv in seen] == ["team_migrate", "team_api", "team_worker"]
    assert sw.updated == []


def test_a_run_is_done_only_once_an_earlier_runs_task_has_stopped(swarm):
    sw = swarm("complete", stopping=2)
    jobs.run(sw, "team_migrate", NEW, 30, print, poll=0)
    assert sw.looks == 3


OLD = {
    "team_api": "localhost:5000/team-api:1.0@sha256:a0",
    "team_migrate": "localhost:5000/team-api:1.0@sha256:a0",
    "team_worker": "localhost:5000/team-worker:1.0@sha256:b0",
}
RELEASE = {"team_api": NEW, "team_migrate": NEW, "team_worker": WORKER}


class Lock:
    def check(self) -> None:
        pass


@pytest.fixture
def undo(tmp_path, monkeypatch):
    """After a release that stopped on its failed job: the specs (only the job's changed, or
    none with `job_changed` false; the API's UpdateStatus `api_state`), and what the undo
    asked rollout.update for."""
    from cdtasks.config import load

    (tmp_path / "test.env").write_text("")
    settings = load("test", environ={}, env_dir=tmp_path)
    updated: list[dict] = []
    monkeypatch.setattr(
        rollout, "update", lambda cluster, app, images, *a, **k: updated.append(dict(images)) or []
    )

    def make(job_changed: bool = True, api_state: str = ""):
        specs = {**OLD, "team_migrate": NEW if job_changed else OLD["team_migrate"]}
        states = {"team_api": api_state}
        gw = SimpleNamespace(
            service=lambda name: Service(
                name, name, 1, specs[name], 1, update_state=states.get(name, "")
            )
        )
        return settings, SimpleNamespace(gateway=lambda log=None: gw, settings=settings), updated

    return make


def test_after_a_failed_job_prod_like_puts_back_and_names_the_job_alone(undo):
    from cdtasks import delivery, release

    settings, cluster, updated = undo()
    d = delivery.Delivery(settings, repo="", version="1.1", log=lambda line: None)
    d._cluster, d.lock = cluster, Lock()  # type: ignore[assignment]
    d.targets, d.previous = dict(RELEASE), dict(OLD)
    restored, how = delivery.restore(d, release.changed(d.targets, d.previous))
    assert restored and updated == [{"team_migrate": OLD["team_migrate"]}]
    assert how == f"rolled back on every replica: team_migrate runs {OLD['team_migrate']}"


def test_after_a_failed_job_production_puts_back_the_job_alone_or_says_nothing_changed(undo):
    from cdtasks import deployment

    for job_changed, want in ((True, [{"team_migrate": OLD["team_migrate"]}]), (False, [])):
        settings, cluster, updated = undo(job_changed)
        d = deployment.Deployment(settings, settings, "1.1", images=dict(RELEASE), before=OLD)
        d.cluster = cluster  # type: ignore[assignment]
        detail = deployment._rollback(d, Lock())  # type: ignore[arg-type]
        assert updated == want and d.rolled_back
        if job_changed:
            assert detail.startswith(
                f"team_migrate on test: every replica runs {OLD['team_migrate']}"
            )
        else:
            assert detail == "nothing to roll back: no service of the release had changed"
        updated.clear()


def test_an_undo_follows_a_service_that_swarm_rolls_back_by_itself(undo):
    """Swarm's own rollback (failure_action) put the API's spec back already: the undo still
    follows it until its tasks run that image (or fails with it), and names it; once Swarm's
    rollback completed, there is nothing left to follow."""
    for state, want in (
        ("rollback_started", {"team_api": OLD["team_api"]}),
        ("rollback_paused", {"team_api": OLD["team_api"]}),
        ("rollback_completed", {}),
        ("completed", {}),  # an earlier release's update: this one never changed the API
    ):
        _, cluster, _ = undo(job_changed=False, api_state=state)
        assert rollout.to_undo(cluster, OLD) == want, state
