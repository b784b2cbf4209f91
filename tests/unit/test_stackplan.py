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


def blobs(stack, kind):
    """The stack's configs or secrets as the cluster lists them once created."""
    labels = {stackplan.NAMESPACE: stack.name}
    return {
        b.name: (f"id-{b.name}", {**labels, stackplan.BASE: b.base})
        for b in (stack.configs if kind == "config" else stack.secrets)
    }


def uses_of(spec) -> frozenset:
    cs = spec["TaskTemplate"]["ContainerSpec"]
    return frozenset(
        [("config", r["ConfigName"]) for r in cs.get("Configs") or []]
        + [("secret", r["SecretName"]) for r in cs.get("Secrets") or []]
    )


def uses(spec, previous=None):
    """A service's entry of Actual.uses from its planned spec (and a previous one)."""
    return (uses_of(spec), uses_of(previous) if previous else frozenset())


def running(stack, routing="mesh") -> Actual:
    """The cluster after the plan's creates, each object given an ID, specs as requested."""
    nets = {n.name: f"id-{n.name}" for n in stack.networks}
    cfgs, secs = blobs(stack, "config"), blobs(stack, "secret")
    empty = Actual({}, nets, cfgs, secs)
    p = stackplan.plan(stack, empty, routing)
    specs = {c.name: c.spec for c in p.changes if c.spec}
    return Actual(specs, nets, cfgs, secs, {n: uses(spec) for n, spec in specs.items()})


def test_from_nothing_everything_is_created_with_stack_names_and_labels():
    p = stackplan.plan(team(), Actual({}, {}, {}, {}), "mesh")
    made = [(c.kind, c.name, c.action) for c in p.changes]
    assert ("network", "team_front", "create") in made
    stack = team()
    assert ("config", stack.configs[1].name, "create") in made
    assert ("secret", stack.secrets[0].name, "create") in made
    assert stack.configs[1].name.startswith("team_haproxy-")
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


def with_greeting(stack, text: bytes):
    """The stack with another content in config/greeting.txt."""
    return replace(
        stack,
        configs=tuple(replace(c, data=text) if c.key == "greeting" else c for c in stack.configs),
    )


def greeting(stack) -> str:
    return next(c.name for c in stack.configs if c.key == "greeting")


def test_a_changed_config_file_is_a_new_object_that_its_users_are_updated_to():
    """The running one stays (a rollback needs it); only team_api uses the greeting."""
    old = team()
    have = running(old)
    new = with_greeting(old, b"Hello again\n")
    p = stackplan.plan(new, have, "mesh")
    assert [(c.kind, c.name, c.action, list(c.keys)) for c in p.changes] == [
        ("config", greeting(new), "create", []),
        ("service", "team_api", "update", [("configs", greeting(new), greeting(old))]),
    ]
    assert greeting(new).startswith("team_greeting-") and greeting(new) != greeting(old)
    target = p.changes[1].spec["TaskTemplate"]["ContainerSpec"]["Configs"][0]["File"]["Name"]
    assert target == "/etc/team/greeting.txt"  # the container sees the same path


def test_generations_older_than_the_previous_one_are_retired():
    """team_api runs B (its previous spec A) and the file now says C: C is created, team_api
    updated, B kept as its previous, A retired. A generation that another service or a service
    left unchanged (its previous spec) still uses is kept."""
    a, b, c = (with_greeting(team(), t) for t in (b"A\n", b"B\n", b"C\n"))
    have = running(b)
    cfgs = {**have.configs, **blobs(a, "config")}
    api = have.services["team_api"]
    spec_a = running(a).services["team_api"]
    used = {**have.uses, "team_api": uses(api, spec_a)}
    p = stackplan.plan(c, replace(have, configs=cfgs, uses=used), "mesh")
    assert [(x.kind, x.name, x.action) for x in p.changes] == [
        ("config", greeting(c), "create"),
        ("service", "team_api", "update"),
        ("config", greeting(a), "retire"),
    ]
    # not updated by the plan, its previous spec is what Swarm's rollback goes back to
    kept = {**used, "team_api": uses(api), "team_worker": (frozenset(), uses(spec_a)[0])}
    p = stackplan.plan(b, replace(have, configs=cfgs, uses=kept), "mesh")
    assert p.changes == ()
    # in use by a service outside the stack
    other = {**have.uses, "elsewhere": uses(spec_a)}
    p = stackplan.plan(b, replace(have, configs=cfgs, uses=other), "mesh")
    assert p.changes == ()
    p = stackplan.plan(b, replace(have, configs=cfgs), "mesh")
    assert [(x.name, x.action) for x in p.changes] == [(greeting(a), "retire")]


