"""Environment files -> one frozen, validated Settings object, in sections.

Each key is declared once, as a field of its section (`key(parse, default, doc)`); the env-file
name is the field's name in capitals, and `KEYS` is derived from the sections. Precedence,
highest first: command-line flag > process environment (`CDTASKS_<KEY>`) > the environment's
file `<env dir>/<name>.env` > the directory's `base.env` (what every environment shares) > the
defaults. Env files are read with `dotenv_values` without interpolation (values as written),
never loaded into os.environ, and every key is validated once, here. Where the files are
(`locate`) is given by the caller (the task layer reads Invoke's configuration), and
`CDTASKS_PROJECT_DIR` / `CDTASKS_ENV_DIR` override it.

Frozen dataclasses from one table of keys, not pydantic-settings: the layered files (base.env
under each environment's), keys that must agree across environments and the error that names
file, key and expected form are this module's rules either way, and a plain dataclass adds no
dependency beyond the four the project has by design.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from .redaction import secret_values

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
    return tuple(
        m.groups()
        for m in _matches(
            value, r"([a-z0-9-]+):([A-Za-z0-9_.-]+)=([A-Za-z0-9_.-]*)", "node:key=value"
        )
    )


def _hosts(value: str) -> tuple[tuple[str, str, str, int], ...]:
    """`node=[user@]host[:port],...` -> ((node, user or "", host, port), ...)."""
    form = "node=[user@]host[:port]"
    out = []
    for m in _matches(
        value,
        r"([a-z0-9-]+)=(?:([A-Za-z0-9_.-]+)@)?([A-Za-z0-9_.-]+|"
        r"\[[0-9a-fA-F:]+\])(?::([0-9]{1,5}))?",
        form,
    ):
        port = int(m.group(4) or 22)
        if not 0 < port < 65536:
            raise ValueError(f"{m.group(0)!r} is not {form}: port {port}")
        out.append((m.group(1), m.group(2) or "", m.group(3).strip("[]"), port))
    if len({n for n, *_ in out}) != len(out):
        raise ValueError("a node is listed twice")
    return tuple(out)


def _addresses(value: str) -> tuple[tuple[str, str], ...]:
    """`node=address,...` -> ((node, address), ...)."""
    return tuple(
        m.groups() for m in _matches(value, r"([a-z0-9-]+)=([0-9a-fA-F.:]+)", "node=address")
    )


def _node_paths(value: str) -> tuple[tuple[str, Path], ...]:
    """`node=path,...` -> ((node, path with ~ expanded), ...)."""
    return tuple(
        (m.group(1), _path(m.group(2))) for m in _matches(value, r"([a-z0-9-]+)=(\S+)", "node=path")
    )


def _options(value: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(value))
    except ValueError:  # an unclosed quote or a trailing backslash
        raise ValueError("is not shell words (a quote or an escape is not closed)") from None


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not re.fullmatch(r"\s*-?[0-9]+\s*", value):
            raise ValueError(f"is not a whole number from {lo} to {hi}")
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
        raise ValueError("is not a name (a-z, 0-9 and -, at most 63, not starting with -)")
    return value


class _Unshown(ValueError):
    """A bad value that must not be echoed back (it holds credentials)."""


def _registry_url(value: str) -> str:
    """`host:port[/path]`, as engines name a registry in image references (they speak HTTPS
    to it, trusting the CA in /etc/docker/certs.d/HOST:PORT/)."""
    if not value:
        return ""
    if "@" in value:
        raise _Unshown("holds credentials: give REGISTRY_USER and REGISTRY_PASSWORD_FILE instead")
    if "://" in value:
        raise ValueError("has a scheme: give host:port[/path] (engines use HTTPS)")
    if not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}(/[a-z0-9]+([._-]+[a-z0-9]+)*)*", value
    ):
        raise ValueError("is not host:port[/path] (path: lowercase a-z, 0-9, . _ -)")
    if not 0 < int(value.split("/")[0].rpartition(":")[2]) < 65536:
        raise ValueError("has a port outside 1..65535")
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


def pinned_version(value: str) -> str:
    """A version to deliver or deploy: a valid image tag, not empty, not `latest` (so no
    shell characters either)."""
    if value in ("", "latest") or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
        raise ValueError("is not a pinned version (not empty, not latest, a valid image tag)")
    return value


def _variables(value: str) -> tuple[str, ...]:
    """`NAME,NAME` -> variable names; DOCKER_* belong to the engine the tool points at."""
    names = tuple(m.group(0) for m in _matches(value, r"[A-Za-z_][A-Za-z0-9_]*", "a variable name"))
    for name in names:
        if name.startswith("DOCKER_"):
            raise ValueError(f"{name}: DOCKER_* variables come from the node compose runs on")
    return names


def _path(value: str) -> Path:
    try:
        return Path(value).expanduser()
    except RuntimeError:  # ~user of a user that does not exist
        raise ValueError("is not a path: its ~user names no user here") from None


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

    items = tuple(
        os.path.normpath(v.strip()) if v.strip().startswith("/") else v.strip()
        for v in value.split(",")
        if v.strip()
    )
    for item in items:
        if not item.startswith("/") and item not in HOST_KEYS:
            raise ValueError(
                f"{item!r} is neither an absolute path nor one of {', '.join(HOST_KEYS)}"
            )
    return items


def _file(value: str) -> Path:
    if not value.strip():
        raise ValueError("is empty: name a file")
    return _path(value)


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
    shared: bool = False


def key(
    parse: Callable[[str], Any],
    default: str,
    doc: str,
    *,
    shared: bool = False,
    secret: bool = False,
) -> Any:
    """A field of a settings section: the env-file key is the field's name in capitals, read
    from text by `parse`, `default` when no layer sets it. `shared`: every environment of an
    env directory must agree on it (the clusters share what it names); `secret`: kept out of
    reprs."""
    return field(repr=not secret, metadata={"key": Key(parse, default, doc, shared)})


# The sections of the settings, each key declared once. Defaults are the book's layout for the
# test cluster.
@dataclass(frozen=True)
class ClusterSettings:
    """The cluster's machines and nodes."""

    provider: str = key(
        _choice("lab", "docker-machine", "ssh"),
        "lab",
        "where machines come from: lab (containers on the local engine), "
        "docker-machine (its CLI creates them), ssh (servers you already have)",
    )
    lab_name: str = key(
        _name,
        "cdtasks",
        "prefix of every container, network and volume the lab creates",
        shared=True,
    )
    state_dir: Path = key(
        _path,
        "~/.cdtasks",
        "certificates, keys, known_hosts, registry data and credentials (created 0700)",
        shared=True,
    )
    nodes: tuple[str, ...] = key(
        _names, "swarm-test-1,swarm-test-2,swarm-test-3", "the cluster's nodes, first is the leader"
    )
    workers: tuple[str, ...] = key(
        _names, "", "nodes that join as workers (default: all are managers)"
    )
    node_labels: tuple[tuple[str, str, str], ...] = key(
        _labels, "", "node labels, node:key=value,..."
    )
    cd_node: str = key(_name, "swarm-test-1", "node that runs the CD work (tests, builds)")
    routing: str = key(
        _choice("auto", "mesh", "dnsrr"),
        "auto",
        "mesh: routing mesh and VIPs; dnsrr: host-mode ports and DNS round robin; "
        "auto: mesh when the nodes' kernel has IPVS",
    )
    lab_port_base: int = key(
        _int(0, 65000),
        "0",
        "first host port for node ports on 127.0.0.1 (0: the engine picks free ones)",
    )

    @property
    def managers(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n not in self.workers)

    @property
    def leader(self) -> str:
        return self.managers[0]

    def labels_of(self, node: str) -> dict[str, str]:
        return {k: v for n, k, v in self.node_labels if n == node}


