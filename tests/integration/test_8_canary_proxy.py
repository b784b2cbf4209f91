"""A proxy that cannot be driven is one line naming the haproxy.cfg line that enables it: real
HAProxy containers (the proxy image `inv provision` builds) on the local engine, the sample's configuration and
variants of it, driven through `cdtasks.haproxy` by exec as on a cluster's nodes."""

from __future__ import annotations

import uuid
from pathlib import Path

import docker
import pytest

from cdtasks import haproxy

IMAGE = "cdtasks/haproxy:2.6"  # the sample stack's proxy image (demo/stack.yml)
SAMPLE = Path(__file__).resolve().parents[2] / "demo" / "proxy" / "haproxy.cfg"
# As the sample stack's proxy runs it: its backend `main`, named after the stack file's service
# BACKEND_HOST names (its canary: main-canary).
BACKEND = "main"
VARIANTS = {
    "sample": lambda cfg: cfg,
    "no-socket": lambda cfg: "\n".join(x for x in cfg.splitlines() if "stats socket" not in x),
    "user-level": lambda cfg: cfg.replace("level admin", "level user"),
    "no-slots": lambda cfg: "\n".join(
        x for x in cfg.splitlines() if "server-template canary" not in x
    ),
}


class Local:
    """The local engine as the one node of a cluster (haproxy.py asks `client(node)`)."""

    def __init__(self):
        self.engine = docker.from_env()

    def client(self, node: str):
        return self.engine


@pytest.fixture(scope="module")
def proxies(tmp_path_factory):
    """One HAProxy container per variant, on a network of its own."""
    local = Local()
    try:
        local.engine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{IMAGE} is missing: `inv provision` builds it")
    name = f"cdtcanary{uuid.uuid4().hex[:6]}"
    net = local.engine.networks.create(name, labels={"io.cdtasks.test": name})
    tmp = tmp_path_factory.mktemp("proxies")
    made = {}
    try:
        for variant, edit in VARIANTS.items():
            cfg = tmp / f"{variant}.cfg"
            cfg.write_text(edit(SAMPLE.read_text()) + "\n")
            made[variant] = local.engine.containers.run(
                IMAGE,
                name=f"{name}-{variant}",
                detach=True,
                network=name,
                environment={"BACKEND_HOST": BACKEND, "BACKEND_PORT": "8080"},
                volumes={str(cfg): {"bind": "/usr/local/etc/haproxy/haproxy.cfg", "mode": "ro"}},
                labels={"io.cdtasks.test": name},
            )
        yield local, {v: haproxy.Replica(f"task-{v}", "local", c.id) for v, c in made.items()}
    finally:
        for c in made.values():
            c.remove(force=True)
        net.remove()


def test_the_sample_configuration_can_be_driven(proxies):
    local, replicas = proxies
    (reading,) = haproxy.check(local, [replicas["sample"]], BACKEND, "canary")
    slots = haproxy.servers_named(reading, BACKEND, "canary")
    assert [s.name for s in slots] == [f"canary{i}" for i in range(1, 6)]
    assert all(s.weight == 0 for s in slots)  # no traffic until a canary runs
    haproxy.set_weights(local, {replicas["sample"]: {f"{BACKEND}/canary2": 7}})
    (after,) = haproxy.read(local, [replicas["sample"]])
    assert {s.name: s.weight for s in after.backend(BACKEND)}["canary2"] == 7


@pytest.mark.parametrize(
    "variant, says",
    [
        (
            "no-socket",
            "has no runtime API at /run/haproxy-admin.sock: haproxy.cfg needs, in "
            "global: stats socket /run/haproxy-admin.sock mode 600 level admin",
        ),
        (
            "user-level",
            "refused `set weight main/canary1 0`: Permission denied; haproxy.cfg "
            "needs, in global: stats socket",
        ),
        (
            "no-slots",
            "backend main has no canaryN servers: haproxy.cfg needs, in backend "
            'main: server-template canary N "${BACKEND_HOST}-canary:${BACKEND_PORT}"',
        ),
    ],
)
def test_a_proxy_that_cannot_be_driven_names_the_line_that_enables_it(proxies, variant, says):
    local, replicas = proxies
    with pytest.raises(haproxy.ProxyError) as err:
        haproxy.check(local, [replicas[variant]], BACKEND, "canary")
    assert says in str(err.value)
    assert "\n" not in str(err.value)
