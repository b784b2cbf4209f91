"""What a delivered compose file may reach on the operator's machine and on the CD node.

A pushed commit is untrusted input: its compose file must not read files outside the checkout
(build contexts, Dockerfiles, env files, included and extended files), mount the CD node's
engine, the registry's storage or the state directory, nor run with the host's privileges.
Two checks, both before any step runs: `check_files` reads the YAML that compose itself would
read (`include`, `extends.file` and `env_file` are resolved away in compose's model), before
compose reads any of it; `check_model` reads compose's resolved model (`config --format json`).
Each refusal is one line naming the file, the service, the key and the path (exit 2).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from .compose import ContractError

MAX_BYTES = 1 << 20  # a compose file (or one it includes) larger than this is not read
MAX_FILES = 32  # files reached through `include` and `extends.file`
SOCKETS = (Path("/var/run/docker.sock"), Path("/run/docker.sock"))
# Keys that hand a service (or its build) the CD node's host, refused unless COMPOSE_ALLOW names
# them. Namespace keys are refused for `host` and for another container's (`container:NAME`).
NAMESPACES = ("pid", "ipc", "uts", "userns_mode", "cgroup", "network_mode")
HOST_KEYS = (
    "privileged",
    *NAMESPACES,
    "cap_add",
    "devices",
    "device_cgroup_rules",
    "security_opt",
    "volumes_from",
    "build.privileged",
    "build.entitlements",
    "build.network",
)
# The contract's production tests reach the release through the host's network (HOST_IP).
HOST_NETWORK_SERVICES = ("production",)
# Build contexts that name no host path: an image, another service's build.
NOT_A_PATH = ("docker-image://", "service:", "target:")


class Refused(ContractError):
    """The compose file reaches outside the checkout or into the CD node's host."""


@dataclass(frozen=True)
class Policy:
    """The checkout a compose file may read, and what its bind mounts may name on the CD node:
    paths under `prefixes`, never the `protected` ones (nor their parents), except the exact
    paths and keys `allowed` names."""

    root: Path  # the checkout, symbolic links resolved
    given: Path  # the checkout as compose was given it (compose's paths start with it)
    protected: tuple[tuple[Path, str], ...]  # (path, what it is)
    prefixes: tuple[Path, ...]
    allowed: frozenset[str]

    @classmethod
    def of(cls, settings, checkout: Path) -> Policy:
        """From config.Settings: its delivery section, the state and registry directories."""
        d = settings.delivery
        protected = [(p, "the Docker socket") for p in SOCKETS]
        for path, what in (
            (settings.registry.registry_dir, "the registry's directory"),
            (d.workspace_dir, "the workspace"),
            (settings.cluster.state_dir, "the state directory"),
        ):
            protected += [
                (Path(os.path.normpath(path)), what),
                (Path(os.path.realpath(path)), what),
            ]
        return cls(
            Path(os.path.realpath(checkout)),
            Path(os.path.normpath(checkout)),
            tuple(protected),
            tuple(Path(p) for p in d.compose_mount_prefixes),
            frozenset(d.compose_allow),
        )


