"""The plan of a stack file against what runs (pure): everything created from nothing, nothing
to do once it runs as specified, a changed key named, the routing adapted without IPVS."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cdtasks import gateway, stackfile, stackplan
from cdtasks.stackplan import Actual

TEAM = Path(__file__).resolve().parents[1] / "apps" / "team-stack" / "stack.yml"
VARS = {"REGISTRY": "localhost:5000", "PLACEMENT": "node.labels.env == prod-like"}


def team() -> stackfile.Stack:
    return stackfile.read(TEAM, "team", VARS)


def running(stack, routing="mesh") -> Actual:
    """The cluster after the plan's creates, each object given an ID, specs as requested."""
    nets = {n.name: f"id-{n.name}" for n in stack.networks}
    cfgs = {
        c.name: (f"id-{c.name}", {stackplan.DIGEST: stackplan.digest(c)}) for c in stack.configs
    }
    secs = {c.name: f"id-{c.name}" for c in stack.secrets}
    empty = Actual({}, nets, cfgs, secs)
    p = stackplan.plan(stack, empty, routing)
    return Actual({c.name: c.spec for c in p.changes if c.spec}, nets, cfgs, secs)


def test_from_nothing_everything_is_created_with_stack_names_and_labels():
    p = stackplan.plan(team(), Actual({}, {}, {}, {}), "mesh")
    made = [(c.kind, c.name, c.action) for c in p.changes]
    assert ("network", "team_front", "create") in made
    assert ("config", "team_haproxy", "create") in made and (
        "secret",
        "team_api_token",
        "create",
    ) in made
    services = {c.name: c.spec for c in p.changes if c.kind == "service"}
    assert sorted(services) == [
        "team_api",
        "team_migrate",
        "team_proxy",
        "team_store",
        "team_worker",
    ]
    api = services["team_api"]
    assert api["Labels"] == {
        "team.role": "api",
        "com.docker.stack.namespace": "team",
        "com.docker.stack.image": "localhost:5000/team-api:1.0",
    }
    assert api["TaskTemplate"]["Networks"][0]["Aliases"] == ["api", "team-api"]
    assert api["TaskTemplate"]["Placement"]["MaxReplicas"] == 2
    assert api["UpdateConfig"]["Order"] == "start-first"
    assert services["team_migrate"]["Mode"] == {
        "ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}
    }
    assert services["team_proxy"]["Mode"] == {"Global": {}}
    assert services["team_worker"]["TaskTemplate"]["ContainerSpec"]["Labels"] == {
        "team.role": "worker",
        "com.docker.stack.namespace": "team",
    }
    mount = services["team_store"]["TaskTemplate"]["ContainerSpec"]["Mounts"][0]
    assert mount["Source"] == "team_store-data"
    assert mount["VolumeOptions"]["Labels"] == {"com.docker.stack.namespace": "team"}


def test_once_it_runs_nothing_changes():
    stack = team()
    assert stackplan.plan(stack, running(stack), "mesh").changes == ()


def test_a_changed_key_is_named():
    stack = team()
    have = running(stack)
    api = stack.service("api")
    changed = replace(
        stack,
        services=tuple(
            replace(s, deploy=replace(s.deploy, replicas=3)) if s is api else s
            for s in stack.services
        ),
    )
    p = stackplan.plan(changed, have, "mesh")
    assert [(c.name, c.action, list(c.keys)) for c in p.changes] == [
        ("team_api", "update", [("deploy.replicas", "3", "2")])
    ]


def test_a_changed_config_file_and_an_extra_service_are_drift():
    stack = team()
    have = running(stack)
    cfgs = dict(have.configs)
    cfgs["team_greeting"] = (cfgs["team_greeting"][0], {stackplan.DIGEST: "old"})
    services = {**have.services, "team_old": {"Name": "team_old"}}
    p = stackplan.plan(stack, replace(have, configs=cfgs, services=services), "mesh")
    assert {(c.name, c.action) for c in p.drift} == {
        ("team_greeting", "changed"),
        ("team_old", "extra"),
    }


def test_without_ipvs_ports_go_host_mode_and_endpoints_dnsrr():
    stack = team()
    p = stackplan.plan(stack, Actual({}, {}, {}, {}), "dnsrr")
    assert set(p.adapted) == set(stack.names)
    proxy = next(c.spec for c in p.changes if c.name == "team_proxy")
    assert proxy["EndpointSpec"]["Mode"] == "dnsrr"
    assert proxy["EndpointSpec"]["Ports"][0]["PublishMode"] == "host"
    assert stackplan.plan(stack, running(stack, "dnsrr"), "dnsrr").changes == ()


def test_swarm_omitting_zero_values_is_no_difference():
    want = {"UpdateConfig": {"Parallelism": 1, "Delay": 0, "FailureAction": "pause"}}
    have = {"UpdateConfig": {"Parallelism": 1, "FailureAction": "pause"}}
    assert stackplan.differences(want, have) == []


def test_the_plan_carried_out_is_the_plan_shown():
    """Services planned before their networks, configs and secrets existed name them; the
    calls get the IDs the creates returned, and nothing is planned again."""
    stack = team()
    p = stackplan.plan(stack, Actual({}, {}, {}, {}), "mesh")
    calls: list = []
    made = stackplan.Calls(
        create_network=lambda name, **kw: f"id-{name}",
        create_config=lambda name, data, labels: f"id-{name}",
        create_secret=lambda name, data, labels: f"id-{name}",
        create_service=lambda spec, ids: calls.append(gateway.spec_request(spec, ids)),
        update_service=lambda name, spec, ids: calls.append(gateway.spec_request(spec, ids)),
    )
    stackplan.apply(stack, p, made, lambda line: None, update=True)
    assert [c["name"] for c in calls] == [c.name for c in p.changes if c.kind == "service"]
    api = next(c for c in calls if c["name"] == "team_api")["task_template"]
    assert [n["Target"] for n in api["Networks"]] == ["id-team_front", "id-team_back"]
    assert api["ContainerSpec"]["Configs"][0]["ConfigID"] == "id-team_greeting"
    assert api["ContainerSpec"]["Secrets"][0]["SecretID"] == "id-team_api_token"
