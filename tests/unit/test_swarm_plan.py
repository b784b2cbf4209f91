"""Swarm membership and label plans as plain data, and parsing of Engine API answers (no engine)."""

from __future__ import annotations

import threading
from pathlib import Path

import docker
import pytest
import requests

from cdtasks import swarm
from cdtasks.config import load
from cdtasks.gateway import Node, NodeInfo, info_of, node_of
from cdtasks.swarm import Action, SwarmError, leave, plan_labels, plan_membership, routing_mode

N1, N2, N3 = "swarm-test-1", "swarm-test-2", "swarm-test-3"
CLUSTER = "wupxe8p8ycmgdohlrzuzrudu2"
OTHER_CLUSTER = "kl0x3m2ol9ie2arny63bjxn4f"


def settings(tmp_path: Path, **keys: str):
    text = "".join(
        f"{k}={v}\n" for k, v in {"NODES": f"{N1},{N2},{N3}", "CD_NODE": N1, **keys}.items()
    )
    (tmp_path / "test.env").write_text(text)
    return load("test", environ={}, env_dir=tmp_path)


def inactive(name: str) -> NodeInfo:
    return NodeInfo(name=name, address=f"10.0.0.{name[-1]}", state="inactive")


def active(name: str, node_id: str, manager: bool = True, cluster: str = CLUSTER) -> NodeInfo:
    return NodeInfo(
        name=name,
        address=f"10.0.0.{name[-1]}",
        state="active",
        node_id=node_id,
        cluster_id=cluster,
        manager=manager,
    )


def member(
    node_id: str,
    hostname: str,
    role: str = "manager",
    status: str = "ready",
    labels=None,
    leader: bool = False,
) -> Node:
    return Node(
        id=node_id, hostname=hostname, role=role, status=status, labels=labels or {}, leader=leader
    )


def kinds(actions) -> list[tuple[str, str]]:
    return [(a.kind, a.node) for a in actions]


# -- plan_membership ------------------------------------------------------------------------------
def test_fresh_cluster_inits_the_leader_and_joins_the_rest_with_their_roles(tmp_path):
    s = settings(tmp_path, WORKERS=N3)
    infos = {n: inactive(n) for n in s.cluster.nodes}
    plan = plan_membership(s.cluster, infos, [])
    assert plan == (
        Action("init", N1),
        Action("join", N2, {"role": "manager"}),
        Action("join", N3, {"role": "worker"}),
    )


def test_fresh_cluster_whose_first_node_is_a_worker_inits_on_the_first_manager(tmp_path):
    s = settings(tmp_path, WORKERS=N1)
    plan = plan_membership(s.cluster, {n: inactive(n) for n in s.cluster.nodes}, [])
    assert plan[0] == Action("init", N2)
    assert sorted(plan[1:], key=str) == [
        Action("join", N1, {"role": "worker"}),
        Action("join", N3, {"role": "manager"}),
    ]


def test_converged_cluster_needs_nothing(tmp_path):
    s = settings(tmp_path)
    infos = {N1: active(N1, "id1"), N2: active(N2, "id2"), N3: active(N3, "id3")}
    members = [member("id1", N1, leader=True), member("id2", N2), member("id3", N3)]
    assert plan_membership(s.cluster, infos, members) == ()


def test_recreated_node_has_its_stale_entry_removed_then_joins(tmp_path):
    s = settings(tmp_path)
    infos = {N1: active(N1, "id1"), N2: active(N2, "id2"), N3: inactive(N3)}
    members = [member("id1", N1, leader=True), member("id2", N2), member("old3", N3, status="down")]
    assert plan_membership(s.cluster, infos, members) == (
        Action("remove", N3, {"id": "old3", "role": "manager"}),
        Action("join", N3, {"role": "manager"}),
    )


def test_recreated_worker_removal_carries_the_worker_role(tmp_path):
    s = settings(tmp_path, WORKERS=N3)
    infos = {N1: active(N1, "id1"), N2: active(N2, "id2"), N3: inactive(N3)}
    members = [
        member("id1", N1, leader=True),
        member("id2", N2),
        member("old3", N3, role="worker", status="down"),
    ]
    assert plan_membership(s.cluster, infos, members) == (
        Action("remove", N3, {"id": "old3", "role": "worker"}),
        Action("join", N3, {"role": "worker"}),
    )