@dataclass(frozen=True)
class MachineSettings:
    """PROVIDER=docker-machine."""

    machine_driver: str = key(
        _name,
        "virtualbox",
        "docker-machine driver (virtualbox, generic, amazonec2, digitalocean, ...)",
    )
    machine_options: tuple[str, ...] = key(
        _options,
        "",
        "options passed to `docker-machine create` (shell words), e.g. --virtualbox-memory 2048",
    )


@dataclass(frozen=True)
class SshSettings:
    """PROVIDER=ssh."""

    ssh_hosts: tuple[tuple[str, str, str, int], ...] = key(
        _hosts, "", "every node's SSH address: node=[user@]host[:port],..."
    )
    ssh_user: str = key(
        str, "root", "SSH user where SSH_HOSTS names none (must be able to run docker)"
    )
    ssh_key: Path | None = key(
        _optional_path, "", "private key file (empty: your SSH agent and default keys)"
    )
    ssh_keys: tuple[tuple[str, Path], ...] = key(
        _node_paths, "", "node=key file,... for hosts whose key is not SSH_KEY"
    )
    ssh_known_hosts: Path = key(
        _path, "~/.ssh/known_hosts", "the host keys trusted; unknown or changed keys are refused"
    )
    ssh_parallel: int = key(_int(1, 64), "4", "hosts worked on at once")
    node_addresses: tuple[tuple[str, str], ...] = key(
        _addresses,
        "",
        "node=address the swarm uses between nodes (default: the address of the "
        "host's default route)",
    )


