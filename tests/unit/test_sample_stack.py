"""The book's sample as a stack (demo/stack.yml) read with the project's own env files: the
services, replicas, placement, reservations and ports each cluster gets, and the two variables
the env file gives every stack file (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdtasks import stack, stackfile
from cdtasks.config import load

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


def sample(env: str, environ: dict | None = None, **overrides):
    s = load(env, overrides, environ=environ or {}, env_dir=ROOT / "env", project_dir=ROOT)
    return s, stack.read_file(s, {})


def test_the_sample_is_three_services_named_as_docker_stack_deploy_names_them():
    s, st = sample("test")
    assert (s.stack.stack_file, st.name) == (ROOT / "demo" / "stack.yml", "go-demo")
    assert [st.scoped(x.name) for x in st.services] == [
        "go-demo_main",
        "go-demo_db",
        "go-demo_proxy",
    ]
    assert {n.name for n in st.networks} == {"go-demo_proxy", "go-demo_default"}
    main, db, proxy = st.services
    assert main.image == "localhost:5000/go-demo:1.0"  # REGISTRY: the env file's registry
    assert (db.image, proxy.image) == ("cdtasks/redis:7.0", "cdtasks/haproxy:2.6")
    # the proxy sends /demo to `main` (BACKEND_HOST) on the port it listens on
    assert dict(proxy.environment)["BACKEND_HOST"] == "main" == main.name
    assert dict(main.environment)["PORT"] == dict(proxy.environment)["BACKEND_PORT"] == "8080"
    assert dict(main.environment)["DB"] == db.name
    assert [p.published for p in proxy.ports] == [s.services.proxy_port] == [80]


@pytest.mark.parametrize(
    "env, replicas, placement, app_mb, db_mb",
    [
        ("test", (2, 1, 2), "node.labels.env == prod-like", 16, 16),
        ("prod", (3, 1, 3), "node.labels.env == prod", 50, 150),
    ],
)
def test_one_file_serves_both_clusters_through_their_stack_variables(
    env, replicas, placement, app_mb, db_mb
):
    _, st = sample(env)
    main, db, proxy = st.services
    assert (main.deploy.replicas, db.deploy.replicas, proxy.deploy.replicas) == replicas
    assert {x.deploy.constraints for x in st.services} == {(placement,)}
    assert main.deploy.resources.mem_reservation == app_mb * MB
    assert db.deploy.resources.mem_reservation == db_mb * MB
    # a rolling update starts the new task first and waits 5 s between two
    assert (main.deploy.update_config.order, main.deploy.update_config.delay) == (
        "start-first",
        5 * stackfile.NS,
    )


def test_registry_and_proxy_port_follow_the_env_file_unless_the_stack_variables_say():
    _, st = sample("test", REGISTRY_URL="registry.example.org:443/team", PROXY_PORT=8081)
    main, _, proxy = st.services
    assert main.image == "registry.example.org:443/team/go-demo:1.0"
    assert [p.published for p in proxy.ports] == [8081]
    variables = "PLACEMENT=x REGISTRY=mirror:5000 PROXY_PORT=82"
    _, st = sample("test", STACK_VARIABLES=variables)
    assert st.services[0].image == "mirror:5000/go-demo:1.0"
    assert [p.published for p in st.services[2].ports] == [82]