# -- the files compose reads -----------------------------------------------------------------
def check_files(policy: Policy, compose_file: str) -> None:
    """The compose file and every file it includes or extends, before compose reads them:
    each path they name must resolve inside the checkout (symbolic links followed)."""
    first = _inside(policy, policy.root, compose_file, compose_file, "--compose-file")
    todo, seen = [(first, first.parent)], set()
    while todo:
        path, base = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        label = str(path.relative_to(policy.root))
        if len(seen) > MAX_FILES:
            raise Refused(
                f"{label}: more than {MAX_FILES} compose files through include and extends"
            )
        dotenv = base / ".env"  # compose reads it for interpolation
        if os.path.lexists(dotenv):
            _inside(policy, base, ".env", label, "the project's .env")
        doc = _load(path, label)
        for entry in _items(doc.get("include")):
            spec = entry if isinstance(entry, Mapping) else {"path": entry}
            where = base
            if spec.get("project_directory") is not None:
                where = _inside(
                    policy, base, spec["project_directory"], label, "include: project_directory"
                )
            for p in _items(spec.get("env_file")):
                _inside(policy, base, p, label, "include: env_file")
            for p in _items(spec.get("path")):
                todo.append((_inside(policy, base, p, label, "include"), where))
        services = doc.get("services")
        for name, svc in services.items() if isinstance(services, Mapping) else ():
            if not isinstance(svc, Mapping):
                continue
            at = f"{label}: service {name}"
            extends = svc.get("extends")
            if isinstance(extends, Mapping) and extends.get("file") is not None:
                target = _inside(policy, base, extends["file"], at, "extends.file")
                todo.append((target, target.parent))
            for key in ("env_file", "label_file"):
                for entry in _items(svc.get(key)):
                    value = entry.get("path") if isinstance(entry, Mapping) else entry
                    _inside(policy, base, value, at, key)
            build = svc.get("build")
            if isinstance(build, Mapping):
                # compose cannot even print a model with ssh keys: checked here
                for entry in _items(build.get("ssh")):
                    for value in _pairs(entry):
                        if value != "default":
                            _inside(policy, base, value, at, "build.ssh")


def _load(path: Path, label: str) -> Mapping:
    """A compose file as YAML data (safe loading; a bounded regular file)."""
    try:
        with open(path, "rb") as stream:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise Refused(f"{label}: not a regular file")
            if info.st_size > MAX_BYTES:
                raise Refused(f"{label}: larger than {MAX_BYTES // 1024} KiB")
            doc = yaml.load(stream.read(MAX_BYTES + 1), Loader=yaml.CSafeLoader)
    except OSError as exc:
        raise Refused(f"{label}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise Refused(
            f"{label}{line}: not valid YAML ({getattr(exc, 'problem', None) or 'cannot parse'})"
        ) from None
    return doc if isinstance(doc, Mapping) else {}


