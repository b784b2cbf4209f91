"""ServiceSpec <-> Engine API structures, diffs, routing modes and the registry's spec (no engine)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest

from cdtasks import registry
from cdtasks.config import load
from cdtasks.gateway import Service, node_of, service_of
from cdtasks.services import MB, NS, ServiceError, ServiceSpec, actual, diff, with_routing

NET_IDS = {"proxy": "qsiv6buv8y5vp1hpn0s3k8f1b", "go-demo": "c9j2q6ez4uu9k3ye0pi9t8pbz"}
NET_NAMES = {v: k for k, v in NET_IDS.items()}
CONF_IDS = {"proxy-cfg": "ktnbjxoalbkvbvedmg1urrz8h"}
CONF_NAMES = {v: k for k, v in CONF_IDS.items()}

APP = ServiceSpec(
    name="go-demo",
    image="localhost:5000/go-demo:1.0",
    replicas=2,
    args=("--port", "8080"),
    env=("DB=go-demo-db", "LOG=info"),
    constraints=("node.labels.env == prod-like",),
    reserve_mb=50,
    mounts=("type=bind,source=/srv/data,target=/data,readonly",),
    ports=((8080, 8080, "ingress"),),
    networks=("go-demo", "proxy"),
    update_delay=5,
    update_order="start-first",
    update_failure="rollback",
    stop_grace=20,
    configs=(("proxy-cfg", "/usr/local/etc/haproxy/haproxy.cfg"),),
    labels=(("com.df.notify", "true"), ("io.cdtasks.role", "app")),
)

# `GET /services/go-demo` for the service above, as the Engine API documents ServiceInspect:
# the engine adds defaults (RestartPolicy, Platforms, Isolation, RollbackConfig, ...), keeps
# the spec it was given and reports the endpoint it built next to it.
INSPECT = {
    "ID": "9mnpnzenvg8p8tdbtq4wvbkcz",
    "Version": {"Index": 19},
    "CreatedAt": "2016-06-07T21:05:51.880065305Z",
    "UpdatedAt": "2016-06-07T21:07:29.962229872Z",
    "Spec": {
        "Name": "go-demo",
        "Labels": {"io.cdtasks.role": "app", "com.df.notify": "true"},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "localhost:5000/go-demo:1.0",
                "Args": ["--port", "8080"],
                "Env": ["DB=go-demo-db", "LOG=info"],
                "Init": False,
                "StopGracePeriod": 20 * NS,
                "DNSConfig": {},
                "Isolation": "default",
                "Mounts": [
                    {"Type": "bind", "Source": "/srv/data", "Target": "/data", "ReadOnly": True}
                ],
                "Configs": [
                    {
                        "File": {
                            "Name": "/usr/local/etc/haproxy/haproxy.cfg",
                            "UID": "0",
                            "GID": "0",
                            "Mode": 292,
                        },
                        "ConfigID": "ktnbjxoalbkvbvedmg1urrz8h",
                        "ConfigName": "proxy-cfg",
                    }
                ],
            },
            "Resources": {"Limits": {}, "Reservations": {"MemoryBytes": 52428800}},
            "RestartPolicy": {"Condition": "any", "Delay": 5 * NS, "MaxAttempts": 0},
            "Placement": {
                "Constraints": ["node.labels.env == prod-like"],
                "Platforms": [{"Architecture": "amd64", "OS": "linux"}],
            },
            "Networks": [
                {"Target": "c9j2q6ez4uu9k3ye0pi9t8pbz", "Aliases": ["go-demo"]},
                {"Target": "qsiv6buv8y5vp1hpn0s3k8f1b"},
            ],
            "ForceUpdate": 0,
            "Runtime": "container",
        },
        "Mode": {"Replicated": {"Replicas": 2}},
        "UpdateConfig": {
            "Parallelism": 1,
            "Delay": 5 * NS,
            "FailureAction": "rollback",
            "Monitor": 5 * NS,
            "MaxFailureRatio": 0,
            "Order": "start-first",
        },
        "RollbackConfig": {
            "Parallelism": 1,
            "FailureAction": "pause",
            "Monitor": 5 * NS,
            "MaxFailureRatio": 0,
            "Order": "stop-first",
        },
        "EndpointSpec": {
            "Mode": "vip",
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": 8080,
                    "PublishedPort": 8080,
                    "PublishMode": "ingress",
                }
            ],
        },
    },
    "Endpoint": {
        "Spec": {
            "Mode": "vip",
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": 8080,
                    "PublishedPort": 8080,
                    "PublishMode": "ingress",
                }
            ],
        },
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 8080, "PublishedPort": 8080, "PublishMode": "ingress"}
        ],
        "VirtualIPs": [
            {"NetworkID": "4qvuz4ko70xaltuqbt8956gd1", "Addr": "10.255.0.5/16"},
            {"NetworkID": "c9j2q6ez4uu9k3ye0pi9t8pbz", "Addr": "10.0.1.3/24"},
        ],
    },
}


def running(**spec_changes) -> dict:
    """INSPECT with parts of its Spec replaced (deep copy)."""
    out = copy.deepcopy(INSPECT)
    for path, value in spec_changes.items():
        node = out["Spec"]
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return out


def engine_stores(kwargs: dict) -> dict:
    """What `inspect_service` returns for a service created with these kwargs: the engine keeps
    the spec as sent. Its JSON decoding matches field names case-insensitively and answers with
    the canonical names, so the SDK's `{"replicated": ...}` comes back as `{"Replicated": ...}`."""
    mode = {k[0].upper() + k[1:]: v for k, v in kwargs["mode"].items()}
    return {
        "ID": "x",
        "Version": {"Index": 1},
        "Spec": {
            "Name": kwargs["name"],
            "Labels": kwargs["labels"],
            "TaskTemplate": copy.deepcopy(dict(kwargs["task_template"])),
            "Mode": mode,
            "UpdateConfig": dict(kwargs["update_config"]),
            "EndpointSpec": dict(kwargs["endpoint_spec"]),
        },
    }