def test_recreated_leader_joins_the_running_swarm_instead_of_a_new_init(tmp_path):
    s = settings(tmp_path)
    infos = {N1: inactive(N1), N2: active(N2, "id2"), N3: active(N3, "id3")}
    members = [member("old1", N1, status="down"), member("id2", N2, leader=True), member("id3", N3)]
    plan = plan_membership(s.cluster, infos, members)
    assert "init" not in [a.kind for a in plan]
    assert plan == (
        Action("remove", N1, {"id": "old1", "role": "manager"}),
        Action("join", N1, {"role": "manager"}),
    )


def test_ready_entry_of_the_running_node_is_not_removed(tmp_path):
    """Only entries that are not the running node *and* not ready are stale."""
    s = settings(tmp_path)
    infos = {N1: active(N1, "id1"), N2: active(N2, "id2"), N3: active(N3, "id3")}
    members = [
        member("id1", N1),
        member("id2", N2),
        member("id3", N3),
        member("old3", N3, status="down"),
        member("gone2", N2, status="unknown"),
    ]
    plan = plan_membership(s.cluster, infos, members)
    assert sorted(plan, key=str) == [
        Action("remove", N2, {"id": "gone2", "role": "manager"}),
        Action("remove", N3, {"id": "old3", "role": "manager"}),
    ]
    assert all(a.detail["id"] not in ("id1", "id2", "id3") for a in plan)


def test_node_in_another_swarm_is_refused_by_name(tmp_path):
    s = settings(tmp_path)
    infos = {
        N1: active(N1, "id1"),
        N2: active(N2, "id2"),
        N3: active(N3, "x3", cluster=OTHER_CLUSTER),
    }
    members = [member("id1", N1, leader=True), member("id2", N2)]
    with pytest.raises(SwarmError) as exc:
        plan_membership(s.cluster, infos, members)
    assert N3 in str(exc.value)
    assert "another swarm" in str(exc.value)
    assert OTHER_CLUSTER[:12] in str(exc.value)


@pytest.mark.parametrize("state", ["pending", "error", "locked"])
def test_node_in_a_broken_state_is_refused_by_name(tmp_path, state):
    s = settings(tmp_path)
    infos = {
        N1: active(N1, "id1"),
        N2: active(N2, "id2"),
        N3: NodeInfo(N3, "10.0.0.3", state, node_id="id3"),
    }
    with pytest.raises(SwarmError) as exc:
        plan_membership(s.cluster, infos, [member("id1", N1), member("id2", N2)])
    assert N3 in str(exc.value) and repr(state) in str(exc.value)


def test_no_manager_and_leader_not_inactive_is_refused(tmp_path):
    s = settings(tmp_path)
    infos = {N1: NodeInfo(N1, "10.0.0.1", "error"), N2: inactive(N2), N3: inactive(N3)}
    with pytest.raises(SwarmError) as exc:
        plan_membership(s.cluster, infos, [])
    assert N1 in str(exc.value) and "'error'" in str(exc.value)


def test_worker_that_should_be_a_manager_is_promoted(tmp_path):
    s = settings(tmp_path)  # every node a manager
    infos = {N1: active(N1, "id1"), N2: active(N2, "id2"), N3: active(N3, "id3", manager=False)}
    members = [member("id1", N1, leader=True), member("id2", N2), member("id3", N3, role="worker")]
    assert plan_membership(s.cluster, infos, members) == (Action("promote", N3),)


def test_manager_that_should_be_a_worker_is_demoted(tmp_path):
    s = settings(tmp_path, WORKERS=N3)
    infos = {N1: active(N1, "id1"), N2: active(N2, "id2"), N3: active(N3, "id3")}
    members = [member("id1", N1, leader=True), member("id2", N2), member("id3", N3)]
    assert plan_membership(s.cluster, infos, members) == (Action("demote", N3),)


def test_role_is_read_from_the_entry_of_the_running_node_not_a_stale_one(tmp_path):
    s = settings(tmp_path)
    infos = {N1: active(N1, "id1"), N2: active(N2, "id2"), N3: active(N3, "id3")}
    members = [
        member("id1", N1),
        member("id2", N2),
        member("id3", N3),
        member("old3", N3, role="worker", status="down"),
    ]
    plan = plan_membership(s.cluster, infos, members)
    assert plan == (Action("remove", N3, {"id": "old3", "role": "worker"}),)