def _items(value) -> list:
    """A compose key that takes one value or a list of them, as a list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _pairs(entry) -> Iterator[str]:
    """The values of `name=value` entries or of a mapping entry."""
    if isinstance(entry, Mapping):
        yield from (str(v) for v in entry.values())
    else:
        yield str(entry).partition("=")[2] or str(entry)


def _inside(policy: Policy, base: Path, value, where: str, key: str) -> Path:
    """`value` (relative to `base`) resolved, symbolic links followed: it must be in the
    checkout and be given literally (a variable is resolved by compose, after this check)."""
    text = str(value)
    if "$" in text:
        raise Refused(
            f"{where}: {key}: {text}: a variable in a path compose reads; write the "
            f"path inside the checkout literally"
        )
    if "://" in text or text.startswith("git@"):
        raise Refused(f"{where}: {key}: {text}: not a path inside the checkout")
    target = Path(os.path.realpath(base / os.path.expanduser(text)))
    if not target.is_relative_to(policy.root):
        shown = "" if str(target) == text else f" ({target})"
        raise Refused(f"{where}: {key}: {text} resolves outside the checkout{shown}")
    return target


# -- compose's resolved model ------------------------------------------------------------------
def check_model(policy: Policy, compose_file: str, config: Mapping) -> None:
    """Compose's model of the file (`config --format json`: paths made absolute, `extends`
    and `include` merged): builds read only the checkout, bind mounts and file secrets or
    configs name only the checkout or allowed host paths, and no service takes the host's
    privileges unless COMPOSE_ALLOW says so."""
    volumes = config.get("volumes") or {}
    for name, svc in (config.get("services") or {}).items():
        at = f"{compose_file}: service {name}"
        build = svc.get("build") or {}
        if build:
            _build(policy, at, build)
        for mount in svc.get("volumes") or ():
            if mount.get("type") == "bind":
                _mount(policy, at, "volumes", mount.get("source") or "")
            elif mount.get("type") == "volume" and mount.get("source") in volumes:
                device = ((volumes[mount["source"]] or {}).get("driver_opts") or {}).get("device")
                if device:
                    _mount(
                        policy, at, f"volumes ({mount['source']}: driver_opts.device)", str(device)
                    )
        for key, value in _host_keys(name, svc):
            if key not in policy.allowed:
                raise Refused(
                    f"{at}: {key}: {value}: gives the service the CD node's host; "
                    f"refused unless COMPOSE_ALLOW names {key}"
                )
    for kind in ("secrets", "configs"):
        for name, spec in (config.get(kind) or {}).items():
            if (spec or {}).get("file"):
                _mount(policy, f"{compose_file}: {kind} {name}", "file", spec["file"])


def _build(policy: Policy, at: str, build: Mapping) -> None:
    context = str(build.get("context") or ".")
    root = _inside(policy, policy.root, context, at, "build.context")
    if build.get("dockerfile"):
        _inside(policy, root, build["dockerfile"], at, "build.dockerfile")
    extra = build.get("additional_contexts") or {}
    pairs = (
        extra.items() if isinstance(extra, Mapping) else (str(e).partition("=")[::2] for e in extra)
    )
    for name, value in pairs:
        value = str(value)
        if value.startswith("oci-layout://"):
            value = value[len("oci-layout://") :]
        elif value.startswith(NOT_A_PATH):
            continue
        _inside(policy, policy.root, value, at, f"build.additional_contexts.{name}")


def _mount(policy: Policy, at: str, key: str, source: str) -> None:
    """A host path a container gets: in the checkout (symbolic links followed), an exact path
    COMPOSE_ALLOW names, else under COMPOSE_MOUNT_PREFIXES and clear of the protected paths."""
    path = Path(os.path.normpath(source))
    if Path(os.path.realpath(path)).is_relative_to(policy.root):
        return
    if path.is_relative_to(policy.root) or path.is_relative_to(policy.given):
        _inside(policy, policy.root, source, at, key)  # a symbolic link out of the checkout
    if str(path) in policy.allowed:
        return
    for candidate in {path, Path(os.path.realpath(path))}:
        within = [(p, w) for p, w in policy.protected if candidate.is_relative_to(p)]
        holds = [(p, w) for p, w in policy.protected if p.is_relative_to(candidate)]
        if within or holds:
            p, what = (
                max(within, key=lambda x: len(x[0].parts))
                if within
                else min(holds, key=lambda x: len(x[0].parts))
            )
            how = "is" if p == candidate else "is inside" if within else "holds"
            raise Refused(
                f"{at}: {key}: {source} {how} {what}; refused unless COMPOSE_ALLOW names {path}"
            )
    if not any(path.is_relative_to(p) for p in policy.prefixes):
        raise Refused(
            f"{at}: {key}: {source} is outside the checkout and COMPOSE_MOUNT_PREFIXES "
            f"({', '.join(map(str, policy.prefixes)) or 'none'}); refused unless "
            f"COMPOSE_ALLOW names {path}"
        )


def _host_keys(name: str, svc: Mapping) -> Iterable[tuple[str, str]]:
    """(key, value) for each way the service takes the CD node's host."""
    if svc.get("privileged"):
        yield "privileged", "true"
    for key in NAMESPACES:
        value = str(svc.get(key) or "")
        if value.startswith("container:") or (
            value == "host" and not (key == "network_mode" and name in HOST_NETWORK_SERVICES)
        ):
            yield key, value
    for key in ("cap_add", "devices", "device_cgroup_rules"):
        if svc.get(key):
            yield key, ", ".join(_text(v) for v in svc[key])
    weakened = [
        str(o)
        for o in svc.get("security_opt") or ()
        if "unconfined" in str(o) or "disable" in str(o)
    ]
    if weakened:
        yield "security_opt", ", ".join(weakened)
    others = [str(v) for v in svc.get("volumes_from") or () if str(v).startswith("container:")]
    if others:
        yield "volumes_from", ", ".join(others)
    build = svc.get("build") or {}
    if build.get("privileged"):
        yield "build.privileged", "true"
    if build.get("entitlements"):
        yield "build.entitlements", ", ".join(map(str, build["entitlements"]))
    if build.get("network") == "host":
        yield "build.network", "host"


def _text(value) -> str:
    if isinstance(value, Mapping):  # a device: {source, target, permissions}
        return str(value.get("source") or value)
    return str(value)