def read_back(inspect, *names):
    """`services.actual` of what `GET /services/{id}` answered, read by the gateway's model."""
    return actual(service_of(inspect), *names)


# -- api_kwargs -----------------------------------------------------------------------------------
def test_api_kwargs_replicated_service():
    k = APP.api_kwargs(NET_IDS, CONF_IDS)
    assert k["name"] == "go-demo"
    assert k["labels"] == {"com.df.notify": "true", "io.cdtasks.role": "app"}
    assert k["mode"].mode == "replicated"
    assert k["mode"] == {"replicated": {"Replicas": 2}}

    tt = k["task_template"]
    cs = tt["ContainerSpec"]
    assert cs["Image"] == "localhost:5000/go-demo:1.0"
    assert cs["Args"] == ["--port", "8080"]
    assert cs["Env"] == ["DB=go-demo-db", "LOG=info"]
    assert cs["StopGracePeriod"] == 20 * 1_000_000_000
    assert cs["Mounts"] == [
        {"Type": "bind", "Source": "/srv/data", "Target": "/data", "ReadOnly": True}
    ]
    assert cs["Configs"] == [
        {
            "ConfigID": CONF_IDS["proxy-cfg"],
            "ConfigName": "proxy-cfg",
            "File": {
                "Name": "/usr/local/etc/haproxy/haproxy.cfg",
                "UID": "0",
                "GID": "0",
                "Mode": 0o444,
            },
        }
    ]
    assert tt["Resources"] == {"Reservations": {"MemoryBytes": 50 * 1024 * 1024}}
    assert tt["Placement"] == {"Constraints": ["node.labels.env == prod-like"]}
    # networks by ID, in the spec's order
    assert tt["Networks"] == [{"Target": NET_IDS["go-demo"]}, {"Target": NET_IDS["proxy"]}]

    assert k["endpoint_spec"] == {
        "Mode": "vip",
        "Ports": [
            {"PublishedPort": 8080, "TargetPort": 8080, "Protocol": "tcp", "PublishMode": "ingress"}
        ],
    }

    upd = k["update_config"]
    assert upd["Delay"] == 5 * 1_000_000_000
    assert upd["Order"] == "start-first"
    assert upd["FailureAction"] == "rollback"
    assert upd["Parallelism"] == 1


