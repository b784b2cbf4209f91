"""Environment files -> one frozen, validated Settings object.

Precedence, highest first: command-line flag > process environment (`CDTASKS_<KEY>`) > the
environment's file `<env dir>/<name>.env` > the defaults below. Env files are read with
`dotenv_values`, never loaded into os.environ, and every key is validated once, here. Where the
files are (`locate`) is given by the caller (the task layer reads Invoke's configuration), and
`CDTASKS_PROJECT_DIR` / `CDTASKS_ENV_DIR` override it.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

ENV_PREFIX = "CDTASKS_"
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


def _matches(value: str, pattern: str, form: str) -> list[re.Match]:
    """Each comma-separated item of `value` matched whole by `pattern`, or a ValueError
    naming the item and the form it should have."""
    out = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        m = re.fullmatch(pattern, item)
        if not m:
            raise ValueError(f"{item!r} is not {form}")
        out.append(m)
    return out


def _labels(value: str) -> tuple[tuple[str, str, str], ...]:
    """`node:key=value,node:key=value` -> ((node, key, value), ...)."""
    return tuple(m.groups() for m in _matches(
        value, r"([a-z0-9-]+):([A-Za-z0-9_.-]+)=([A-Za-z0-9_.-]*)", "node:key=value"))


def _hosts(value: str) -> tuple[tuple[str, str, str, int], ...]:
    """`node=[user@]host[:port],...` -> ((node, user or "", host, port), ...)."""
    form = "node=[user@]host[:port]"
    out = []
    for m in _matches(value, r"([a-z0-9-]+)=(?:([A-Za-z0-9_.-]+)@)?([A-Za-z0-9_.-]+|"
                             r"\[[0-9a-fA-F:]+\])(?::([0-9]{1,5}))?", form):
        port = int(m.group(4) or 22)
        if not 0 < port < 65536:
            raise ValueError(f"{m.group(0)!r} is not {form}: port {port}")
        out.append((m.group(1), m.group(2) or "", m.group(3).strip("[]"), port))
    if len({n for n, *_ in out}) != len(out):
        raise ValueError("a node is listed twice")
    return tuple(out)


def _addresses(value: str) -> tuple[tuple[str, str], ...]:
    """`node=address,...` -> ((node, address), ...)."""
    return tuple(m.groups() for m in _matches(value, r"([a-z0-9-]+)=([0-9a-fA-F.:]+)",
                                              "node=address"))


def _node_paths(value: str) -> tuple[tuple[str, Path], ...]:
    """`node=path,...` -> ((node, path with ~ expanded), ...)."""
    return tuple((m.group(1), _path(m.group(2))) for m in _matches(
        value, r"([a-z0-9-]+)=(\S+)", "node=path"))


def _options(value: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:  # an unclosed quote
        raise ValueError(str(exc)) from None


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


SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "KEY")  # in a key's name: its value is secret


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


def pinned_version(value: str) -> str:
    """A version to deliver or deploy: a valid image tag, not empty, not `latest` (so no
    shell characters either)."""
    if value in ("", "latest") or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
        raise ValueError("is not a pinned version (not empty, not latest, a valid image tag)")
    return value


def _variables(value: str) -> tuple[str, ...]:
    """`NAME,NAME` -> variable names; DOCKER_* belong to the engine the tool points at."""
    names = tuple(m.group(0) for m in _matches(value, r"[A-Za-z_][A-Za-z0-9_]*",
                                               "a variable name"))
    for name in names:
        if name.startswith("DOCKER_"):
            raise ValueError(f"{name}: DOCKER_* variables come from the node compose runs on")
    return names


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _absolute_paths(value: str) -> tuple[str, ...]:
    """`/path,/path` -> normalised absolute paths."""
    items = tuple(os.path.normpath(v.strip()) for v in value.split(",") if v.strip())
    for item in items:
        if not item.startswith("/"):
            raise ValueError(f"{item!r} is not an absolute path")
    return items


def _compose_allowed(value: str) -> tuple[str, ...]:
    """COMPOSE_ALLOW: absolute paths and the keys of compose_policy.HOST_KEYS."""
    from .compose_policy import HOST_KEYS
    items = tuple(os.path.normpath(v.strip()) if v.strip().startswith("/") else v.strip()
                  for v in value.split(",") if v.strip())
    for item in items:
        if not item.startswith("/") and item not in HOST_KEYS:
            raise ValueError(f"{item!r} is neither an absolute path nor one of "
                             f"{', '.join(HOST_KEYS)}")
    return items


def _optional_path(value: str) -> Path | None:
    return _path(value) if value.strip() else None


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if value and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise ValueError("is not an http:// or https:// URL")
    return value


@dataclass(frozen=True)
class Key:
    parse: Callable[[str], Any]
    default: str
    doc: str


# Every key an env file may set. Defaults are the book's layout for the test cluster.
KEYS: dict[str, Key] = {
    "PROVIDER": Key(_choice("lab", "docker-machine", "ssh"), "lab",
                    "where machines come from: lab (containers on the local engine), "
                    "docker-machine (its CLI creates them), ssh (servers you already have)"),
    "LAB_NAME": Key(_name, "cdtasks", "prefix of every container, network and volume the lab creates"),
    "STATE_DIR": Key(_path, "~/.cdtasks", "certificates, keys, known_hosts, registry data and "
                                            "credentials (created 0700)"),
    "NODES": Key(_names, "swarm-test-1,swarm-test-2,swarm-test-3", "the cluster's nodes, first is the leader"),
    "WORKERS": Key(_names, "", "nodes that join as workers (default: all are managers)"),
    "NODE_LABELS": Key(_labels, "", "node labels, node:key=value,..."),
    "CD_NODE": Key(_name, "swarm-test-1", "node that runs the CD work (tests, builds)"),
    "REGISTRY_IMAGE": Key(pinned_image, "cdtasks/registry-slim:2.8.2", "registry service image"),
    "REGISTRY_PORT": Key(_int(1, 65535), "5000", "registry port on every node (localhost:PORT)"),
    "REGISTRY_RESERVE_MB": Key(_int(0, 1 << 20), "100", "memory reserved for the registry"),
    "REGISTRY_DIR": Key(_path, "", "host directory both clusters' registries store into "
                                    "(default STATE_DIR/registry)"),
    "WORKSPACE_DIR": Key(_path, "", "host directory where `inv deliver` checks out sources; the "
                                     "lab mounts it into every node at the same path, so compose "
                                     "bind mounts work on the CD node (default "
                                     "STATE_DIR/LAB_NAME/workspace)"),
    "ROUTING": Key(_choice("auto", "mesh", "dnsrr"), "auto",
                   "mesh: routing mesh and VIPs; dnsrr: host-mode ports and DNS round robin; "
                   "auto: mesh when the nodes' kernel has IPVS"),
    # -- PROVIDER=docker-machine ------------------------------------------------------------------
    "MACHINE_DRIVER": Key(_name, "virtualbox", "docker-machine driver (virtualbox, generic, "
                                               "amazonec2, digitalocean, ...)"),
    "MACHINE_OPTIONS": Key(_options, "", "options passed to `docker-machine create` (shell words), "
                                         "e.g. --virtualbox-memory 2048"),
    # -- PROVIDER=ssh --------------------------------------------------------------------------------
    "SSH_HOSTS": Key(_hosts, "", "every node's SSH address: node=[user@]host[:port],..."),
    "SSH_USER": Key(str, "root", "SSH user where SSH_HOSTS names none (must be able to run docker)"),
    "SSH_KEY": Key(_optional_path, "", "private key file (empty: your SSH agent and default keys)"),
    "SSH_KEYS": Key(_node_paths, "", "node=key file,... for hosts whose key is not SSH_KEY"),
    "SSH_KNOWN_HOSTS": Key(_path, "~/.ssh/known_hosts", "the host keys trusted; unknown or "
                                                         "changed keys are refused"),
    "SSH_PARALLEL": Key(_int(1, 64), "4", "hosts worked on at once"),
    "NODE_ADDRESSES": Key(_addresses, "", "node=address the swarm uses between nodes (default: "
                                          "the address of the host's default route)"),
    # -- the services (`inv services`) ----------------------------------------------------------
    "APP_DIR": Key(_path, "demo", "the application's source: Dockerfile and compose file (relative "
                                  "to the project directory or absolute)"),
    "APP_SERVICE": Key(_name, "go-demo", "name of the application's Swarm service"),
    "APP_IMAGE": Key(_name, "go-demo", "image name of the application in the cluster's registry"),
    "APP_VERSION": Key(pinned_version, "1.0", "version the service is created with (built and "
                                              "pushed when the registry lacks it)"),
    "APP_PORT": Key(_int(1, 65535), "8080", "port the application listens on"),
    "APP_REPLICAS": Key(_int(0, 100), "2", "replicas of the application"),
    "APP_RESERVE_MB": Key(_int(0, 1 << 20), "0", "memory reserved per application task"),
    "UPDATE_DELAY": Key(_int(0, 3600), "5", "seconds between updating two tasks"),
    "STOP_GRACE": Key(_int(1, 3600), "10", "seconds a task gets to stop before it is killed"),
    "BASE_IMAGE": Key(pinned_image, "cdtasks/python:3.11", "base image of the application (build "
                                                           "argument and compose variable BASE_IMAGE)"),
    "DB_SERVICE": Key(_name, "go-demo-db", "name of the database service"),
    "DB_IMAGE": Key(pinned_image, "cdtasks/redis:7.0", "database image"),
    "DB_RESERVE_MB": Key(_int(0, 1 << 20), "0", "memory reserved for the database"),
    "PROXY_SERVICE": Key(_name, "proxy", "name of the reverse proxy service"),
    "PROXY_IMAGE": Key(pinned_image, "cdtasks/haproxy:2.6", "reverse proxy image"),
    "PROXY_CONFIG": Key(_path, "demo/proxy/haproxy.cfg", "proxy configuration (a Swarm config)"),
    "PROXY_REPLICAS": Key(_int(0, 100), "2", "replicas of the proxy"),
    "PROXY_RESERVE_MB": Key(_int(0, 1 << 20), "0", "memory reserved per proxy task"),
    "PROXY_PORT": Key(_int(1, 65535), "80", "port the proxy publishes"),
    "PROXY_ADMIN_PORT": Key(_int(0, 65535), "8090", "proxy's admin/stats port (0: not published)"),
    "CONSTRAINT": Key(str, "node.labels.env == prod-like", "placement constraint of every service "
                                                          "(empty: none)"),
    "SERVICES_TIMEOUT": Key(_int(5, 3600), "180", "seconds to wait for every replica to run"),
    # -- delivery (`inv deliver`) -------------------------------------------------------------------
    "REPO": Key(str, "", "repository to deliver, URL or local path (empty: the project "
                         "directory; this project's sample is in demo/)"),
    "COMPOSE_FILE": Key(str, "demo/docker-compose-test-local.yml",
                        "the test compose file, relative to the repository root"),
    "TEST_TIMEOUT": Key(_int(10, 86400), "1800", "seconds a compose command of a delivery (unit "
                                                  "and staging tests, build, production tests) "
                                                  "may run before it is stopped and its step fails"),
    "PASS_ENV": Key(_variables, "", "variables of your environment compose runs get too "
                                    "(NAME,NAME); by default they get only what compose needs "
                                    "and the delivery's own (IMAGE, VERSION, HOST_IP, ...)"),
    "COMPOSE_MOUNT_PREFIXES": Key(_absolute_paths, "/tmp",
                                  "host directories (PATH,PATH) under which a delivered compose "
                                  "file may bind-mount on the CD node besides its checkout (the "
                                  "book's unit tests mount /tmp/go as a build cache)"),
    "COMPOSE_ALLOW": Key(_compose_allowed, "",
                         "exact host paths a delivered compose file may bind-mount although "
                         "protected (the Docker socket, the registry, workspace and state "
                         "directories) or outside COMPOSE_MOUNT_PREFIXES, and the keys that "
                         "give a service the host it may use (privileged, pid, cap_add, "
                         "devices, network_mode, ...: see the README); comma-separated"),
    "REPORTS_DIR": Key(_path, "reports", "where JSON and JUnit reports are written (relative to "
                                         "the project directory or absolute)"),
    "LAB_PORT_BASE": Key(_int(0, 65000), "0", "first host port for node ports on 127.0.0.1 "
                                              "(0: the engine picks free ones)"),
    # -- following a branch (`inv watch`) ---------------------------------------------------------
    "WATCH_BRANCH": Key(str, "", "branch `inv watch` follows (empty: the repository's default)"),
    "WEBHOOK_SECRET": Key(str, "", "shared secret git servers sign pushes with (`inv watch --listen`)"),
    "NOTIFY_URL": Key(_http_url, "", "URL each finished run is POSTed to as JSON (empty: none)"),
    "NOTIFY_COMMAND": Key(_options, "", "command (shell words, no shell) given each finished "
                                        "run as JSON on stdin (empty: none)"),
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
    workspace_dir: Path
    routing: str
    lab_port_base: int
    machine_driver: str
    machine_options: tuple[str, ...]
    ssh_hosts: tuple[tuple[str, str, str, int], ...]
    ssh_user: str
    ssh_key: Path | None
    ssh_keys: tuple[tuple[str, Path], ...]
    ssh_known_hosts: Path
    ssh_parallel: int
    node_addresses: tuple[tuple[str, str], ...]
    app_dir: Path
    app_service: str
    app_image: str
    app_version: str
    app_port: int
    app_replicas: int
    app_reserve_mb: int
    update_delay: int
    stop_grace: int
    base_image: str
    db_service: str
    db_image: str
    db_reserve_mb: int
    proxy_service: str
    proxy_image: str
    proxy_config: Path
    proxy_replicas: int
    proxy_reserve_mb: int
    proxy_port: int
    proxy_admin_port: int
    constraint: str
    services_timeout: int
    repo: str
    compose_file: str
    test_timeout: int
    pass_env: tuple[str, ...]
    compose_mount_prefixes: tuple[str, ...]
    compose_allow: tuple[str, ...]
    reports_dir: Path
    watch_branch: str
    notify_command: tuple[str, ...]
    notify_url: str = field(repr=False, default="")  # chat webhooks carry a token in the path
    webhook_secret: str = field(repr=False, default="")
    raw: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def managers(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n not in self.workers)

    @property
    def leader(self) -> str:
        return self.managers[0]

    def labels_of(self, node: str) -> dict[str, str]:
        return {k: v for n, k, v in self.node_labels if n == node}

    @property
    def secrets(self) -> list[str]:
        """Values of env-file keys that look secret: they never reach output or reports."""
        return [v for k, v in self.raw.items() if any(w in k for w in SECRET_WORDS)]

    def check_node(self, node: str) -> str:
        if node not in self.nodes:
            raise ConfigError(f"unknown node {node!r} in environment {self.env}: "
                              f"choose one of {', '.join(self.nodes)}")
        return node


@dataclass(frozen=True)
class Location:
    """Where a project's files are: relative paths of the settings (APP_DIR, PROXY_CONFIG,
    REPORTS_DIR) and an empty REPO mean the project directory; env files are in env_dir."""
    project_dir: Path
    env_dir: Path


def locate(environ: Mapping[str, str] | None = None, *, project_dir: Path | str | None = None,
           env_dir: Path | str | None = None) -> Location:
    """The process environment (`CDTASKS_PROJECT_DIR`, `CDTASKS_ENV_DIR`) over the arguments;
    by default the current directory and its `env/`. A relative env dir is relative to the
    project directory, a relative project directory to the current one."""
    environ = os.environ if environ is None else environ
    project = Path(environ.get(ENV_PREFIX + "PROJECT_DIR") or project_dir or ".").expanduser()
    envs = Path(environ.get(ENV_PREFIX + "ENV_DIR") or env_dir or "env").expanduser()
    return Location(project.absolute(), project.absolute() / envs)


def environments(env_dir: Path) -> list[str]:
    return sorted(p.stem for p in env_dir.glob("*.env"))


def load(env: str, overrides: Mapping[str, Any] | None = None, *,
         environ: Mapping[str, str] | None = None, env_dir: Path | str | None = None,
         project_dir: Path | str | None = None) -> Settings:
    """Read, merge and validate one environment's settings; raise ConfigError on bad input.
    `env_dir` and `project_dir` as `locate` takes them."""
    environ = os.environ if environ is None else environ
    where = locate(environ, project_dir=project_dir, env_dir=env_dir)
    env_dir = where.env_dir
    known = environments(env_dir)
    if env not in known:
        raise ConfigError(f"unknown environment {env!r}: choose one of {', '.join(known) or '(none in ' + str(env_dir) + ')'}")
    path = env_dir / f"{env}.env"
    check_env_lines(path)
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

    def origin(key: str) -> str:
        if (overrides or {}).get(key) is not None:
            return "command line"
        if ENV_PREFIX + key in environ:
            return f"process environment {ENV_PREFIX}{key}"
        return str(path)

    parsed: dict[str, Any] = {}
    for key, spec in KEYS.items():
        raw = values.get(key, spec.default)
        try:
            parsed[key.lower()] = spec.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{origin(key)}: {key}={raw!r}: {exc}") from None
    # The registry directory is shared by every cluster of the state dir; checkouts are the lab's.
    for key, default in (("registry_dir", Path("registry")),
                         ("workspace_dir", Path(parsed["lab_name"]) / "workspace")):
        if not parsed[key].parts:
            parsed[key] = parsed["state_dir"] / default
    for key in ("app_dir", "proxy_config", "reports_dir"):  # relative to the project
        parsed[key] = where.project_dir / parsed[key]
    parsed["repo"] = parsed["repo"] or str(where.project_dir)
    settings = Settings(env=env, source=str(path), raw=values, **parsed)
    _check_consistency(settings, origin)
    return settings


def check_env_lines(path: Path) -> None:
    """Refuse a line that is not KEY=VALUE, blank or a comment, naming the file and line:
    python-dotenv would only warn and drop it. Its own parser reads the file, so its syntax
    (quotes, `export `, values on several lines) stays valid."""
    try:
        with open(path, encoding="utf-8") as stream:
            for binding in parse_stream(stream):
                if binding.error or (binding.key is not None and binding.value is None):
                    # dotenv counts from the blank lines before it; the line itself is not
                    # shown: it may hold a secret that lacks its `=`.
                    text = binding.original.string
                    skipped = text[:len(text) - len(text.lstrip())].count("\n")
                    line = binding.original.line + skipped
                    raise ConfigError(f"{path}:{line}: not KEY=VALUE, a blank line or a # comment")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def _check_consistency(s: Settings, origin: Callable[[str], str]) -> None:
    if not s.nodes:
        raise ConfigError(f"{origin('NODES')}: NODES is empty")
    for key, names in (("WORKERS", s.workers), ("CD_NODE", (s.cd_node,)),
                       ("NODE_LABELS", [n for n, _, _ in s.node_labels]),
                       ("SSH_HOSTS", [n for n, *_ in s.ssh_hosts]),
                       ("SSH_KEYS", [n for n, _ in s.ssh_keys]),
                       ("NODE_ADDRESSES", [n for n, _ in s.node_addresses])):
        for name in names:
            if name not in s.nodes:
                raise ConfigError(f"{origin(key)}: {key} names {name!r}, which is not in NODES")
    if s.provider == "ssh":
        listed = {n for n, *_ in s.ssh_hosts}
        missing = [n for n in s.nodes if n not in listed]
        if missing:
            raise ConfigError(f"{origin('SSH_HOSTS')}: PROVIDER=ssh needs an SSH address for "
                              f"{', '.join(missing)} in SSH_HOSTS")
    if not s.managers:
        raise ConfigError(f"{origin('WORKERS')}: every node is a worker; a swarm needs a manager")