def test_action_str():
    assert str(Action("init", N1)) == f"init {N1}"
    assert str(Action("join", N2, {"role": "worker"})) == f"join {N2} (role=worker)"


# -- plan_labels ----------------------------------------------------------------------------------
LABELS = f"{N2}:env=prod-like,{N3}:env=prod-like"


def test_missing_and_wrong_labels_are_set_on_the_right_ids(tmp_path):
    s = settings(tmp_path, NODE_LABELS=LABELS)
    members = [member("id1", N1), member("id2", N2), member("id3", N3, labels={"env": "prod"})]
    assert plan_labels(s.cluster, members) == (
        Action("label", N2, {"id": "id2", "key": "env", "value": "prod-like"}),
        Action("label", N3, {"id": "id3", "key": "env", "value": "prod-like"}),
    )


def test_labels_already_right_need_nothing(tmp_path):
    s = settings(tmp_path, NODE_LABELS=LABELS)
    members = [
        member("id1", N1, labels={"other": "x"}),
        member("id2", N2, labels={"env": "prod-like"}),
        member("id3", N3, labels={"env": "prod-like", "extra": "kept"}),
    ]
    assert plan_labels(s.cluster, members) == ()


def test_labels_go_to_the_ready_entry_and_skip_absent_nodes(tmp_path):
    s = settings(tmp_path, NODE_LABELS=f"{N1}:zone=a,{N1}:env=prod-like,{LABELS}")
    members = [
        member("old2", N2, status="down"),
        member("id2", N2),
        member("id3", N3, status="down"),
    ]  # N1 absent, N3 only down
    assert plan_labels(s.cluster, members) == (
        Action("label", N2, {"id": "id2", "key": "env", "value": "prod-like"}),
    )


def test_several_labels_of_one_node_are_planned_in_key_order(tmp_path):
    s = settings(tmp_path, NODE_LABELS=f"{N1}:zone=a,{N1}:env=prod,{N1}:disk=ssd")
    plan = plan_labels(s.cluster, [member("id1", N1, labels={"env": "prod"})])
    assert [(a.detail["key"], a.detail["value"]) for a in plan] == [("disk", "ssd"), ("zone", "a")]
    assert {a.detail["id"] for a in plan} == {"id1"}


# -- routing_mode ---------------------------------------------------------------------------------
def test_auto_routing_uses_the_mesh_when_every_node_has_ipvs(tmp_path):
    s = settings(tmp_path)
    mode, reason = routing_mode(s.cluster, s.source, {N1: True, N2: True, N3: True})
    assert mode == "mesh"
    assert "IPVS" in reason


def test_auto_routing_falls_back_to_dnsrr_and_names_the_nodes_without_ipvs(tmp_path):
    s = settings(tmp_path)
    mode, reason = routing_mode(s.cluster, s.source, {N1: True, N3: False, N2: False})
    assert mode == "dnsrr"
    assert f"{N2}, {N3}" in reason
    assert N1 not in reason


@pytest.mark.parametrize("forced", ["mesh", "dnsrr"])
def test_forced_routing_ignores_the_probe(tmp_path, forced):
    s = settings(tmp_path, ROUTING=forced)
    for probes in ({N1: True, N2: True, N3: True}, {N1: False, N2: False, N3: False}):
        mode, reason = routing_mode(s.cluster, s.source, probes)
        assert mode == forced
        assert f"ROUTING={forced}" in reason
        assert s.source in reason