def test_api_kwargs_global_dnsrr_without_extras():
    spec = ServiceSpec(
        name="agent",
        image="cdtasks/agent:1.2",
        replicas=None,
        ports=((9000, 9000, "host"),),
        endpoint_mode="dnsrr",
    )
    k = spec.api_kwargs({}, {})
    assert k["mode"].mode == "global"
    assert k["mode"] == {"global": {}}
    assert k["endpoint_spec"]["Mode"] == "dnsrr"
    assert k["endpoint_spec"]["Ports"] == [
        {"PublishedPort": 9000, "TargetPort": 9000, "Protocol": "tcp", "PublishMode": "host"}
    ]
    tt = k["task_template"]
    assert "Resources" not in tt  # no reservation asked, none sent
    assert "Networks" not in tt
    assert tt["ContainerSpec"].get("Mounts") is None
    assert tt["ContainerSpec"].get("Configs") is None
    assert k["update_config"]["Delay"] == 0
    assert k["update_config"]["Order"] == "stop-first"
    assert k["labels"] == {}


def test_api_kwargs_zero_replicas_is_kept():
    k = replace(APP, replicas=0).api_kwargs(NET_IDS, CONF_IDS)
    assert k["mode"] == {"replicated": {"Replicas": 0}}


def test_api_kwargs_needs_the_ids_of_its_networks():
    with pytest.raises(KeyError):
        APP.api_kwargs({"proxy": "p"}, CONF_IDS)


# -- actual and diff ------------------------------------------------------------------------------
def test_actual_of_a_realistic_inspect_equals_the_spec():
    have = read_back(INSPECT, NET_NAMES, CONF_NAMES)
    assert have == APP
    assert diff(APP, have) == {}


def test_created_service_reads_back_as_its_spec():
    for spec in (
        APP,
        replace(
            APP,
            replicas=None,
            endpoint_mode="dnsrr",
            ports=((8080, 8080, "host"),),
            reserve_mb=0,
            mounts=(),
            configs=(),
            labels=(),
            update_delay=0,
        ),
    ):
        stored = engine_stores(spec.api_kwargs(NET_IDS, CONF_IDS))
        assert read_back(stored, NET_NAMES, CONF_NAMES) == spec


def test_actual_applies_engine_defaults_for_absent_fields():
    minimal = {
        "Spec": {
            "Name": "db",
            "TaskTemplate": {"ContainerSpec": {"Image": "cdtasks/redis:7.0"}},
            "Mode": {"Replicated": {"Replicas": 1}},
        }
    }
    have = read_back(minimal, {}, {})
    assert have == ServiceSpec(name="db", image="cdtasks/redis:7.0")


def test_actual_global_mode_and_unknown_network_id():
    inspect = running(Mode={"Global": {}})
    inspect["Spec"]["TaskTemplate"]["Networks"] = [{"Target": "deadbeef"}]
    have = read_back(inspect, NET_NAMES, CONF_NAMES)
    assert have.replicas is None
    assert have.networks == ("deadbeef",)  # unknown: left as the ID, so it differs from any name


def test_diff_of_a_missing_service_lists_every_field():
    d = diff(APP, None)
    assert set(d) >= {"name", "image", "replicas", "ports", "networks"}
    assert d["image"] == (APP.image, None)
    assert d["replicas"] == (2, None)


def test_diff_reports_changed_replicas():
    have = read_back(running(Mode={"Replicated": {"Replicas": 3}}), NET_NAMES, CONF_NAMES)
    assert diff(APP, have) == {"replicas": (2, 3)}