def without_greeting(stack):
    """The stack file with its `greeting` config key removed, and api's use of it."""
    return replace(
        stack,
        configs=tuple(c for c in stack.configs if c.key != "greeting"),
        services=tuple(
            replace(s, configs=tuple(f for f in s.configs if f.source != "greeting"))
            for s in stack.services
        ),
    )


def test_a_config_key_removed_from_the_file_is_retired_by_the_same_rule():
    """The file no longer declares `greeting` and api no longer uses it: api is updated and the
    config kept while api's spec or previous spec names it (a rollback needs it), then retired
    like an older generation, not left in the cluster for good."""
    old, new = team(), without_greeting(team())
    have = running(old)
    p = stackplan.plan(new, have, "mesh")
    assert [(c.kind, c.name, c.action, list(c.keys)) for c in p.changes] == [
        ("service", "team_api", "update", [("configs", "(none)", greeting(old))]),
    ]
    # api updated: its previous spec still names the config, so it stays
    api = running(new).services["team_api"]
    after = {**have.uses, "team_api": uses(api, have.services["team_api"])}
    updated = replace(have, services={**have.services, "team_api": api}, uses=after)
    assert stackplan.plan(new, updated, "mesh").changes == ()
    # once no spec names it any more (the next update of api), it is retired
    moved = replace(updated, uses={**have.uses, "team_api": uses(api)})
    p = stackplan.plan(new, moved, "mesh")
    assert [(c.kind, c.name, c.action) for c in p.changes] == [("config", greeting(old), "retire")]
    # objects of another stack, or without a stack, are never the plan's
    foreign = {"other_greeting": ("id-o", {stackplan.NAMESPACE: "other"}), "x": ("id-x", {})}
    p = stackplan.plan(new, replace(moved, configs={**moved.configs, **foreign}), "mesh")
    assert [c.name for c in p.changes] == [greeting(old)]


def test_a_stack_deployed_before_converges_to_hashed_names():
    """Configs and secrets named without a hash (a stack made before, or by `docker stack
    deploy`): the hashed ones are created, their users updated, the plain ones kept as the
    previous generation; and a plain one no service uses any more is retired."""
    stack = team()
    legacy = running(stack)
    ns = {stackplan.NAMESPACE: "team"}
    plain = {b.base: (f"id-{b.base}", ns) for b in stack.configs}
    secrets = {b.base: (f"id-{b.base}", ns) for b in stack.secrets}

    def renamed(spec):
        """The spec as it ran then: the plain names and their IDs."""
        cs = dict(spec["TaskTemplate"]["ContainerSpec"])
        for key, id_, name in (
            ("Configs", "ConfigID", "ConfigName"),
            ("Secrets", "SecretID", "SecretName"),
        ):
            if cs.get(key):
                bases = [r[name].rsplit("-", 1)[0] for r in cs[key]]
                cs[key] = [
                    {**r, id_: f"id-{b}", name: b} for r, b in zip(cs[key], bases, strict=True)
                ]
        return {**spec, "TaskTemplate": {**spec["TaskTemplate"], "ContainerSpec": cs}}

    old_specs = {n: renamed(spec) for n, spec in legacy.services.items()}
    before = Actual(
        old_specs, legacy.networks, plain, secrets, {n: uses(x) for n, x in old_specs.items()}
    )
    p = stackplan.plan(stack, before, "mesh")
    made = [(c.kind, c.name, c.action) for c in p.changes]
    assert made == [
        *[("config", b.name, "create") for b in stack.configs],
        ("secret", stack.secrets[0].name, "create"),
        ("service", "team_api", "update"),
        ("service", "team_proxy", "update"),
    ]
    assert [k for k, _, _ in p.changes[3].keys] == ["configs", "secrets"]
    # once updated (the plain names now only in previous specs), nothing more to do...
    after = running(stack)
    moved = {n: (u[0], uses(old_specs[n])[0]) for n, u in after.uses.items()}
    both = replace(after, configs={**after.configs, **plain}, secrets={**after.secrets, **secrets})
    assert stackplan.plan(stack, replace(both, uses=moved), "mesh").changes == ()
    # ...until the next release moves the previous specs on
    p = stackplan.plan(stack, both, "mesh")
    assert sorted((c.kind, c.name, c.action) for c in p.changes) == sorted(
        [("config", n, "retire") for n in plain] + [("secret", "team_api_token", "retire")]
    )