@dataclass(frozen=True)
class RegistrySettings:
    """The registry both clusters push to and pull from (one storage directory)."""

    registry_image: str = key(
        pinned_image, "cdtasks/registry-slim:2.8.2", "registry service image", shared=True
    )
    registry_port: int = key(
        _int(1, 65535), "5000", "registry port on every node (localhost:PORT)", shared=True
    )
    registry_reserve_mb: int = key(_int(0, 1 << 20), "100", "memory reserved for the registry")
    registry_dir: Path = key(
        _path,
        "",
        "host directory both clusters' registries store into (default STATE_DIR/registry)",
        shared=True,
    )
    registry_url: str = key(
        _registry_url,
        "",
        "your own registry, host:port[/path], instead of "
        "a registry service per cluster (empty: the "
        "book's)",
        shared=True,
    )
    registry_user: str = key(str, "", "user of REGISTRY_URL", shared=True)
    registry_password_file: Path | None = key(
        _optional_path, "", "file holding REGISTRY_USER's password", shared=True
    )
    registry_ca_file: Path | None = key(
        _optional_path,
        "",
        "CA certificate (PEM) of "
        "REGISTRY_URL's TLS certificate, "
        "given to every node (empty: the "
        "nodes already trust it)",
        shared=True,
    )


@dataclass(frozen=True)
class ServicesSettings:
    """What a release and `inv services` need beside the stack file: the image name the
    delivery compose file's `app` is published under, and the proxy production tests reach."""

    app_image: str = key(
        _name,
        "go-demo",
        "image name the delivery compose file's `app` service is published under in the "
        "cluster's registry (its other built services keep their `image:` names)",
    )
    base_image: str = key(
        pinned_image,
        "cdtasks/python:3.11",
        "base image of the application (build argument and compose variable BASE_IMAGE)",
    )
    proxy_service: str = key(
        _name,
        "proxy",
        "the stack file's proxy service (`proxy` or `NAME_proxy`): production tests reach it, "
        "`--canary` and the error budget drive and read it",
    )
    proxy_port: int = key(
        _int(1, 65535), "80", "port the proxy service publishes (where production tests go)"
    )
    services_timeout: int = key(_int(5, 3600), "180", "seconds to wait for every replica to run")


