"""A release as data: which services it changes, what goes back after a failure, what the
history keeps and what `inv rollback` moves the set back to."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdtasks import release, rollout, stackplan
from cdtasks.compose import ContractError, model_of
from cdtasks.config import load
from cdtasks.runner import StepFailed
from cdtasks.services import Rollout

API_11 = "localhost:5000/team-api:1.1@sha256:aa"
WORKER_11 = "localhost:5000/team-worker:1.1@sha256:bb"


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("localhost:5000/team-api:1.1@sha256:aa", "team-api"),
        ("registry.example.org:443/team/api:2", "team/api"),
        ("team-worker", "team-worker"),
        ("team-worker:latest", "team-worker"),
        ("cdtasks/redis:7.0", "cdtasks/redis"),
    ],
)
def test_image_name_drops_registry_tag_and_digest(ref, name):
    assert release.image_name(ref) == name


def model(services: dict):
    return model_of(Path("ci.yml"), {"services": services})


def test_every_built_service_is_an_image_of_the_release_app_as_app_image():
    m = model(
        {
            "app": {"build": {"context": "."}, "image": "team-api"},
            "worker": {"build": {"context": "."}, "image": "localhost:5000/team-worker:dev"},
            "unit": {"image": "cdtasks/python:3.11"},
        }
    )
    assert release.built_names(m, "api-in-registry") == {
        "app": "api-in-registry",
        "worker": "team-worker",
    }


def test_a_built_service_without_an_image_name_is_refused():
    m = model({"app": {"build": {"context": "."}}, "worker": {"build": {"context": "."}}})
    with pytest.raises(ContractError, match="service worker builds an image but names none"):
        release.built_names(m, "team-api")


def test_members_are_the_stack_services_running_a_released_image_jobs_included():
    stack = [
        release.StackMember("team_api", "localhost:5000/team-api:1.0"),
        release.StackMember("team_migrate", "localhost:5000/team-api:1.0"),
        release.StackMember("team_worker", "localhost:5000/team-worker:1.0"),
        release.StackMember("team_store", "cdtasks/redis:7.0"),
    ]
    published = {"app": API_11, "worker": WORKER_11}
    assert release.members(stack, published) == {
        "team_api": API_11,
        "team_migrate": API_11,
        "team_worker": WORKER_11,
    }


def test_after_a_failure_every_member_that_moved_goes_back_also_those_that_succeeded():
    after = {"team_api": API_11, "team_worker": WORKER_11}
    before = {"team_api": "api:1.0", "team_worker": WORKER_11}  # the worker ran 1.1 already
    assert release.changed(after, before) == {"team_api": "api:1.0"}
    assert release.parts(after, before) == [
        {"service": "team_api", "image": API_11, "previous": "api:1.0"},
        {"service": "team_worker", "image": WORKER_11, "previous": WORKER_11},
    ]


def entry(result: str, images: dict, previous: dict) -> dict:
    return {"service": "team", "result": result, "services": release.parts(images, previous)}


def test_rollback_target_is_the_last_successful_release_other_than_the_running_one():
    v10 = {"team_api": "api:1.0", "team_worker": "worker:1.0"}
    v11 = {"team_api": "api:1.1", "team_worker": "worker:1.1"}
    v12 = {"team_api": "api:1.2", "team_worker": "worker:1.2"}
    history = [
        entry("deployed", v11, v10),
        entry("deployed", v12, v11),
        entry("failed, rolled back", {"team_api": "api:1.3"}, v12),
    ]
    assert release.rollback_target(history, v12) == v11
    # Only the running release succeeded: what ran before it (made by `inv services`).
    assert release.rollback_target(history[:1], v11) == v10
    assert release.rollback_target([], v11) == {}


def test_the_book_entries_of_one_service_read_as_a_set_of_one():
    old = {"service": "go-demo", "image": "go-demo:1.1", "previous": "go-demo:1.0"}
    assert release.images_of(old) == {"go-demo": "go-demo:1.1"}
    assert release.previous_of(old) == {"go-demo": "go-demo:1.0"}
    assert release.rollback_target([{**old, "result": "deployed"}], {"go-demo": "go-demo:1.2"}) == {
        "go-demo": "go-demo:1.1"
    }


def test_the_plan_of_a_release_names_each_member_before_and_after_and_the_way_back():
    v10 = {"team_api": "api:1.0@sha256:a0", "team_worker": "worker:1.0@sha256:b0"}
    v11 = {"team_api": API_11, "team_worker": WORKER_11}
    running = {"team_api": (v10["team_api"], 2), "team_worker": (v10["team_worker"], None)}
    p = release.plan("prod", "team", "1.1", v11, running, [], ["team_seed", "team_worker"])
    assert [(m.service, m.before, m.after, m.replicas, m.changes) for m in p.moves] == [
        ("team_api", v10["team_api"], API_11, 2, True),
        ("team_worker", v10["team_worker"], WORKER_11, None, True),
    ]
    assert p.images == v11 and p.before == v10
    assert p.rollback == v10  # once 1.1 runs, `inv rollback` goes back to what ran before it
    doc = p.doc()
    assert doc["services"][0] == {
        "service": "team_api",
        "before": v10["team_api"],
        "after": API_11,
        "digest_before": "sha256:a0",
        "digest_after": "sha256:aa",
        "replicas": 2,
        "changes": True,
    }
    # a job on a released image runs first (a gate); one on another image is left alone
    assert doc["rollback"] == v10 and doc["jobs"] == [
        {"service": "team_seed", "runs": False},
        {"service": "team_worker", "runs": True},
    ]
    # deployed already: nothing changes, and the way back is the release before it
    done = [entry("deployed", v11, v10)]
    same = {s: (i, 1) for s, i in v11.items()}
    p = release.plan("prod", "team", "1.1", v11, same, done)
    assert not any(m.changes for m in p.moves) and p.rollback == v10 and p.jobs == ()


def test_the_key_is_the_stack_the_sample_s_by_default(tmp_path):
    (tmp_path / "stacked").mkdir()
    (tmp_path / "book").mkdir()
    (tmp_path / "stacked" / "test.env").write_text("STACK_FILE=stack.yml\nSTACK_NAME=team\n")
    (tmp_path / "book" / "test.env").write_text("")
    stacked = load("test", environ={}, env_dir=tmp_path / "stacked", project_dir=tmp_path)
    book = load("test", environ={}, env_dir=tmp_path / "book", project_dir=tmp_path)
    assert release.key(stacked) == "team"
    assert release.key(book) == "go-demo" and book.stack.stack_file == tmp_path / "demo/stack.yml"


def test_a_rollback_swarm_did_by_itself_fails_the_release_naming_each_service():
    results = [
        Rollout("team_api", API_11, "completed", 3.0),
        Rollout("team_worker", WORKER_11, "rollback_completed", 9.0, "Swarm rolled back"),
        Rollout("team_web", "web:2", "paused", 9.0, "task exited"),
    ]
    with pytest.raises(StepFailed) as failed:
        rollout.check(results)
    assert str(failed.value) == (
        "rolling update of team_worker ended rollback_completed: Swarm rolled back; "
        "rolling update of team_web ended paused: task exited"
    )
    assert rollout.check(results[:1]) == results[:1]


def test_a_release_of_several_is_watched_through_the_monitor_period_the_book_is_not(monkeypatch):
    """A worker that dies a second after it started looked converged: a release of several
    services is done only once every one of them kept running through Swarm's monitor period
    (then its failure undoes the set); the book's one service overlaps that period with its
    production tests instead."""
    from types import SimpleNamespace

    from cdtasks import services

    watched = []

    def wait_rollout(gw, name, image, timeout, log, stable_until=None, node_client=None):
        watched.append((name, stable_until is not None))
        if stable_until is not None and name == "team_worker":
            return Rollout(name, image, "paused", 6.0, "task: non-zero exit (1)")
        return Rollout(name, image, "converged", 2.0)

    monkeypatch.setattr(rollout, "prepull", lambda *a: [])
    monkeypatch.setattr(rollout.stack, "job_names", lambda s: set())
    marks = []
    monkeypatch.setattr(services, "update_image", lambda *a, **k: marks.append(k["labels"]))
    monkeypatch.setattr(services, "wait_rollout", wait_rollout)
    stack = SimpleNamespace(stack=SimpleNamespace(stack_file="stack.yml"))
    cluster = SimpleNamespace(gateway=lambda log=None: None, client=None, settings=stack)
    app = SimpleNamespace(services_timeout=60)
    both = {"team_api": API_11, "team_worker": WORKER_11}
    with pytest.raises(StepFailed, match="team_worker ended paused: task: non-zero exit"):
        rollout.update(cluster, app, both, print)
    assert sorted(watched) == [
        ("team_api", False),
        ("team_api", True),
        ("team_worker", False),
        ("team_worker", True),
    ]
    # each stack service is marked as released (`inv services` then keeps its image)
    assert marks == [{stackplan.RELEASED: API_11}, {stackplan.RELEASED: WORKER_11}]
    watched.clear()
    [one] = rollout.update(cluster, app, {"team_worker": WORKER_11}, print)
    assert one.state == "converged" and watched == [("team_worker", False)]


def test_the_monitor_period_counts_from_the_last_start_as_seen_not_from_when_read(monkeypatch):
    """A release of several watches Swarm's monitor period inside `update`; the caller reads
    the start afterwards, for the production tests' own watch: counted from when each rollout
    was seen, the period is not waited for a second time."""
    results = [
        Rollout("team_api", API_11, "converged", 3.0, running_for=2.0, seen_at=100.0),
        Rollout("team_worker", WORKER_11, "converged", 4.0, running_for=1.0, seen_at=100.5),
    ]
    monkeypatch.setattr(rollout.time, "monotonic", lambda: 106.0)  # read after the period
    assert rollout.monitor_start(results) == 99.5  # the worker's replica started last
    assert rollout.monitor_start([]) == 106.0  # nothing seen: the period counts from now
