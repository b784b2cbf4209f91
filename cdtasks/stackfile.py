"""A stack file (the compose format `docker stack deploy -c` takes) -> a typed model.

Pure: it reads the stack file (and the env files and config/secret files it names) and returns
data; nothing here talks to an engine. Variables are interpolated as compose does (`$VAR`,
`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`,
`${VAR+alt}`, `$$` for a dollar) from the variables given (the caller merges the process
environment and the env file's STACK_VARIABLES). A variable without a value, a key Swarm
ignores or this module does not map, a misspelled key, two services on one host port: a
StackFileError naming the file, the service and the key, for the whole file before any call.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

from .config import pinned_image

MAX_BYTES = 1 << 20
NS = 1_000_000_000


class StackFileError(ValueError):
    """Bad stack file: one line naming the file, the service (or top-level entry) and the key."""


# -- the model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]  # ("CMD", ...), ("CMD-SHELL", cmd) or ("NONE",)
    interval: int | None = None  # nanoseconds
    timeout: int | None = None
    retries: int | None = None
    start_period: int | None = None


@dataclass(frozen=True)
class Port:
    target: int
    published: int | None
    protocol: str = "tcp"
    mode: str = "ingress"  # ingress | host


@dataclass(frozen=True)
class FileRef:
    """A service's use of a config or secret: the top-level entry and where it appears."""

    source: str
    target: str
    uid: str = "0"
    gid: str = "0"
    mode: int = 0o444


@dataclass(frozen=True)
class Volume:
    type: str  # bind | volume | tmpfs
    source: str  # a path (bind), a top-level volume's key (volume), "" (anonymous, tmpfs)
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Policy:
    """update_config and rollback_config."""

    parallelism: int | None = None
    delay: int | None = None  # nanoseconds
    failure_action: str | None = None
    monitor: int | None = None
    max_failure_ratio: float | None = None
    order: str | None = None


@dataclass(frozen=True)
class RestartPolicy:
    condition: str | None = None
    delay: int | None = None
    max_attempts: int | None = None
    window: int | None = None


@dataclass(frozen=True)
class Resources:
    cpu_limit: int | None = None  # nano CPUs
    mem_limit: int | None = None  # bytes
    cpu_reservation: int | None = None
    mem_reservation: int | None = None


@dataclass(frozen=True)
class Deploy:
    mode: str = "replicated"  # replicated | global | replicated-job | global-job
    replicas: int | None = None
    update_config: Policy | None = None
    rollback_config: Policy | None = None
    restart_policy: RestartPolicy | None = None
    constraints: tuple[str, ...] = ()
    preferences: tuple[str, ...] = ()  # spread descriptors
    max_replicas_per_node: int | None = None
    resources: Resources | None = None
    labels: tuple[tuple[str, str], ...] = ()
    endpoint_mode: str = "vip"


@dataclass(frozen=True)
class Service:
    name: str  # as in the file; Swarm's name is STACK_NAME + "_" + name
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: tuple[tuple[str, str], ...] = ()
    healthcheck: Healthcheck | None = None
    ports: tuple[Port, ...] = ()
    networks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (network key, aliases)
    configs: tuple[FileRef, ...] = ()
    secrets: tuple[FileRef, ...] = ()
    volumes: tuple[Volume, ...] = ()
    stop_grace_period: int | None = None  # nanoseconds
    user: str | None = None
    working_dir: str | None = None
    hostname: str | None = None
    labels: tuple[tuple[str, str], ...] = ()  # the containers' (deploy.labels: the service's)
    deploy: Deploy = field(default_factory=Deploy)

    @property
    def is_job(self) -> bool:
        return self.deploy.mode.endswith("-job")