def _assignments(value: str) -> tuple[tuple[str, str], ...]:
    """`NAME=value NAME='a value'` (shell words) -> ((name, value), ...)."""
    out = []
    for word in _options(value):
        name, sep, val = word.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{word!r} is not NAME=value")
        out.append((name, val))
    return tuple(out)


@dataclass(frozen=True)
class StackSettings:
    """The stack file `inv services` creates and converges; releases update its services."""

    stack_file: Path = key(
        _file,
        "demo/stack.yml",
        "the stack file (compose format, as `docker stack deploy -c` takes), relative to the "
        "project directory: every service, network, config, secret and volume `inv services` "
        "makes",
    )
    stack_name: str = key(_name, "go-demo", "the stack's namespace: its services are NAME_service")
    stack_variables: tuple[tuple[str, str], ...] = key(
        _assignments,
        "",
        "variables of the stack file for this cluster, shell words NAME=value (over the "
        "process environment), e.g. PLACEMENT='node.labels.env == prod-like'",
    )
    job_timeout: int = key(
        _int(5, 86400),
        "300",
        "seconds a release's job (a replicated-job of the stack on a released image, a "
        "migration) may run before the release stops without updating the other services",
    )


@dataclass(frozen=True)
class DeliverySettings:
    """`inv deliver`: what is checked out, where, and how long its steps may run."""

    repo: str = key(
        str,
        "",
        "repository to deliver, URL or local path (empty: the project "
        "directory; this project's sample is in demo/)",
    )
    compose_file: str = key(
        str,
        "demo/docker-compose-test-local.yml",
        "the test compose file, relative to the repository root",
    )
    test_timeout: int = key(
        _int(10, 86400),
        "1800",
        "seconds a compose command of a delivery "
        "(unit and staging tests, build, production "
        "tests) may run before it is stopped and its "
        "step fails",
    )
    pass_env: tuple[str, ...] = key(
        _variables,
        "",
        "variables of your environment compose runs "
        "get too (NAME,NAME); by default they get "
        "only what compose needs and the delivery's "
        "own (IMAGE, VERSION, HOST_IP, ...)",
    )
    compose_mount_prefixes: tuple[str, ...] = key(
        _absolute_paths,
        "/tmp",
        "host directories (PATH,PATH) under which a delivered compose "
        "file may bind-mount on the CD node besides its checkout (the "
        "book's unit tests mount /tmp/go as a build cache)",
    )
    compose_allow: tuple[str, ...] = key(
        _compose_allowed,
        "",
        "exact host paths a delivered compose file may bind-mount although "
        "protected (the Docker socket, the registry, workspace and state "
        "directories) or outside COMPOSE_MOUNT_PREFIXES, and the keys that "
        "give a service the host (privileged, pid, cap_add, devices, "
        "network_mode, ...: see the README); comma-separated",
    )
    reports_dir: Path = key(
        _path,
        "reports",
        "where JSON and JUnit reports are written (relative to the project directory or absolute)",
    )
    workspace_dir: Path = key(
        _path,
        "",
        "host directory where `inv deliver` checks out sources; "
        "the lab mounts it into every node at the same path, so "
        "compose bind mounts work on the CD node (default "
        "STATE_DIR/LAB_NAME/workspace)",
    )


@dataclass(frozen=True)
class WatchSettings:
    """`inv watch`: the branch followed and who hears of each run."""

    watch_branch: str = key(str, "", "branch `inv watch` follows (empty: the repository's default)")
    webhook_secret: str = key(
        str, "", "shared secret git servers sign pushes with (`inv watch --listen`)", secret=True
    )
    # Chat webhooks carry a token in the path.
    notify_url: str = key(
        _http_url, "", "URL each finished run is POSTed to as JSON (empty: none)", secret=True
    )
    notify_command: tuple[str, ...] = key(
        _options,
        "",
        "command (shell words, no shell) given each finished run as JSON on stdin (empty: none)",
    )