# -- parsing Engine API answers -------------------------------------------------------------------
# `GET /info` of a manager (Swarm section as in the Engine API's SystemInfo / SwarmInfo).
MANAGER_INFO = {
    "ID": "7TRN:IPZB:QYBB:VPBQ:UWYJ:KDZP:FUJC:AWRV:7VEL:2Q6A:4HQB:XT5G",
    "Name": N1,
    "ServerVersion": "20.10.24+dfsg1",
    "Swarm": {
        "NodeID": "24ifsmvkjbyhk",
        "NodeAddr": "10.0.0.1",
        "LocalNodeState": "active",
        "ControlAvailable": True,
        "Error": "",
        "RemoteManagers": [
            {"NodeID": "24ifsmvkjbyhk", "Addr": "10.0.0.1:2377"},
            {"NodeID": "71e9s2pkbw3r4", "Addr": "10.0.0.2:2377"},
        ],
        "Nodes": 3,
        "Managers": 2,
        "Cluster": {
            "ID": CLUSTER,
            "Version": {"Index": 373531},
            "CreatedAt": "2016-08-18T10:44:24.496525531Z",
            "UpdatedAt": "2017-08-09T07:09:37.632105588Z",
            "Spec": {
                "Name": "default",
                "Labels": {},
                "Orchestration": {"TaskHistoryRetentionLimit": 5},
                "Raft": {
                    "SnapshotInterval": 10000,
                    "KeepOldSnapshots": 0,
                    "LogEntriesForSlowFollowers": 500,
                    "ElectionTick": 10,
                    "HeartbeatTick": 1,
                },
                "Dispatcher": {"HeartbeatPeriod": 5000000000},
                "CAConfig": {"NodeCertExpiry": 7776000000000000},
                "TaskDefaults": {},
                "EncryptionConfig": {"AutoLockManagers": False},
            },
            "TLSInfo": {
                "TrustRoot": "-----BEGIN CERTIFICATE-----\n...",
                "CertIssuerSubject": "MBMxETAPBgNVBAMTCHN3YXJtLWNh",
                "CertIssuerPublicKey": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
            },
            "RootRotationInProgress": False,
            "DataPathPort": 4789,
            "DefaultAddrPool": ["10.0.0.0/8"],
            "SubnetSize": 24,
        },
    },
}

# `GET /info` of a worker: the daemon fills in Cluster only for an active manager.
WORKER_INFO = {
    "Name": N3,
    "Swarm": {
        "NodeID": "8dvxq0pq0hd3o",
        "NodeAddr": "10.0.0.3",
        "LocalNodeState": "active",
        "ControlAvailable": False,
        "Error": "",
        "RemoteManagers": [{"NodeID": "24ifsmvkjbyhk", "Addr": "10.0.0.1:2377"}],
    },
}

# `GET /info` of an engine that is in no swarm.
INACTIVE_INFO = {
    "Name": N2,
    "Swarm": {
        "NodeID": "",
        "NodeAddr": "",
        "LocalNodeState": "inactive",
        "ControlAvailable": False,
        "Error": "",
        "RemoteManagers": None,
    },
}


def test_info_of_a_manager():
    info = info_of(N1, "10.0.0.1", MANAGER_INFO)
    assert info == NodeInfo(
        name=N1,
        address="10.0.0.1",
        state="active",
        node_id="24ifsmvkjbyhk",
        cluster_id=CLUSTER,
        manager=True,
        node_addr="10.0.0.1",
    )


def test_info_of_a_worker():
    info = info_of(N3, "10.0.0.3", WORKER_INFO)
    assert info.state == "active"
    assert info.node_id == "8dvxq0pq0hd3o"
    assert info.manager is False
    assert info.cluster_id == ""  # nothing to read: workers are not told the cluster ID


def test_info_of_an_engine_in_no_swarm():
    assert info_of(N2, "10.0.0.2", INACTIVE_INFO) == NodeInfo(N2, "10.0.0.2", "inactive")


def test_info_of_an_answer_without_a_swarm_section():
    info = info_of(N2, "10.0.0.2", {"Name": N2, "Swarm": None})
    assert info.state == "inactive" and info.node_id == "" and not info.manager


# `GET /nodes/{id}` (node inspect) of the leader and of a worker.
LEADER_NODE = {
    "ID": "24ifsmvkjbyhk",
    "Version": {"Index": 373531},
    "CreatedAt": "2016-08-18T10:44:24.496525531Z",
    "UpdatedAt": "2017-08-09T07:09:37.632105588Z",
    "Spec": {
        "Availability": "active",
        "Name": "",
        "Role": "manager",
        "Labels": {"env": "prod-like", "disk": "ssd"},
    },
    "Description": {
        "Hostname": N2,
        "Platform": {"Architecture": "x86_64", "OS": "linux"},
        "Resources": {"NanoCPUs": 4000000000, "MemoryBytes": 8272408576},
        "Engine": {
            "EngineVersion": "20.10.24",
            "Labels": {},
            "Plugins": [{"Type": "Network", "Name": "overlay"}],
        },
        "TLSInfo": {
            "TrustRoot": "-----BEGIN CERTIFICATE-----\n...",
            "CertIssuerSubject": "MBMxETAPBgNVBAMTCHN3YXJtLWNh",
            "CertIssuerPublicKey": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
        },
    },
    "Status": {"State": "ready", "Message": "", "Addr": "10.0.0.2"},
    "ManagerStatus": {"Leader": True, "Reachability": "reachable", "Addr": "10.0.0.2:2377"},
}