def test_a_secret_shows_by_its_hashed_name_only():
    stack = team()
    token = stack.secrets[0]
    changed = replace(stack, secrets=(replace(token, data=b"s3cret-value\n"),))
    p = stackplan.plan(changed, running(stack), "mesh")
    shown = repr([(c.kind, c.name, c.action, c.keys) for c in p.changes])
    assert ("secret", changed.secrets[0].name, "create") in [
        (c.kind, c.name, c.action) for c in p.changes
    ]
    assert "s3cret" not in shown and "s3cret" not in repr(p)
    assert token.data.decode().strip() not in repr(p)


def test_an_extra_service_is_drift():
    stack = team()
    have = running(stack)
    services = {**have.services, "team_old": {"Name": "team_old"}}
    p = stackplan.plan(stack, replace(have, services=services), "mesh")
    assert [(c.name, c.action) for c in p.drift] == [("team_old", "extra")]


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


def test_a_released_image_is_wanted_while_the_file_names_the_same_image():
    """After a release (rollout.update labels the service with the image it set), the file's
    1.0 is no drift; an image changed by hand is drift back to the release's; a file naming
    another image wins."""
    stack = team()
    have = running(stack)
    api = have.services["team_api"]
    digest = "localhost:5000/team-api:1.1@sha256:" + "a" * 64

    def running_image(image, labels):
        spec = {**api["TaskTemplate"]["ContainerSpec"], "Image": image}
        return {
            **api,
            "TaskTemplate": {**api["TaskTemplate"], "ContainerSpec": spec},
            "Labels": labels,
        }

    def changes(svc):
        return stackplan.plan(
            stack, replace(have, services={**have.services, "team_api": svc}), "mesh"
        ).changes

    marked = {**api["Labels"], stackplan.RELEASED: digest}
    assert changes(running_image(digest, marked)) == ()
    [by_hand] = changes(running_image("localhost:5000/team-api:0.0", marked))
    assert by_hand.keys == (("image", digest, "localhost:5000/team-api:0.0"),)
    assert by_hand.spec["TaskTemplate"]["ContainerSpec"]["Image"] == digest
    # unmarked (never released by cdtasks): the file's image, as before
    [unmarked] = changes(running_image(digest, api["Labels"]))
    assert unmarked.keys[0] == (
        "image",
        "localhost:5000/team-api:1.0",
        "localhost:5000/team-api:1.1",
    )
    # the file names another image than the release's: the file wins
    other = {**api["Labels"], stackplan.RELEASED: "localhost:5000/team-api2:1.1@sha256:" + "b" * 64}
    [renamed] = changes(running_image("localhost:5000/team-api2:1.1", other))
    assert ("image", "localhost:5000/team-api:1.0", "localhost:5000/team-api2:1.1") in renamed.keys