# Settings' attribute -> its section; every key of every section is an env-file key.
SECTIONS: dict[str, type] = {
    "cluster": ClusterSettings,
    "machine": MachineSettings,
    "ssh": SshSettings,
    "registry": RegistrySettings,
    "services": ServicesSettings,
    "stack": StackSettings,
    "delivery": DeliverySettings,
    "watch": WatchSettings,
}


def _keys() -> dict[str, Key]:
    out: dict[str, Key] = {}
    for section in SECTIONS.values():
        for f in fields(section):
            if f.name.upper() in out:  # two sections would read one env-file key
                raise TypeError(f"{f.name} is declared in two sections")
            out[f.name.upper()] = f.metadata["key"]
    return out


KEYS = _keys()  # every key an env file may set, in declaration order
SHARED = tuple(k for k, spec in KEYS.items() if spec.shared)
# CDTASKS_* variables that are not keys: where the files are, and the engine the lab runs on.
ENGINE_VAR = ENV_PREFIX + "DOCKER_HOST"
OTHER_VARIABLES = (ENV_PREFIX + "PROJECT_DIR", ENV_PREFIX + "ENV_DIR", ENGINE_VAR)


@dataclass(frozen=True)
class Settings:
    """One environment's settings: a section per concern, so a module can take only its part."""

    env: str
    source: str  # the env file it came from
    cluster: ClusterSettings
    machine: MachineSettings
    ssh: SshSettings
    registry: RegistrySettings
    services: ServicesSettings
    stack: StackSettings
    delivery: DeliverySettings
    watch: WatchSettings
    raw: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def secrets(self) -> list[str]:
        """Values of env-file keys that look secret, and your registry's password: they never
        reach output or reports."""
        password = self.registry.registry_password_file
        return secret_values(self.raw) + ([password.read_text().strip()] if password else [])

    def check_node(self, node: str) -> str:
        if node not in self.cluster.nodes:
            raise ConfigError(
                f"unknown node {node!r} in environment {self.env}: "
                f"choose one of {', '.join(self.cluster.nodes)}"
            )
        return node


@dataclass(frozen=True)
class Location:
    """Where a project's files are: relative paths of the settings (APP_DIR, PROXY_CONFIG,
    REPORTS_DIR) and an empty REPO mean the project directory; env files are in env_dir."""

    project_dir: Path
    env_dir: Path


def locate(
    environ: Mapping[str, str] | None = None,
    *,
    project_dir: Path | str | None = None,
    env_dir: Path | str | None = None,
) -> Location:
    """The process environment (`CDTASKS_PROJECT_DIR`, `CDTASKS_ENV_DIR`) over the arguments;
    by default the current directory and its `env/`. A relative env dir is relative to the
    project directory, a relative project directory to the current one."""
    environ = os.environ if environ is None else environ
    project = Path(environ.get(ENV_PREFIX + "PROJECT_DIR") or project_dir or ".").expanduser()
    envs = Path(environ.get(ENV_PREFIX + "ENV_DIR") or env_dir or "env").expanduser()
    return Location(project.absolute(), project.absolute() / envs)


BASE = "base"  # env/base.env: the keys every environment of the directory shares


def environments(env_dir: Path) -> list[str]:
    return sorted(p.stem for p in env_dir.glob("*.env") if p.stem != BASE)


def read_env_file(path: Path) -> dict[str, str]:
    """An env file's keys and values as written: `$` is not interpolated (a secret may hold
    one), an unknown key or a line that is not KEY=VALUE is refused."""
    check_env_lines(path)
    values: dict[str, str] = {}
    for name, value in dotenv_values(path, interpolate=False).items():
        if name not in KEYS:
            hint = difflib.get_close_matches(name, KEYS, n=1)
            raise ConfigError(
                f"{path}: unknown key {name}" + (f" (did you mean {hint[0]}?)" if hint else "")
            )
        values[name] = "" if value is None else value
    return values


