"""stack.specs: the proxy, application and database services an env file asks for (no engine)."""

from __future__ import annotations

import hashlib

import pytest

from cdtasks import stack
from cdtasks.config import load


@pytest.fixture
def settings(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("global\n  maxconn 64\n")
    (tmp_path / "test.env").write_text(
        f"APP_SERVICE=shop\nAPP_IMAGE=shop-img\nAPP_VERSION=2.3\nAPP_REPLICAS=3\nAPP_PORT=9000\n"
        f"DB_SERVICE=shop-db\nPROXY_SERVICE=edge\nPROXY_PORT=8081\nPROXY_ADMIN_PORT=0\n"
        f"PROXY_CONFIG={cfg}\nUPDATE_DELAY=7\nSTOP_GRACE=12\nREGISTRY_PORT=5500\n"
        f"CONSTRAINT=node.labels.env == prod-like\n"
    )
    return load("test", environ={}, env_dir=tmp_path)


def by_name(specs):
    return {s.name: s for s in specs}


def test_the_three_services_come_from_the_env_file(settings):
    specs = by_name(stack.specs(settings, "mesh"))
    assert set(specs) == {"shop", "shop-db", "edge"}
    app, db, proxy = specs["shop"], specs["shop-db"], specs["edge"]
    assert app.image == "localhost:5500/shop-img:2.3"  # the cluster's registry, APP_VERSION
    assert app.replicas == 3 and app.update_delay == 7 and app.stop_grace == 12
    assert "DB=shop-db" in app.env and "PORT=9000" in app.env
    assert proxy.env == ("BACKEND_HOST=shop", "BACKEND_PORT=9000")
    assert db.networks == ("shop",) and set(app.networks) == {"shop", "proxy"}
    assert proxy.networks == ("proxy",)
    for spec in specs.values():
        assert spec.constraints == ("node.labels.env == prod-like",)
        assert ("io.cdtasks.stack", "cdtasks") in spec.labels


def test_the_app_updates_start_first_for_zero_downtime(settings):
    app = by_name(stack.specs(settings, "mesh"))["shop"]
    assert app.update_order == "start-first"


def test_a_release_keeps_its_own_image(settings):
    image = "localhost:5500/shop-img:2.4@sha256:" + "0" * 64
    assert by_name(stack.specs(settings, "mesh", app_image=image))["shop"].image == image


def test_the_proxy_config_is_named_by_its_content(settings):
    proxy = by_name(stack.specs(settings, "mesh"))["edge"]
    digest = hashlib.sha256(settings.services.proxy_config.read_bytes()).hexdigest()[:10]
    assert proxy.configs == ((f"edge-cfg-{digest}", stack.HAPROXY_CFG),)
    settings.services.proxy_config.write_text("global\n  maxconn 128\n")
    changed = by_name(stack.specs(settings, "mesh"))["edge"]
    assert changed.configs[0][0] != proxy.configs[0][0]  # Swarm configs are immutable


def test_ports_follow_the_routing_mode(settings):
    mesh = by_name(stack.specs(settings, "mesh"))["edge"]
    dnsrr = by_name(stack.specs(settings, "dnsrr"))
    assert mesh.ports == ((8081, 80, "ingress"),)  # PROXY_ADMIN_PORT=0: no admin port
    assert mesh.endpoint_mode == "vip"
    assert dnsrr["edge"].ports == ((8081, 80, "host"),)
    assert {s.endpoint_mode for s in dnsrr.values()} == {"dnsrr"}


def test_the_admin_port_is_published_when_asked(settings, tmp_path):
    env = tmp_path / "test.env"
    env.write_text(env.read_text().replace("PROXY_ADMIN_PORT=0", "PROXY_ADMIN_PORT=9090"))
    s = load("test", environ={}, env_dir=tmp_path)
    assert by_name(stack.specs(s, "mesh"))["edge"].ports == (
        (8081, 80, "ingress"),
        (9090, 8090, "ingress"),
    )


def test_an_unreadable_proxy_config_names_the_file(settings, tmp_path):
    settings.services.proxy_config.unlink()
    with pytest.raises(stack.services.ServiceError, match="PROXY_CONFIG .*haproxy.cfg"):
        stack.specs(settings, "mesh")


def test_drift_names_each_difference_and_a_missing_service_only_when_checking(settings):
    app, db = (by_name(stack.specs(settings, "dnsrr"))[n] for n in ("shop", "shop-db"))
    plan = [(app, {"replicas": (3, 2)}), (db, {})]  # db: missing (services.plan gives no diff)
    assert stack._spec_drift(plan, missing=True) == (
        stack.Drift("shop", "replicas", "3", "2"),
        stack.Drift("shop-db", "service", "present", "(missing)"),
    )
    # Outside --check a missing service is created, not drift.
    assert stack._spec_drift(plan, missing=False) == (stack.Drift("shop", "replicas", "3", "2"),)
    assert stack._spec_drift(plan, True)[0]._asdict() == {
        "service": "shop",
        "field": "replicas",
        "wanted": "3",
        "running": "2",
    }