def test_the_engines_defaults_written_at_an_update_are_no_difference():
    """Engine 20.10 writes these into a spec at its first update (seen on the lab: a worker
    without `deploy:` after a release's `--image` update, and the api's rollback_config without
    `monitor`); a changed value is still one."""
    ns = 1_000_000_000
    policy = {
        "Parallelism": 1,
        "FailureAction": "pause",
        "Monitor": 5 * ns,
        "MaxFailureRatio": 0,
        "Order": "stop-first",
    }
    want = {
        "TaskTemplate": {"ContainerSpec": {"Image": "w:1"}},
        "RollbackConfig": {"Parallelism": 0, "FailureAction": "pause", "Order": "stop-first"},
    }
    have = {
        "TaskTemplate": {
            "ContainerSpec": {"Image": "w:1", "StopGracePeriod": 10 * ns},
            "RestartPolicy": {"Condition": "any", "Delay": 5 * ns, "MaxAttempts": 0},
        },
        "UpdateConfig": policy,
        "RollbackConfig": {
            "Parallelism": 0,
            "FailureAction": "pause",
            "Monitor": 5 * ns,
            "Order": "stop-first",
        },
    }
    assert stackplan.differences(want, have) == []
    have["UpdateConfig"] = {**policy, "Parallelism": 2}
    have["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] = 30 * ns
    assert [k for k, _, _ in stackplan.differences(want, have)] == [
        "stop_grace_period",
        "deploy.update_config",
    ]


def test_an_empty_value_where_the_file_has_none_is_no_difference():
    """`docker stack deploy` stores empty resources; the file has no `resources:` key."""
    want = {"TaskTemplate": {"ContainerSpec": {"Image": "redis:7.0"}}}
    have = {
        "TaskTemplate": {
            "ContainerSpec": {"Image": "redis:7.0"},
            "Resources": {"Limits": {}, "Reservations": {}},
        }
    }
    assert stackplan.differences(want, have) == []
    have["TaskTemplate"]["Resources"]["Limits"] = {"MemoryBytes": 1 << 20}
    assert stackplan.differences(want, have) == [
        ("deploy.resources", "(none)", stackplan._show({"Limits": {"MemoryBytes": 1 << 20}}))
    ]


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
        remove_config=calls.append,
        remove_secret=calls.append,
        in_use=set,
    )
    stackplan.apply(stack, p, made, lambda line: None, update=True)
    assert [c["name"] for c in calls] == [c.name for c in p.changes if c.kind == "service"]
    api = next(c for c in calls if c["name"] == "team_api")["task_template"]
    assert [n["Target"] for n in api["Networks"]] == ["id-team_front", "id-team_back"]
    assert api["ContainerSpec"]["Configs"][0]["ConfigID"] == f"id-{greeting(stack)}"
    assert api["ContainerSpec"]["Secrets"][0]["SecretID"] == f"id-{stack.secrets[0].name}"


def test_retiring_removes_by_id_and_leaves_what_a_service_uses_again():
    """After the services converged: a generation that a service uses by now (someone rolled
    back meanwhile) is left; the others are removed, and the stack's labels let the plan find
    its generations (BASE), as the creates wrote them."""
    old, new = team(), with_greeting(team(), b"new\n")
    p = stackplan.Plan(
        "team",
        "mesh",
        (),
        (
            stackplan.Change("config", greeting(old), "retire"),
            stackplan.Change("secret", old.secrets[0].name, "retire"),
        ),
    )
    actual = running(old)
    removed: list = []
    created: dict = {}
    made = stackplan.Calls(
        create_network=lambda name, **kw: name,
        create_config=lambda name, data, labels: created.setdefault(name, labels),
        create_secret=lambda name, data, labels: created.setdefault(name, labels),
        create_service=lambda spec, ids: None,
        update_service=lambda name, spec, ids: None,
        remove_config=removed.append,
        remove_secret=removed.append,
        in_use=lambda: {("secret", old.secrets[0].name)},
    )
    done = stackplan.retire(p, actual, made, lambda line: None)
    assert removed == [f"id-{greeting(old)}"] and done == [f"retired config {greeting(old)}"]
    stackplan.apply(new, stackplan.plan(new, actual, "mesh"), made, lambda line: None, False)
    assert created == {
        greeting(new): {stackplan.NAMESPACE: "team", stackplan.BASE: "team_greeting"}
    }
