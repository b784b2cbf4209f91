"""Environment files -> one frozen, validated Settings object.

Precedence, highest first: command-line flag > process environment (`CDTASKS_<KEY>`) > the
environment's file `env/<name>.env` > the defaults below. Env files are read with
`dotenv_values`, never loaded into os.environ, and every key is validated once, here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from dotenv import dotenv_values

ENV_PREFIX = "CDTASKS_"
DEFAULT_ENV_DIR = Path(__file__).resolve().parent.parent / "env"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ConfigError(ValueError):
    """Bad configuration; the message names the file, key and value."""


def _names(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    for item in items:
        if not NAME_RE.match(item):
            raise ValueError(f"{item!r} is not a valid node name (a-z, 0-9, -)")
    if len(set(items)) != len(items):
        raise ValueError("names repeat")
    return items


def _labels(value: str) -> tuple[tuple[str, str, str], ...]:
    """`node:key=value,node:key=value` -> ((node, key, value), ...)."""
    out = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        m = re.fullmatch(r"([a-z0-9-]+):([A-Za-z0-9_.-]+)=([A-Za-z0-9_.-]*)", item)
        if not m:
            raise ValueError(f"{item!r} is not node:key=value")
        out.append(m.groups())
    return tuple(out)


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        n = int(value)
        if not lo <= n <= hi:
            raise ValueError(f"{n} is outside {lo}..{hi}")
        return n
    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in options:
            raise ValueError(f"choose one of {', '.join(options)}")
        return value
    return parse


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError("use a-z, 0-9 and -")
    return value


def pinned_image(value: str) -> str:
    """An image reference with an explicit tag (or digest) other than `latest`."""
    name, _, digest = value.partition("@")
    tag = name.rsplit("/", 1)[-1].partition(":")[2]
    if digest:
        return value
    if not tag:
        raise ValueError("has no tag: pin a version (name:version)")
    if tag == "latest":
        raise ValueError("is tagged latest: pin a version")
    return value


def _path(value: str) -> Path:
    return Path(value).expanduser()


@dataclass(frozen=True)
class Key:
    parse: Callable[[str], Any]
    default: str
    doc: str


# Every key an env file may set. Defaults are the book's layout for the test cluster.
KEYS: dict[str, Key] = {
    "PROVIDER": Key(_choice("lab"), "lab", "where machines come from"),
    "LAB_NAME": Key(_name, "cdtasks", "prefix of every container, network and volume the lab creates"),
    "STATE_DIR": Key(_path, "~/.cdtasks", "certificates, keys, known_hosts and registry data"),
    "NODES": Key(_names, "swarm-test-1,swarm-test-2,swarm-test-3", "the cluster's nodes, first is the leader"),
    "WORKERS": Key(_names, "", "nodes that join as workers (default: all are managers)"),
    "NODE_LABELS": Key(_labels, "", "node labels, node:key=value,..."),
    "CD_NODE": Key(_name, "swarm-test-1", "node that runs the CD work (tests, builds)"),
    "REGISTRY_IMAGE": Key(pinned_image, "cdtasks/registry:2.8.2", "registry service image"),
    "REGISTRY_PORT": Key(_int(1, 65535), "5000", "registry port on every node (localhost:PORT)"),
    "REGISTRY_RESERVE_MB": Key(_int(0, 1 << 20), "100", "memory reserved for the registry"),
    "REGISTRY_DIR": Key(_path, "", "host directory both clusters' registries store into "
                                    "(default STATE_DIR/registry)"),
    "ROUTING": Key(_choice("auto", "mesh", "dnsrr"), "auto",
                   "mesh: routing mesh and VIPs; dnsrr: host-mode ports and DNS round robin; "
                   "auto: mesh when the nodes' kernel has IPVS"),
    "LAB_PORT_BASE": Key(_int(0, 65000), "0", "first host port for node ports on 127.0.0.1 "
                                              "(0: the engine picks free ones)"),
}


@dataclass(frozen=True)
class Settings:
    env: str
    source: str  # the env file it came from
    provider: str
    lab_name: str
    state_dir: Path
    nodes: tuple[str, ...]
    workers: tuple[str, ...]
    node_labels: tuple[tuple[str, str, str], ...]
    cd_node: str
    registry_image: str
    registry_port: int
    registry_reserve_mb: int
    registry_dir: Path
    routing: str
    lab_port_base: int
    raw: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def managers(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n not in self.workers)

    @property
    def leader(self) -> str:
        return self.managers[0]

    def labels_of(self, node: str) -> dict[str, str]:
        return {k: v for n, k, v in self.node_labels if n == node}

    def check_node(self, node: str) -> str:
        if node not in self.nodes:
            raise ConfigError(f"unknown node {node!r} in environment {self.env}: "
                              f"choose one of {', '.join(self.nodes)}")
        return node


def environments(env_dir: Path = DEFAULT_ENV_DIR) -> list[str]:
    return sorted(p.stem for p in env_dir.glob("*.env"))


def load(env: str, overrides: Mapping[str, Any] | None = None, *,
         environ: Mapping[str, str] | None = None, env_dir: Path | None = None) -> Settings:
    """Read, merge and validate one environment's settings; raise ConfigError on bad input."""
    environ = os.environ if environ is None else environ
    env_dir = Path(environ.get(ENV_PREFIX + "ENV_DIR", env_dir or DEFAULT_ENV_DIR))
    known = environments(env_dir)
    if env not in known:
        raise ConfigError(f"unknown environment {env!r}: choose one of {', '.join(known) or '(none in ' + str(env_dir) + ')'}")
    path = env_dir / f"{env}.env"
    values: dict[str, str] = {}
    for key, value in dotenv_values(path).items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {key}")
        values[key] = "" if value is None else value
    for key in KEYS:
        if ENV_PREFIX + key in environ:
            values[key] = environ[ENV_PREFIX + key]
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = str(value)

    parsed: dict[str, Any] = {}
    for key, spec in KEYS.items():
        raw = values.get(key, spec.default)
        origin = (f"flag/{ENV_PREFIX}{key}" if key in (overrides or {}) or ENV_PREFIX + key in environ
                  else str(path))
        try:
            parsed[key.lower()] = spec.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{origin}: {key}={raw!r}: {exc}") from None
    if not parsed["registry_dir"].parts:
        parsed["registry_dir"] = parsed["state_dir"] / "registry"
    settings = Settings(env=env, source=str(path), raw=values, **parsed)
    _check_consistency(settings)
    return settings


def _check_consistency(s: Settings) -> None:
    if not s.nodes:
        raise ConfigError(f"{s.source}: NODES is empty")
    for key, names in (("WORKERS", s.workers), ("CD_NODE", (s.cd_node,)),
                       ("NODE_LABELS", tuple(n for n, _, _ in s.node_labels))):
        for name in names:
            if name not in s.nodes:
                raise ConfigError(f"{s.source}: {key} names {name!r}, which is not in NODES")
    if not s.managers:
        raise ConfigError(f"{s.source}: every node is a worker; a swarm needs a manager")