WORKER_NODE = {
    "ID": "8dvxq0pq0hd3o",
    "Version": {"Index": 12},
    "Spec": {"Role": "worker", "Availability": "drain"},
    "Description": {"Hostname": N3, "Platform": {"Architecture": "x86_64", "OS": "linux"}},
    "Status": {"State": "down", "Message": "heartbeat failure", "Addr": "10.0.0.3"},
}


def test_node_of_the_leader():
    m = node_of(LEADER_NODE)
    assert m == Node(
        id="24ifsmvkjbyhk",
        hostname=N2,
        role="manager",
        status="ready",
        availability="active",
        labels={"env": "prod-like", "disk": "ssd"},
        leader=True,
        reachability="reachable",
        addr="10.0.0.2",
        os="linux",
        arch="x86_64",
    )


def test_node_of_a_worker_without_manager_status_or_labels():
    m = node_of(WORKER_NODE)
    assert (m.id, m.hostname, m.role, m.status, m.availability) == (
        "8dvxq0pq0hd3o",
        N3,
        "worker",
        "down",
        "drain",
    )
    assert m.labels == {}
    assert m.leader is False and m.reachability == ""
    assert m.addr == "10.0.0.3"


def test_member_labels_are_a_copy():
    node = {**LEADER_NODE, "Spec": dict(LEADER_NODE["Spec"], Labels={"env": "prod-like"})}
    m = node_of(node)
    node["Spec"]["Labels"]["env"] = "changed"
    assert m.labels == {"env": "prod-like"}


def test_parsed_converged_cluster_plans_nothing(tmp_path):
    """From Engine answers to plans: three managers of one swarm, labels set -> no action."""
    s = settings(tmp_path, NODE_LABELS=f"{N2}:env=prod-like")
    infos, members = {}, []
    for i, name in enumerate((N1, N2, N3), 1):
        sw = dict(MANAGER_INFO["Swarm"], NodeID=f"id{i}", NodeAddr=f"10.0.0.{i}")
        infos[name] = info_of(name, f"10.0.0.{i}", {"Swarm": sw})
        node = dict(
            LEADER_NODE,
            ID=f"id{i}",
            Description=dict(LEADER_NODE["Description"], Hostname=name),
            Spec=dict(LEADER_NODE["Spec"], Labels={"env": "prod-like"} if name == N2 else {}),
            ManagerStatus={"Leader": i == 1, "Reachability": "reachable"},
        )
        members.append(node_of(node))
    assert plan_membership(s.cluster, infos, members) == ()
    assert plan_labels(s.cluster, members) == ()


# -- known defect (documented, not fixed here) ----------------------------------------------------
def _cluster_with_worker_n3(worker_role_in_list: str):
    infos = {
        N1: info_of(
            N1, "10.0.0.1", dict(MANAGER_INFO, Swarm=dict(MANAGER_INFO["Swarm"], NodeID="id1"))
        ),
        N2: info_of(
            N2, "10.0.0.2", dict(MANAGER_INFO, Swarm=dict(MANAGER_INFO["Swarm"], NodeID="id2"))
        ),
        N3: info_of(
            N3, "10.0.0.3", dict(WORKER_INFO, Swarm=dict(WORKER_INFO["Swarm"], NodeID="id3"))
        ),
    }
    members = [
        member("id1", N1, leader=True),
        member("id2", N2),
        member("id3", N3, role=worker_role_in_list),
    ]
    return infos, members


def test_converged_cluster_with_a_worker_from_real_info_needs_nothing(tmp_path):
    s = settings(tmp_path, WORKERS=N3)
    infos, members = _cluster_with_worker_n3("worker")
    assert plan_membership(s.cluster, infos, members) == ()


def test_worker_from_real_info_that_should_be_a_manager_is_promoted(tmp_path):
    s = settings(tmp_path)
    infos, members = _cluster_with_worker_n3("worker")
    assert plan_membership(s.cluster, infos, members) == (Action("promote", N3),)