def test_diff_reports_changed_image():
    have = read_back(
        running(TaskTemplate__ContainerSpec__Image="localhost:5000/go-demo:0.9"),
        NET_NAMES,
        CONF_NAMES,
    )
    assert diff(APP, have) == {
        "image": ("localhost:5000/go-demo:1.0", "localhost:5000/go-demo:0.9")
    }


def test_diff_reports_changed_constraints():
    have = read_back(
        running(TaskTemplate__Placement={"Constraints": ["node.labels.env == prod"]}),
        NET_NAMES,
        CONF_NAMES,
    )
    assert diff(APP, have) == {
        "constraints": (("node.labels.env == prod-like",), ("node.labels.env == prod",))
    }


def test_diff_ignores_order_of_unordered_collections():
    have = replace(
        APP,
        env=tuple(reversed(APP.env)),
        networks=tuple(reversed(APP.networks)),
        labels=tuple(reversed(APP.labels)),
    )
    assert diff(APP, have) == {}


def test_diff_keeps_order_of_args():
    have = replace(APP, args=tuple(reversed(APP.args)))
    assert set(diff(APP, have)) == {"args"}


def test_digest_appended_by_the_cli_is_not_drift():
    digest = "sha256:" + "3f" * 32
    have = read_back(
        running(TaskTemplate__ContainerSpec__Image=f"localhost:5000/go-demo:1.0@{digest}"),
        NET_NAMES,
        CONF_NAMES,
    )
    assert diff(APP, have) == {}


def test_digest_does_not_hide_a_changed_tag():
    digest = "sha256:" + "3f" * 32
    have = read_back(
        running(TaskTemplate__ContainerSpec__Image=f"localhost:5000/go-demo:0.9@{digest}"),
        NET_NAMES,
        CONF_NAMES,
    )
    assert diff(APP, have) == {
        "image": ("localhost:5000/go-demo:1.0", "localhost:5000/go-demo:0.9")
    }


def test_wanted_digest_is_compared_in_full():
    want = replace(APP, image="localhost:5000/go-demo:1.0@sha256:" + "aa" * 32)
    have = replace(APP, image="localhost:5000/go-demo:1.0@sha256:" + "bb" * 32)
    assert set(diff(want, have)) == {"image"}
    assert diff(want, replace(have, image=want.image)) == {}


# -- validated ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image",
    ["localhost:5000/go-demo", "localhost:5000/go-demo:latest", "go-demo:latest", "go-demo"],
)
def test_validated_refuses_latest_and_untagged(image):
    with pytest.raises(ServiceError) as exc:
        replace(APP, image=image).validated()
    assert "go-demo" in str(exc.value) and image in str(exc.value)


def test_validated_returns_a_pinned_spec():
    assert APP.validated() is APP
    pinned = replace(APP, image="localhost:5000/go-demo@sha256:" + "ab" * 32)
    assert pinned.validated() is pinned


# -- routing --------------------------------------------------------------------------------------
def test_with_routing_dnsrr_uses_host_ports_and_dns_round_robin():
    spec = replace(APP, ports=((8080, 8080, "ingress"), (8090, 80, "ingress")))
    out = with_routing(spec, "dnsrr")
    assert out.endpoint_mode == "dnsrr"
    assert out.ports == ((8080, 8080, "host"), (8090, 80, "host"))
    assert replace(out, endpoint_mode=spec.endpoint_mode, ports=spec.ports) == spec  # nothing else
    assert spec.endpoint_mode == "vip"  # the input is untouched


def test_with_routing_mesh_leaves_the_spec_as_is():
    assert with_routing(APP, "mesh") == APP


# -- the registry service -------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path):
    (tmp_path / "test.env").write_text(f"STATE_DIR={tmp_path / 'state'}\n")
    return load("test", environ={}, env_dir=tmp_path)


