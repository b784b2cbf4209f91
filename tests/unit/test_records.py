"""Records as Swarm configs (the in-memory manager of conftest): a load is one list call, a
claim is taken once, and pruning keeps the newest records and what readers still need."""

from __future__ import annotations

from cdtasks import records

SVC = "go-demo"


def counting(manager) -> list[str]:
    """The (method, path) of every call the fake manager answers from now on."""
    calls, answer = [], manager.store._answer

    def spy(method, path, query, body):
        calls.append(f"{method} {path.split('/', 2)[2]}")
        return answer(method, path, query, body)

    manager.store._answer = spy
    return calls


def test_a_load_is_one_list_call_in_creation_order(swarm_manager):
    for n in range(5):
        records.put(swarm_manager, "history", SVC, {"n": n})
    records.put(swarm_manager, "history", "other", {"n": 99})
    calls = counting(swarm_manager)
    assert [r["n"] for r in records.load(swarm_manager, "history", SVC)] == [0, 1, 2, 3, 4]
    assert calls == ["GET configs"]


def test_a_load_asks_for_each_record_only_when_the_list_lacks_its_data(swarm_manager):
    records.put(swarm_manager, "history", SVC, {"n": 1})
    answer = swarm_manager.store._answer

    def lists_without_data(method, path, query, body):
        status, payload = answer(method, path, query, body)
        if path.endswith("/configs") and method == "GET":
            return status, [
                {**c, "Spec": {k: v for k, v in c["Spec"].items() if k != "Data"}} for c in payload
            ]
        return status, payload

    swarm_manager.store._answer = lists_without_data
    calls = counting(swarm_manager)
    assert records.load(swarm_manager, "history", SVC) == [{"n": 1}]
    assert calls[0] == "GET configs" and calls[1].startswith("GET configs/") and len(calls) == 2


def test_a_claim_is_taken_once(swarm_manager):
    assert records.claim(swarm_manager, "watch", SVC, "repo\0main\0abc", {"who": 1})
    assert not records.claim(swarm_manager, "watch", SVC, "repo\0main\0abc", {"who": 2})
    assert records.claim(swarm_manager, "watch", SVC, "repo\0main\0def", {"who": 3})
    assert records.claim(swarm_manager, "watch", "other", "repo\0main\0abc", {"who": 4})
    assert [r["who"] for r in records.load(swarm_manager, "watch", SVC)] == [1, 3]
    assert len(records.claim_name("watch", "x" * 63, "k" * 500)) <= 64  # Swarm's limit


def test_prunable_keeps_the_newest_and_the_newest_of_each_group():
    rows = [
        {"b": "quiet", "n": 0},
        {"b": None, "n": 1},
        {"b": "quiet", "n": 2},
        {"b": None, "n": 3},
        {"b": "busy", "n": 4},
        {"b": "busy", "n": 5},
        {"b": None, "n": 6},
    ]
    assert records.prunable(rows, keep=3) == [0, 1, 2, 3]
    # the quiet group's newest (2) stays although older than the newest three
    assert records.prunable(rows, keep=3, group=lambda r: r["b"]) == [0, 1, 3]
    assert records.prunable(rows, keep=10) == []
    assert records.prunable([], keep=0) == []


def test_each_put_prunes_its_kind_beyond_keep(swarm_manager, monkeypatch):
    monkeypatch.setattr(records, "KEEP", 4)
    records.put(
        swarm_manager,
        "history",
        SVC,
        {"n": -1, "result": "deployed"},
        group=lambda r: r.get("result") == "deployed" or None,
    )
    for n in range(10):
        records.put(
            swarm_manager,
            "history",
            SVC,
            {"n": n, "result": "failed"},
            group=lambda r: r.get("result") == "deployed" or None,
        )
        records.put(swarm_manager, "delivered", SVC, {"n": n})
    lock = records.Lock(swarm_manager, SVC, "1").acquire(0, heartbeat=False)
    assert [r["n"] for r in records.load(swarm_manager, "history", SVC)] == [-1, 6, 7, 8, 9]
    assert [r["n"] for r in records.load(swarm_manager, "delivered", SVC)] == [6, 7, 8, 9]
    assert records.lock_state(swarm_manager, SVC).id == lock.id  # locks are not records
    assert records.prune(swarm_manager, "delivered", SVC, 2) == 2
