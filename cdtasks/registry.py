"""The `registry` service of a cluster: reachable as localhost:PORT on every node, storing into
the directory both clusters share, so an image pushed through one is pullable through the other."""
from __future__ import annotations

from dataclasses import replace

from .config import Settings
from .services import ServiceSpec, with_routing

NAME = "registry"
DATA = "/var/lib/registry"


def spec(settings: Settings, routing: str) -> ServiceSpec:
    """The book's registry service. With the routing mesh, one replica published on every node
    (`-p 5000:5000`); without IPVS, a task on every node publishing in host mode instead."""
    port = settings.registry_port
    base = ServiceSpec(
        name=NAME, image=settings.registry_image, replicas=1,
        env=(f"REGISTRY_HTTP_ADDR=:{port}",),
        reserve_mb=settings.registry_reserve_mb,
        mounts=(f"type=bind,source={settings.registry_dir},target={DATA}",),
        ports=((port, port, "ingress"),),
        labels=(("io.cdtasks.role", "registry"),))
    if routing == "dnsrr":
        base = replace(base, replicas=None)
    return with_routing(base, routing)


def address(settings: Settings) -> str:
    return f"localhost:{settings.registry_port}"


def local_ref(settings: Settings, name: str, version: str = "", digest: str = "") -> str:
    """How every node of the cluster names an image in its registry:
    localhost:PORT/NAME[:VERSION][@DIGEST]."""
    return (f"{address(settings)}/{name}" + (f":{version}" if version else "")
            + (f"@{digest}" if digest else ""))


def repository(ref: str) -> str:
    """The repository of an image reference, without tag and digest:
    `localhost:5000/go-demo:1.1@sha256:…` -> `localhost:5000/go-demo`."""
    name = ref.partition("@")[0]
    head, colon, tag = name.rpartition(":")
    return head if colon and "/" not in tag else name