def test_registry_spec_with_the_routing_mesh(settings, tmp_path):
    spec = registry.spec(settings, "mesh")
    assert spec.name == "registry"
    assert spec.image == settings.registry.registry_image == "cdtasks/registry-slim:2.8.2"
    assert spec.replicas == 1
    assert spec.ports == ((5000, 5000, "ingress"),)
    assert spec.endpoint_mode == "vip"
    assert spec.reserve_mb == 100
    assert spec.mounts == (
        f"type=bind,source={tmp_path / 'state' / 'registry'},target=/var/lib/registry",
    )
    assert spec.validated() is spec


def test_registry_spec_without_ipvs(settings):
    spec = registry.spec(settings, "dnsrr")
    assert spec.replicas is None  # global: a task on every node
    assert spec.ports == ((5000, 5000, "host"),)
    assert spec.endpoint_mode == "dnsrr"
    assert spec.reserve_mb == 100
    assert spec.mounts == registry.spec(settings, "mesh").mounts


def _secret_ids(settings) -> dict[str, str]:
    return {registry.credentials(settings).secret_name: "s3cr3tid"}


def test_registry_api_kwargs(settings, tmp_path):
    k = registry.spec(settings, "mesh").api_kwargs({}, {}, _secret_ids(settings))
    cs = k["task_template"]["ContainerSpec"]
    assert cs["Mounts"] == [
        {
            "Type": "bind",
            "Source": str(tmp_path / "state" / "registry"),
            "Target": "/var/lib/registry",
            "ReadOnly": False,
        }
    ]
    assert k["task_template"]["Resources"]["Reservations"]["MemoryBytes"] == 100 * MB == 104857600
    assert "REGISTRY_HTTP_ADDR=:5000" in cs["Env"]
    # Only the tool's user gets in (htpasswd from the secret); deletes stay off.
    assert {
        "REGISTRY_AUTH=htpasswd",
        "REGISTRY_AUTH_HTPASSWD_PATH=/run/secrets/htpasswd",
        "REGISTRY_STORAGE_DELETE_ENABLED=false",
    } <= set(cs["Env"])
    name = registry.credentials(settings).secret_name
    assert cs["Secrets"] == [
        {
            "SecretID": "s3cr3tid",
            "SecretName": name,
            "File": {"Name": "htpasswd", "UID": "0", "GID": "0", "Mode": 0o400},
        }
    ]
    k = registry.spec(settings, "dnsrr").api_kwargs({}, {}, _secret_ids(settings))
    assert k["mode"] == {"global": {}}
    assert k["endpoint_spec"]["Ports"][0]["PublishMode"] == "host"


def test_registry_follows_the_configured_port_and_directory(tmp_path):
    (tmp_path / "test.env").write_text(
        f"REGISTRY_PORT=5005\nREGISTRY_DIR={tmp_path / 'shared'}\n"
        f"REGISTRY_RESERVE_MB=64\nSTATE_DIR={tmp_path / 'state'}\n"
    )
    s = load("test", environ={}, env_dir=tmp_path)
    spec = registry.spec(s, "mesh")
    assert spec.ports == ((5005, 5005, "ingress"),)
    assert "REGISTRY_HTTP_ADDR=:5005" in spec.env
    assert spec.reserve_mb == 64
    assert spec.mounts == (f"type=bind,source={tmp_path / 'shared'},target=/var/lib/registry",)
    assert registry.local_ref(s, "go-demo", "1.0") == "localhost:5005/go-demo:1.0"


def test_registry_spec_reads_back_without_drift(settings):
    for mode in ("mesh", "dnsrr"):
        spec = registry.spec(settings, mode)
        ids = _secret_ids(settings)
        stored = engine_stores(spec.api_kwargs({}, {}, ids))
        assert diff(spec, read_back(stored, {}, {}, {v: k for k, v in ids.items()})) == {}


def test_engine_timestamps_keep_their_fraction_and_zone():
    from cdtasks.gateway import engine_time

    t = engine_time("2026-11-26T23:06:55.459052117Z")
    assert (t.hour, t.minute, t.second, t.microsecond) == (23, 6, 55, 459052)
    assert t.utcoffset().total_seconds() == 0
    assert engine_time("2026-11-26T23:06:55Z").microsecond == 0