@dataclass(frozen=True)
class Network:
    key: str
    name: str  # Swarm's name: NAME_key, or `name:` / the external one as written
    external: bool = False
    driver: str = "overlay"
    driver_opts: tuple[tuple[str, str], ...] = ()
    attachable: bool = False
    internal: bool = False
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Blob:
    """A top-level config or secret: its base name (NAME_key, or `name:` / the external one as
    written) and, unless external, its file's content."""

    key: str
    base: str
    external: bool = False
    data: bytes = field(default=b"", repr=False)
    labels: tuple[tuple[str, str], ...] = ()
    secret: bool = False

    @cached_property  # a secret's hash is made slow on purpose: once per object
    def name(self) -> str:
        """Swarm's name: the base and a short hash of the content (Swarm cannot update a config
        or secret in place, moby#35803: a changed file is a new object, the old one stays for a
        rollback). An external one is used as named."""
        return self.base if self.external else f"{self.base}-{content_id(self.data, self.secret)}"


HASH_CHARS = 10
NAME_MAX = 64  # Swarm's limit on a config's or secret's name


def content_id(data: bytes, secret: bool) -> str:
    """HASH_CHARS hex digits of the content's SHA-256 (`sha256sum FILE` begins with them). A
    secret's is stretched (PBKDF2) instead, so that the name shown in plans and logs does not
    let a short secret be guessed by hashing candidates quickly."""
    if secret:
        key = hashlib.pbkdf2_hmac("sha256", data, b"cdtasks stack secret", 50_000)
        return key.hex()[:HASH_CHARS]
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


@dataclass(frozen=True)
class NamedVolume:
    key: str
    name: str
    external: bool = False
    driver: str | None = None
    driver_opts: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Stack:
    path: Path
    name: str  # the namespace (STACK_NAME)
    services: tuple[Service, ...]
    networks: tuple[Network, ...] = ()
    configs: tuple[Blob, ...] = ()
    secrets: tuple[Blob, ...] = ()
    volumes: tuple[NamedVolume, ...] = ()

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise StackFileError(
            f"{self.path}: no service {name!r} (the file has {', '.join(self.names)})"
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)

    def scoped(self, key: str) -> str:
        """Swarm's name of something the file declares, as `docker stack deploy` names it."""
        return f"{self.name}_{key}"


# -- keys this module maps (anything else is refused) ------------------------------------------
SERVICE_KEYS = (
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "healthcheck",
    "ports",
    "networks",
    "configs",
    "secrets",
    "volumes",
    "stop_grace_period",
    "user",
    "working_dir",
    "hostname",
    "labels",
    "deploy",
)
DEPLOY_KEYS = (
    "mode",
    "replicas",
    "update_config",
    "rollback_config",
    "restart_policy",
    "placement",
    "resources",
    "labels",
    "endpoint_mode",
)
# Compose keys that `docker stack deploy` ignores: named as such, not as typos.
SWARM_IGNORES = (
    "build",
    "container_name",
    "depends_on",
    "links",
    "external_links",
    "restart",
    "privileged",
    "network_mode",
    "devices",
    "security_opt",
    "cgroup_parent",
    "userns_mode",
    "extends",
    "profiles",
    "pull_policy",
    "expose",
)
# Keys Swarm honours that cdtasks does not map yet: refused rather than dropped.
NOT_MAPPED = (
    "init",
    "stop_signal",
    "read_only",
    "tmpfs",
    "sysctls",
    "ulimits",
    "logging",
    "dns",
    "dns_search",
    "extra_hosts",
    "cap_add",
    "cap_drop",
    "tty",
    "stdin_open",
    "platform",
    "isolation",
)
TOP_KEYS = ("version", "services", "networks", "configs", "secrets", "volumes")
MODES = ("replicated", "global", "replicated-job", "global-job")


# -- interpolation -----------------------------------------------------------------------------
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Unset(Exception):
    def __init__(self, text: str):
        self.text = text


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's substitution in one string; _Unset(why) for a variable without a value."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing(text, i + 2)
            out.append(_braced(text[i + 2 : end], variables))
            i = end + 1
        else:
            m = _NAME.match(text, i + 1)
            if not m:
                raise _Unset(f"a lone $ at {text!r} (write $$ for a dollar sign)")
            out.append(_value(m.group(0), variables))
            i = m.end()
    return "".join(out)