def _files(env_dir: Path, env: str) -> list[tuple[Path, dict[str, str]]]:
    """The env files an environment reads, lowest precedence first: base.env if there is
    one, then <env>.env."""
    base = env_dir / f"{BASE}.env"
    paths = [base] if base.exists() else []
    return [(p, read_env_file(p)) for p in [*paths, env_dir / f"{env}.env"]]


def check_environ(environ: Mapping[str, str]) -> None:
    """Refuse a CDTASKS_* variable that is neither a key nor one of OTHER_VARIABLES: a typo
    would otherwise be ignored silently."""
    known = [ENV_PREFIX + k for k in KEYS] + list(OTHER_VARIABLES)
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(
                f"process environment: unknown variable {name}"
                + (f" (did you mean {hint[0]}?)" if hint else "")
            )


def _parse(name: str, raw: str, where: str) -> Any:
    try:
        return KEYS[name].parse(raw)
    except _Unshown as exc:
        raise ConfigError(f"{where}: {name}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {name}={raw!r}: {exc}") from None


def _check_shared(env_dir: Path, env: str, mine: Mapping[str, tuple[str, str]]) -> None:
    """The SHARED keys, as the files set them, agree with every other environment of the
    directory: both clusters use what they name (one state directory and lab, one registry).
    `mine`: key -> (value, where it came from) as `_layers` gives them."""
    for other in environments(env_dir):
        if other == env:
            continue
        theirs = _layers(env_dir, other)
        for name in SHARED:
            try:
                same = KEYS[name].parse(mine[name][0]) == KEYS[name].parse(theirs[name][0])
            except ValueError:
                continue  # a bad value is reported where it is loaded, naming its file
            if not same:
                a, b = (
                    f"{origin.removesuffix(DEFAULTED)} ({value!r}"
                    f"{', its default' if origin.endswith(DEFAULTED) else ''})"
                    for value, origin in (mine[name], theirs[name])
                )
                raise ConfigError(
                    f"{name} differs between {a} and {b}: every environment "
                    f"shares it; set it once in {env_dir / (BASE + '.env')}"
                )


DEFAULTED = " (default)"  # how `_layers` marks a key no file sets


def _layers(env_dir: Path, env: str) -> dict[str, tuple[str, str]]:
    """Every key's value from the files (base, then the environment's) or its default, with
    where it came from: a file, or the environment's file marked DEFAULTED."""
    out = {name: (spec.default, f"{env_dir / env}.env{DEFAULTED}") for name, spec in KEYS.items()}
    for path, values in _files(env_dir, env):
        out.update((name, (value, str(path))) for name, value in values.items())
    return out