def test_fresh_cluster_with_a_node_still_in_an_old_swarm_is_refused(tmp_path):
    s = settings(tmp_path, WORKERS=N3)
    infos = {
        N1: inactive(N1),
        N2: inactive(N2),
        N3: info_of(N3, "10.0.0.3", WORKER_INFO),
    }  # a worker of some earlier swarm
    with pytest.raises(SwarmError, match=N3):
        plan_membership(s.cluster, infos, [])


def test_recreated_node_whose_old_entry_still_shows_ready_is_cleaned_up(tmp_path):
    # A lost manager stays Ready/Unreachable for seconds: the new machine must not wait for Down.
    s = settings(tmp_path)
    infos = {N1: active(N1, "id1"), N2: active(N2, "id2"), N3: inactive(N3)}
    old = Node(id="old3", hostname=N3, role="manager", status="ready", reachability="unreachable")
    members = [member("id1", N1, leader=True), member("id2", N2), old]
    assert plan_membership(s.cluster, infos, members) == (
        Action("remove", N3, {"id": "old3", "role": "manager"}),
        Action("join", N3, {"role": "manager"}),
    )


class _LeavingEngine:
    """Answers `info` with a swarm state; a leave is recorded, or refused like the engine does."""

    def __init__(self, state: str, refuse: str = ""):
        self.state, self.refuse, self.left = state, refuse, []
        self.api = self

    def info(self):
        return {"Swarm": {"LocalNodeState": self.state}}

    def leave_swarm(self, force=False):
        if self.refuse:
            raise docker.errors.APIError(
                "500 Server Error", response=requests.Response(), explanation=self.refuse
            )
        self.left.append(force)


def test_leave_is_forced_only_for_a_node_in_a_swarm():
    inside, outside = _LeavingEngine("active"), _LeavingEngine("inactive")
    assert leave(N1, inside) is True and inside.left == [True]
    assert leave(N2, outside) is False and outside.left == []


def test_a_refused_leave_names_the_node_and_the_engine_reason():
    with pytest.raises(SwarmError, match=f"node {N2} cannot leave its swarm: context deadline"):
        leave(N2, _LeavingEngine("active", refuse="context deadline exceeded"))


# -- apply: what goes one at a time, what side by side -------------------------------------------
def test_apply_runs_init_and_manager_joins_in_order_before_workers_and_labels(
    tmp_path, monkeypatch
):
    s = settings(tmp_path, NODES="n1,n2,n3,n4,n5", CD_NODE="n1", WORKERS="n4,n5")
    gate, order, lock = threading.Barrier(2, timeout=5), [], threading.Lock()

    def fake(cluster_, env_, clients, addresses, action, log):
        with lock:
            order.append(str(action))
        if action.kind == "join" and action.detail["role"] == "worker":
            gate.wait()  # passes only when both workers' joins run at the same time

    monkeypatch.setattr(swarm, "_apply_one", fake)
    actions = [
        Action("init", "n1"),
        Action("join", "n2", {"role": "manager"}),
        Action("join", "n4", {"role": "worker"}),
        Action("join", "n3", {"role": "manager"}),
        Action("join", "n5", {"role": "worker"}),
    ]
    swarm.apply(s.cluster, s.env, {}, {}, actions, lambda m: None)
    assert order[:3] == ["init n1", "join n2 (role=manager)", "join n3 (role=manager)"]
    assert sorted(order[3:]) == ["join n4 (role=worker)", "join n5 (role=worker)"]

    order.clear()
    gate = threading.Barrier(2, timeout=5)
    labels = [
        Action("label", "n2", {"id": "a", "key": "k1", "value": "1"}),
        Action("label", "n3", {"id": "b", "key": "k", "value": "v"}),
        Action("label", "n2", {"id": "a", "key": "k2", "value": "2"}),
    ]

    def fake_labels(cluster_, env_, clients, addresses, action, log):
        with lock:
            order.append(action.detail["key"])
        if action.detail["key"] in ("k1", "k"):
            gate.wait()  # n2's first label and n3's label at the same time

    monkeypatch.setattr(swarm, "_apply_one", fake_labels)
    swarm.apply(s.cluster, s.env, {}, {}, labels, lambda m: None)
    assert order.index("k1") < order.index("k2")  # one node's labels stay in order
    assert sorted(order) == ["k", "k1", "k2"]