def _closing(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{" and text[j - 1] == "$":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise _Unset(f"an unclosed ${{ in {text!r}")


def _value(name: str, variables: Mapping[str, str]) -> str:
    if name not in variables:
        raise _Unset(f"variable {name} has no value")
    return variables[name]


def _braced(inner: str, variables: Mapping[str, str]) -> str:
    m = _NAME.match(inner)
    if not m:
        raise _Unset(f"${{{inner}}} is not a variable")
    name, rest = m.group(0), inner[m.end() :]
    if not rest:
        return _value(name, variables)
    ops = (":-", ":?", ":+", "-", "?", "+")
    op = next((o for o in ops if rest.startswith(o)), None)
    if op is None:
        raise _Unset(f"${{{inner}}}: unknown form")
    arg = rest[len(op) :]
    value = variables.get(name)
    present = value is not None and (value != "" or not op.startswith(":"))
    if op.endswith("-"):
        return value if present else interpolate(arg, variables)  # type: ignore[return-value]
    if op.endswith("?"):
        if not present:
            raise _Unset(f"variable {name}: {interpolate(arg, variables) or 'has no value'}")
        return value  # type: ignore[return-value]
    return interpolate(arg, variables) if present else ""


# -- reading -----------------------------------------------------------------------------------
def _load(path: Path) -> Mapping:
    try:
        with open(path, "rb") as stream:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_BYTES:
                raise StackFileError(
                    f"{path}: not a regular file of at most {MAX_BYTES // 1024} KiB"
                )
            doc = yaml.load(stream.read(), Loader=yaml.CSafeLoader)
    except OSError as exc:
        raise StackFileError(f"STACK_FILE {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise StackFileError(f"{path}{line}: not valid YAML") from None
    if not isinstance(doc, Mapping):
        raise StackFileError(f"{path}: not a compose file (no mapping at the top)")
    return doc


class _Reader:
    """Walks the file's data with a path for every message (`services.api.deploy.replicas`)."""

    def __init__(self, path: Path, variables: Mapping[str, str]):
        self.path, self.variables = path, variables

    def fail(self, where: str, why: str) -> StackFileError:
        return StackFileError(f"{self.path}: {where}: {why}")

    def expand(self, value: Any, where: str) -> Any:
        """Interpolate every string of a value (not mapping keys, as compose)."""
        if isinstance(value, str):
            try:
                return interpolate(value, self.variables)
            except _Unset as exc:
                raise self.fail(where, exc.text) from None
        if isinstance(value, Mapping):
            sep = " " if where.endswith(":") else "."
            return {k: self.expand(v, f"{where}{sep}{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> Mapping:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(where, "must be a mapping")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(where, f"key {k!r} is not text")
            if k.startswith("x-"):
                continue
            if k not in allowed:
                raise self.fail(where, _unknown(k, allowed, service=allowed is SERVICE_KEYS))
        return {k: v for k, v in value.items() if not k.startswith("x-")}

    def text(self, value: Any, where: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.fail(where, "must be a text value")
        return str(value)

    def integer(self, value: Any, where: str, lo: int = 0) -> int:
        try:
            n = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            n = None
        if n is None or n < lo:
            raise self.fail(where, f"{value!r} is not a whole number >= {lo}")
        return n

    def boolean(self, value: Any, where: str) -> bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise self.fail(where, f"{value!r} is not true or false")

    def choice(self, value: Any, where: str, options: tuple[str, ...]) -> str:
        v = self.text(value, where)
        if v not in options:
            raise self.fail(where, f"{v!r}: choose one of {', '.join(options)}")
        return v

    def duration(self, value: Any, where: str) -> int:
        try:
            return duration_ns(value)
        except ValueError:
            raise self.fail(
                where, f"{value!r} is not a duration (e.g. 10s, 1m30s, 500ms)"
            ) from None

    def words(self, value: Any, where: str) -> tuple[str, ...]:
        """command/entrypoint: a list as is; a string split as a shell would (compose's rule)."""
        import shlex

        if isinstance(value, list):
            return tuple(self.text(v, f"{where}[{i}]") for i, v in enumerate(value))
        try:
            return tuple(shlex.split(self.text(value, where)))
        except ValueError:
            raise self.fail(where, "a quote is not closed") from None

    def strings(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise self.fail(where, "must be a list")
        return [self.text(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def pairs(self, value: Any, where: str) -> tuple[tuple[str, str], ...]:
        """A `KEY=value` list or a mapping (labels, environment, driver_opts)."""
        if value is None:
            return ()
        if isinstance(value, Mapping):
            return tuple((str(k), "" if v is None else _scalar(v)) for k, v in value.items())
        out = []
        for item in self.strings(value, where):
            k, _, v = item.partition("=")
            out.append((k, v))
        return tuple(out)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _unknown(key: str, allowed: tuple[str, ...], service: bool) -> str:
    if service and key in SWARM_IGNORES:
        return f"key {key}: Swarm ignores it in a stack (remove it)"
    if service and key in NOT_MAPPED:
        return f"key {key} is not supported by cdtasks yet (remove it)"
    hint = difflib.get_close_matches(key, allowed, n=1)
    return f"unknown key {key}" + (f" (did you mean {hint[0]}?)" if hint else "")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": NS, "m": 60 * NS, "h": 3600 * NS}


def duration_ns(value: Any) -> int:
    """A Go duration as compose writes them (`1m30s`, `500ms`; a bare number: seconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value * NS)
    text = str(value).strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return int(total)


def size_bytes(value: Any) -> int:
    """`50M`, `512m`, `1gb`, `2048` (bytes), as compose reads memory sizes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*", str(value).lower())
    if not m:
        raise ValueError(value)
    return int(float(m.group(1)) * 1024 ** "bkmg".index(m.group(2) or "b"))


# -- the file -> the model --------------------------------------------------------------------
def read(path: Path, name: str, variables: Mapping[str, str]) -> Stack:
    """The stack file at `path`, namespaced `name`, interpolated with `variables`; validated
    whole (StackFileError on the first problem)."""
    r = _Reader(path, variables)
    doc = r.mapping(_load(path), "top level", TOP_KEYS)
    services_doc = r.mapping(doc.get("services"), "services", tuple(doc.get("services") or ()))
    if not services_doc:
        raise r.fail("services", "the file declares no service")
    base = path.parent
    networks = _networks(r, doc.get("networks"), name)
    configs = _blobs(r, doc.get("configs"), name, "configs", base)
    secrets = _blobs(r, doc.get("secrets"), name, "secrets", base)
    volumes = _volumes(r, doc.get("volumes"), name)
    services = tuple(
        _service(r, key, value, base, networks, configs, secrets, volumes)
        for key, value in services_doc.items()
    )
    networks = _with_default(name, networks, services)
    stack = Stack(
        path,
        name,
        services,
        tuple(networks.values()),
        tuple(configs.values()),
        tuple(secrets.values()),
        tuple(volumes.values()),
    )
    _check_ports(r, stack)
    return stack


def _with_default(stack_name: str, networks: dict[str, Network], services) -> dict[str, Network]:
    """The `default` network docker stack deploy makes for services that name none."""
    if "default" in networks or not any(n == "default" for s in services for n, _ in s.networks):
        return networks
    return {**networks, "default": Network("default", f"{stack_name}_default")}


def _named(r: _Reader, doc: Any, kind: str, allowed: tuple[str, ...]) -> dict[str, Mapping]:
    out = {}
    for key, value in r.mapping(doc, kind, tuple(doc or ())).items():
        where = f"{kind}.{key}"
        out[key] = r.mapping(r.expand(value, where), where, allowed)
        ext = out[key].get("external")
        if isinstance(ext, Mapping):  # the old form: external: {name: x}
            out[key] = {**out[key], "external": True, "name": ext.get("name", out[key].get("name"))}
    return out


def _networks(r: _Reader, doc: Any, stack: str) -> dict[str, Network]:
    allowed = ("driver", "driver_opts", "attachable", "internal", "labels", "external", "name")
    out = {}
    for key, spec in _named(r, doc, "networks", allowed).items():
        where = f"networks.{key}"
        external = r.boolean(spec.get("external", False), f"{where}.external")
        given = spec.get("name")
        out[key] = Network(
            key=key,
            name=r.text(given, f"{where}.name") if given else key if external else f"{stack}_{key}",
            external=external,
            driver=r.text(spec.get("driver", "overlay"), f"{where}.driver"),
            driver_opts=r.pairs(spec.get("driver_opts"), f"{where}.driver_opts"),
            attachable=r.boolean(spec.get("attachable", False), f"{where}.attachable"),
            internal=r.boolean(spec.get("internal", False), f"{where}.internal"),
            labels=r.pairs(spec.get("labels"), f"{where}.labels"),
        )
    return out


def _blobs(r: _Reader, doc: Any, stack: str, kind: str, base: Path) -> dict[str, Blob]:
    out = {}
    for key, spec in _named(r, doc, kind, ("file", "external", "name", "labels")).items():
        where = f"{kind}.{key}"
        external = r.boolean(spec.get("external", False), f"{where}.external")
        data = b""
        if not external:
            if "file" not in spec:
                raise r.fail(where, "needs file: (or external: true)")
            file = base / r.text(spec["file"], f"{where}.file")
            try:
                data = file.read_bytes()
            except OSError as exc:
                raise r.fail(f"{where}.file", f"{file}: {exc.strerror}") from None
        given = spec.get("name")
        named = r.text(given, f"{where}.name") if given else key if external else f"{stack}_{key}"
        if not external and len(named) + 1 + HASH_CHARS > NAME_MAX:
            raise r.fail(
                where,
                f"name {named!r} is too long: Swarm allows {NAME_MAX} characters, and cdtasks "
                f"adds {1 + HASH_CHARS} (a hash of the content)",
            )
        out[key] = Blob(
            key=key,
            base=named,
            external=external,
            data=data,
            labels=r.pairs(spec.get("labels"), f"{where}.labels"),
            secret=kind == "secrets",
        )
    return out


def _volumes(r: _Reader, doc: Any, stack: str) -> dict[str, NamedVolume]:
    allowed = ("driver", "driver_opts", "labels", "external", "name")
    out = {}
    for key, spec in _named(r, doc, "volumes", allowed).items():
        where = f"volumes.{key}"
        external = r.boolean(spec.get("external", False), f"{where}.external")
        given = spec.get("name")
        out[key] = NamedVolume(
            key=key,
            name=r.text(given, f"{where}.name") if given else key if external else f"{stack}_{key}",
            external=external,
            driver=r.text(spec["driver"], f"{where}.driver") if spec.get("driver") else None,
            driver_opts=r.pairs(spec.get("driver_opts"), f"{where}.driver_opts"),
            labels=r.pairs(spec.get("labels"), f"{where}.labels"),
        )
    return out


def _service(
    r: _Reader,
    key: str,
    raw: Any,
    base: Path,
    networks: Mapping[str, Network],
    configs: Mapping[str, Blob],
    secrets: Mapping[str, Blob],
    volumes: Mapping[str, NamedVolume],
) -> Service:
    at = f"service {key}"
    doc = r.mapping(r.expand(raw, f"{at}:"), at, SERVICE_KEYS)
    if "image" not in doc:
        raise r.fail(at, "has no image (a stack runs images; build them before)")
    image = r.text(doc["image"], f"{at}: image")
    try:
        pinned_image(image)
    except ValueError as exc:
        raise r.fail(f"{at}: image", f"{image} {exc}") from None
    opt = _optional(r, doc, at)
    env: dict[str, str] = {}
    for i, file in enumerate(r.strings(doc.get("env_file"), f"{at}: env_file")):
        p = base / file
        if not p.is_file():
            raise r.fail(f"{at}: env_file[{i}]", f"{p}: no such file")
        env.update((k, v or "") for k, v in dotenv_values(p, interpolate=False).items())
    env.update(r.pairs(doc.get("environment"), f"{at}: environment"))
    return Service(
        name=key,
        image=image,
        command=opt("command", r.words),
        entrypoint=opt("entrypoint", r.words),
        environment=tuple(env.items()),
        healthcheck=opt("healthcheck", lambda v, w: _healthcheck(r, v, w)),
        ports=tuple(_port(r, p, f"{at}: ports[{i}]") for i, p in enumerate(doc.get("ports") or [])),
        networks=_service_networks(r, doc.get("networks"), f"{at}: networks", networks),
        configs=_refs(r, doc.get("configs"), f"{at}: configs", configs, secret=False),
        secrets=_refs(r, doc.get("secrets"), f"{at}: secrets", secrets, secret=True),
        volumes=tuple(
            _volume(r, v, f"{at}: volumes[{i}]", volumes)
            for i, v in enumerate(doc.get("volumes") or [])
        ),
        stop_grace_period=opt("stop_grace_period", r.duration),
        user=opt("user", r.text),
        working_dir=opt("working_dir", r.text),
        hostname=opt("hostname", r.text),
        labels=r.pairs(doc.get("labels"), f"{at}: labels"),
        deploy=_deploy(r, doc.get("deploy"), f"{at}: deploy"),
    )


def _optional(r: _Reader, doc: Mapping, at: str) -> Callable:
    def get(key: str, parse: Callable[[Any, str], Any]) -> Any:
        return None if doc.get(key) is None else parse(doc[key], f"{at}: {key}")

    return get


def _healthcheck(r: _Reader, value: Any, at: str) -> Healthcheck:
    doc = r.mapping(
        value, at, ("test", "interval", "timeout", "retries", "start_period", "disable")
    )
    if r.boolean(doc.get("disable", False), f"{at}.disable"):
        return Healthcheck(("NONE",))
    test = doc.get("test")
    if isinstance(test, str):
        cmd: tuple[str, ...] = ("CMD-SHELL", test)
    elif isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE"):
        cmd = tuple(r.text(t, f"{at}.test") for t in test)
    else:
        raise r.fail(
            f"{at}.test", "must be a string or a list starting with CMD, CMD-SHELL or NONE"
        )

    def dur(k: str) -> int | None:
        return None if doc.get(k) is None else r.duration(doc[k], f"{at}.{k}")

    retries = doc.get("retries")
    return Healthcheck(
        cmd,
        interval=dur("interval"),
        timeout=dur("timeout"),
        retries=None if retries is None else r.integer(retries, f"{at}.retries"),
        start_period=dur("start_period"),
    )


def _port(r: _Reader, value: Any, at: str) -> Port:
    if isinstance(value, Mapping):
        doc = r.mapping(value, at, ("target", "published", "protocol", "mode"))
        if "target" not in doc:
            raise r.fail(at, "needs target")
        published = doc.get("published")
        return Port(
            target=r.integer(doc["target"], f"{at}.target", 1),
            published=None if published is None else r.integer(published, f"{at}.published", 1),
            protocol=r.choice(doc.get("protocol", "tcp"), f"{at}.protocol", ("tcp", "udp", "sctp")),
            mode=r.choice(doc.get("mode", "ingress"), f"{at}.mode", ("ingress", "host")),
        )
    text = r.text(value, at)
    spec, _, proto = text.partition("/")
    parts = spec.split(":")
    if len(parts) > 2 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise r.fail(
            at,
            f"{text!r}: give [published:]target[/protocol] (Swarm publishes on every address; ranges are not supported)",
        )
    target = r.integer(parts[-1], at, 1)
    return Port(
        target=target,
        published=r.integer(parts[0], at, 1) if len(parts) == 2 else None,
        protocol=r.choice(proto or "tcp", at, ("tcp", "udp", "sctp")),
    )


def _service_networks(
    r: _Reader, value: Any, at: str, declared: Mapping[str, Network]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if value is None:
        return (("default", ()),)  # as docker stack deploy: the stack's default network
    items: Mapping[str, Any] = (
        {n: None for n in r.strings(value, at)}
        if isinstance(value, list)
        else r.mapping(value, at, tuple(value))
    )
    out = []
    for key, spec in items.items():
        if key not in declared and key != "default":
            raise r.fail(at, f"network {key} is not declared under the top-level networks")
        doc = r.mapping(spec, f"{at}.{key}", ("aliases",))
        out.append((key, tuple(r.strings(doc.get("aliases"), f"{at}.{key}.aliases"))))
    return tuple(out)


def _refs(
    r: _Reader, value: Any, at: str, declared: Mapping[str, Blob], *, secret: bool
) -> tuple[FileRef, ...]:
    out = []
    for i, item in enumerate(value or []):
        where = f"{at}[{i}]"
        doc = (
            {"source": item}
            if isinstance(item, str)
            else r.mapping(item, where, ("source", "target", "uid", "gid", "mode"))
        )
        source = r.text(doc.get("source", ""), f"{where}.source")
        if source not in declared:
            kind = "secrets" if secret else "configs"
            raise r.fail(where, f"{source!r} is not declared under the top-level {kind}")
        # docker stack deploy: a secret's file is its name under /run/secrets, a config's /NAME
        target = r.text(
            doc.get("target") or (source if secret else f"/{source}"), f"{where}.target"
        )
        mode = doc.get("mode", 0o444)
        out.append(
            FileRef(
                source,
                target,
                r.text(doc.get("uid", "0"), f"{where}.uid"),
                r.text(doc.get("gid", "0"), f"{where}.gid"),
                int(str(mode), 8) if isinstance(mode, str) else r.integer(mode, f"{where}.mode"),
            )
        )
    return tuple(out)


def _volume(r: _Reader, value: Any, at: str, declared: Mapping[str, NamedVolume]) -> Volume:
    if isinstance(value, Mapping):
        doc = r.mapping(value, at, ("type", "source", "target", "read_only"))
        kind = r.choice(doc.get("type", "volume"), f"{at}.type", ("bind", "volume", "tmpfs"))
        source = r.text(doc.get("source", ""), f"{at}.source")
        target = r.text(doc.get("target", ""), f"{at}.target")
        ro = r.boolean(doc.get("read_only", False), f"{at}.read_only")
    else:
        parts = r.text(value, at).split(":")
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise r.fail(at, f"{value!r}: give [source:]target[:ro|rw]")
        ro = len(parts) == 3 and parts[2] == "ro"
        source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    if not target.startswith("/"):
        raise r.fail(at, f"target {target!r} is not an absolute path")
    if kind == "bind" and not source.startswith("/"):
        raise r.fail(at, f"bind source {source!r}: give an absolute path on the nodes")
    if kind == "volume" and source and source not in declared:
        raise r.fail(at, f"volume {source} is not declared under the top-level volumes")
    return Volume(kind, source, target, ro)


def _policy(r: _Reader, value: Any, at: str) -> Policy:
    doc = r.mapping(
        value,
        at,
        ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order"),
    )
    actions = (
        ("continue", "pause", "rollback") if at.endswith("update_config") else ("continue", "pause")
    )
    ratio = doc.get("max_failure_ratio")
    try:
        ratio_value = None if ratio is None else float(ratio)
    except ValueError:
        raise r.fail(f"{at}.max_failure_ratio", f"{ratio!r} is not a number") from None
    return Policy(
        parallelism=None
        if doc.get("parallelism") is None
        else r.integer(doc["parallelism"], f"{at}.parallelism"),
        delay=None if doc.get("delay") is None else r.duration(doc["delay"], f"{at}.delay"),
        failure_action=None
        if doc.get("failure_action") is None
        else r.choice(doc["failure_action"], f"{at}.failure_action", actions),
        monitor=None if doc.get("monitor") is None else r.duration(doc["monitor"], f"{at}.monitor"),
        max_failure_ratio=ratio_value,
        order=None
        if doc.get("order") is None
        else r.choice(doc["order"], f"{at}.order", ("stop-first", "start-first")),
    )


def _deploy(r: _Reader, value: Any, at: str) -> Deploy:
    doc = r.mapping(value, at, DEPLOY_KEYS)
    mode = r.choice(doc.get("mode", "replicated"), f"{at}.mode", MODES)
    replicas = doc.get("replicas")
    if replicas is not None and mode.startswith("global"):
        raise r.fail(f"{at}.replicas", f"mode {mode} runs one task per node: remove replicas")
    if mode.endswith("-job"):
        for k in ("update_config", "rollback_config"):
            if k in doc:
                raise r.fail(f"{at}.{k}", f"a {mode} is not updated in rolling fashion: remove it")
    placement = r.mapping(
        doc.get("placement"),
        f"{at}.placement",
        ("constraints", "preferences", "max_replicas_per_node"),
    )
    prefs = []
    for i, p in enumerate(placement.get("preferences") or []):
        pd = r.mapping(p, f"{at}.placement.preferences[{i}]", ("spread",))
        prefs.append(r.text(pd.get("spread", ""), f"{at}.placement.preferences[{i}].spread"))
    restart = doc.get("restart_policy")
    rd = r.mapping(
        restart, f"{at}.restart_policy", ("condition", "delay", "max_attempts", "window")
    )
    maxrep = placement.get("max_replicas_per_node")
    return Deploy(
        mode=mode,
        replicas=None if replicas is None else r.integer(replicas, f"{at}.replicas"),
        update_config=None
        if doc.get("update_config") is None
        else _policy(r, doc["update_config"], f"{at}.update_config"),
        rollback_config=None
        if doc.get("rollback_config") is None
        else _policy(r, doc["rollback_config"], f"{at}.rollback_config"),
        restart_policy=None
        if restart is None
        else RestartPolicy(
            condition=None
            if rd.get("condition") is None
            else r.choice(
                rd["condition"], f"{at}.restart_policy.condition", ("none", "on-failure", "any")
            ),
            delay=None
            if rd.get("delay") is None
            else r.duration(rd["delay"], f"{at}.restart_policy.delay"),
            max_attempts=None
            if rd.get("max_attempts") is None
            else r.integer(rd["max_attempts"], f"{at}.restart_policy.max_attempts"),
            window=None
            if rd.get("window") is None
            else r.duration(rd["window"], f"{at}.restart_policy.window"),
        ),
        constraints=tuple(r.strings(placement.get("constraints"), f"{at}.placement.constraints")),
        preferences=tuple(prefs),
        max_replicas_per_node=None
        if maxrep is None
        else r.integer(maxrep, f"{at}.placement.max_replicas_per_node", 1),
        resources=_resources(r, doc.get("resources"), f"{at}.resources"),
        labels=r.pairs(doc.get("labels"), f"{at}.labels"),
        endpoint_mode=r.choice(
            doc.get("endpoint_mode", "vip"), f"{at}.endpoint_mode", ("vip", "dnsrr")
        ),
    )


def _resources(r: _Reader, value: Any, at: str) -> Resources | None:
    if value is None:
        return None
    doc = r.mapping(value, at, ("limits", "reservations"))
    got: dict[str, int | None] = {}
    for part in ("limits", "reservations"):
        d = r.mapping(doc.get(part), f"{at}.{part}", ("cpus", "memory"))
        name = "limit" if part == "limits" else "reservation"
        try:
            got[f"cpu_{name}"] = None if d.get("cpus") is None else int(float(d["cpus"]) * NS)
        except ValueError:
            raise r.fail(f"{at}.{part}.cpus", f"{d['cpus']!r} is not a number") from None
        try:
            got[f"mem_{name}"] = None if d.get("memory") is None else size_bytes(d["memory"])
        except ValueError:
            raise r.fail(
                f"{at}.{part}.memory", f"{d['memory']!r} is not a size (e.g. 64M)"
            ) from None
    return Resources(**got)


def _check_ports(r: _Reader, stack: Stack) -> None:
    """Two services (or one twice) on one published port: Swarm would refuse the second."""
    seen: dict[tuple[int, str], str] = {}
    for s in stack.services:
        for p in s.ports:
            if p.published is None:
                continue
            claim = (p.published, p.protocol)
            if claim in seen:
                raise r.fail(
                    f"service {s.name}: ports",
                    f"host port {p.published}/{p.protocol} is already published by service {seen[claim]}",
                )
            seen[claim] = s.name