def load(
    env: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_dir: Path | str | None = None,
    project_dir: Path | str | None = None,
) -> Settings:
    """Read, merge and validate one environment's settings; raise ConfigError on bad input.
    `env_dir` and `project_dir` as `locate` takes them."""
    environ = os.environ if environ is None else environ
    check_environ(environ)
    where = locate(environ, project_dir=project_dir, env_dir=env_dir)
    env_dir = where.env_dir
    known = environments(env_dir)
    if env not in known:
        raise ConfigError(
            f"unknown environment {env!r}: choose one of {', '.join(known) or '(none in ' + str(env_dir) + ')'}"
        )
    path = env_dir / f"{env}.env"
    layers = _layers(env_dir, env)
    _check_shared(env_dir, env, layers)
    for name in KEYS:
        if ENV_PREFIX + name in environ:
            layers[name] = (environ[ENV_PREFIX + name], f"process environment {ENV_PREFIX}{name}")
    for name, value in (overrides or {}).items():
        if value is not None:
            layers[name] = (str(value), "command line")

    parsed = {name.lower(): _parse(name, value, origin) for name, (value, origin) in layers.items()}
    # The registry directory is shared by every cluster of the state dir; checkouts are the lab's.
    for name, default in (
        ("registry_dir", Path("registry")),
        ("workspace_dir", Path(parsed["lab_name"]) / "workspace"),
    ):
        if not parsed[name].parts:
            parsed[name] = parsed["state_dir"] / default
    for name in ("stack_file", "reports_dir"):  # relative to the project
        parsed[name] = where.project_dir / parsed[name]
    for name in ("registry_password_file", "registry_ca_file"):
        if parsed[name] is not None:
            parsed[name] = where.project_dir / parsed[name]
    parsed["repo"] = parsed["repo"] or str(where.project_dir)
    sections = {
        attr: section(**{f.name: parsed[f.name] for f in fields(section)})
        for attr, section in SECTIONS.items()
    }
    raw = {
        name: value for name, (value, origin) in layers.items() if not origin.endswith(DEFAULTED)
    }
    settings = Settings(env=env, source=str(path), raw=raw, **sections)
    _check_consistency(settings, lambda name: layers[name][1].removesuffix(DEFAULTED))
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
                    skipped = text[: len(text) - len(text.lstrip())].count("\n")
                    line = binding.original.line + skipped
                    raise ConfigError(f"{path}:{line}: not KEY=VALUE, a blank line or a # comment")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def _check_consistency(settings: Settings, origin: Callable[[str], str]) -> None:
    s, ssh = settings.cluster, settings.ssh
    if not s.nodes:
        raise ConfigError(f"{origin('NODES')}: NODES is empty")
    for key, names in (
        ("WORKERS", s.workers),
        ("CD_NODE", (s.cd_node,)),
        ("NODE_LABELS", [n for n, _, _ in s.node_labels]),
        ("SSH_HOSTS", [n for n, *_ in ssh.ssh_hosts]),
        ("SSH_KEYS", [n for n, _ in ssh.ssh_keys]),
        ("NODE_ADDRESSES", [n for n, _ in ssh.node_addresses]),
    ):
        for name in names:
            if name not in s.nodes:
                raise ConfigError(f"{origin(key)}: {key} names {name!r}, which is not in NODES")
    if s.provider == "ssh":
        listed = {n for n, *_ in ssh.ssh_hosts}
        missing = [n for n in s.nodes if n not in listed]
        if missing:
            raise ConfigError(
                f"{origin('SSH_HOSTS')}: PROVIDER=ssh needs an SSH address for "
                f"{', '.join(missing)} in SSH_HOSTS"
            )
    if not s.managers:
        raise ConfigError(f"{origin('WORKERS')}: every node is a worker; a swarm needs a manager")
    _check_registry(settings.registry, origin)


def _check_registry(r: RegistrySettings, origin: Callable[[str], str]) -> None:
    """Your own registry: its keys together, its files readable (the password never shown)."""
    given = {
        "REGISTRY_USER": r.registry_user,
        "REGISTRY_PASSWORD_FILE": r.registry_password_file,
        "REGISTRY_CA_FILE": r.registry_ca_file,
    }
    for name, value in given.items():
        if value and not r.registry_url:
            raise ConfigError(f"{origin(name)}: {name} is set but REGISTRY_URL is empty")
    if bool(r.registry_user) != bool(r.registry_password_file):
        name = "REGISTRY_PASSWORD_FILE" if r.registry_user else "REGISTRY_USER"
        raise ConfigError(
            f"{origin(name)}: REGISTRY_USER and REGISTRY_PASSWORD_FILE go together: set {name} too"
        )
    for name, path in (
        ("REGISTRY_PASSWORD_FILE", r.registry_password_file),
        ("REGISTRY_CA_FILE", r.registry_ca_file),
    ):
        if path is None:
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{origin(name)}: {name}={path}: {exc.strerror}") from None
        if name == "REGISTRY_PASSWORD_FILE" and not data.strip():
            raise ConfigError(f"{origin(name)}: {name}={path} is empty")
        if name == "REGISTRY_CA_FILE" and b"-----BEGIN CERTIFICATE-----" not in data:
            raise ConfigError(f"{origin(name)}: {name}={path} holds no PEM certificate")