def test_the_monitor_period_counts_from_the_last_replica_start_by_the_managers_clock():
    from cdtasks.gateway import Task, engine_time
    from cdtasks.services import _running_for

    class Manager:
        def clock(self):
            return engine_time("2026-11-26T23:07:00.000000000Z")

    def task(image, state, stamp):
        return Task("t", "s", "n", state, "running", image, timestamp=stamp)

    new, old = "localhost:5000/go-demo:1.1@sha256:aa", "localhost:5000/go-demo:1.0@sha256:bb"
    tasks = [
        task(new, "running", "2026-11-26T23:06:52.500000000Z"),
        task(new, "running", "2026-11-26T23:06:58.750000000Z"),  # the last to start
        task(old, "running", "2026-11-26T23:06:59.900000000Z"),  # another image: ignored
        task(new, "starting", "2026-11-26T23:06:59.950000000Z"),
    ]  # not running yet
    assert _running_for(Manager(), tasks, new) == pytest.approx(1.25)
    assert _running_for(Manager(), [], new) == 0.0


def _node(host, role="manager", labels=None, state="ready", availability="active"):
    return node_of(
        {
            "ID": f"id-{host}",
            "Status": {"State": state},
            "Spec": {"Role": role, "Labels": labels or {}, "Availability": availability},
            "Description": {
                "Hostname": host,
                "Platform": {"OS": "linux", "Architecture": "x86_64"},
                "Engine": {"Labels": {"disk": "ssd"}},
            },
        }
    )


@pytest.mark.parametrize(
    "constraint, expected",
    [
        ("node.labels.env == prod-like", True),
        ("node.labels.env==PROD-LIKE", True),  # swarmkit compares without case
        ("node.labels.env != prod-like", False),
        ("node.labels.missing == x", False),
        ("node.labels.missing != x", True),  # a node without the label differs from any value
        ("node.role == manager", True),
        ("node.role == worker", False),
        ("node.hostname != swarm-test-2", False),
        ("node.id == id-swarm-test-2", True),
        ("node.platform.os == linux", True),
        ("engine.labels.disk == ssd", True),
        ("node.ip == 10.0.0.1", None),  # not read here
        ("nonsense", None),
    ],
)
def test_placement_constraints_as_swarm_reads_them(constraint, expected):
    from cdtasks.services import constraint_matches

    assert (
        constraint_matches(_node("swarm-test-2", labels={"env": "prod-like"}), constraint)
        is expected
    )


def test_eligible_nodes_are_ready_active_and_meet_every_constraint():
    from cdtasks.services import eligible_nodes

    class Manager:
        @staticmethod
        def nodes():
            return [
                _node("swarm-test-1"),
                _node("swarm-test-2", labels={"env": "prod-like"}),
                _node("swarm-test-3", labels={"env": "prod-like"}),
                _node("swarm-test-4", labels={"env": "prod-like"}, state="down"),
                _node("swarm-test-5", labels={"env": "prod-like"}, availability="drain"),
            ]

    def spec(*constraints):
        return Service("s", "go-demo", 1, "img:1", 1, constraints=constraints)

    assert eligible_nodes(Manager(), spec("node.labels.env == prod-like")) == [
        "swarm-test-2",
        "swarm-test-3",
    ]
    assert eligible_nodes(
        Manager(), spec("node.labels.env == prod-like", "node.hostname != swarm-test-3")
    ) == ["swarm-test-2"]
    # A constraint it cannot read narrows nothing: more nodes pre-pulled, never fewer.
    assert eligible_nodes(Manager(), spec("node.ip == 10.0.0.9")) == [
        "swarm-test-1",
        "swarm-test-2",
        "swarm-test-3",
    ]
    assert eligible_nodes(Manager(), spec()) == ["swarm-test-1", "swarm-test-2", "swarm-test-3"]
