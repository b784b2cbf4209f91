"""The images a delivered project needs on the CD node before its compose steps run: those its
services use and those its builds start `FROM`, except what it builds itself. Docker Hub is
unreachable, so each missing one comes from the tool's offline images or from the cluster's
registry, or the delivery stops with one line naming the image and the service that needs it.

How the delivery calls it, after the checkout and before the unit tests and the build:

    model = check_contract(compose.model(), settings.delivery.compose_file)
    project_images.ensure(model, cluster.client(cd_node), cd_node, registry.address(settings),
                          cluster.provider.image_source(), log)

or step by step: needed(model, read_dockerfiles(model)) -> plan(...) -> apply(...).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from . import gateway, images
from .compose import ComposeModel, image_ref

PRESENT, OFFLINE, REGISTRY = "present", "offline", "registry"  # where a needed image comes from
_VARIABLE = re.compile(
    r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-+])([^}]*))?\}"
    r"|([A-Za-z_][A-Za-z0-9_]*))"
)


class MissingImage(RuntimeError):
    """A needed image cannot be had on the CD node; the message is one line naming it."""


def _instructions(text: str) -> Iterable[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue  # comments and empty lines may sit inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line, pending = (pending + stripped).strip(), ""
        if line:
            word, _, rest = line.partition(" ")
            yield word.upper(), rest.strip()
    if pending.strip():
        word, _, rest = pending.strip().partition(" ")
        yield word.upper(), rest.strip()


def _substitute(value: str, variables: Mapping[str, str]) -> str:
    """Dockerfile substitution: $X, ${X}, ${X:-default}, ${X:+alternative}."""

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        current = variables.get(name, "")
        if m.group(2) == "-":
            return current or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if current else ""
        return current

    return _VARIABLE.sub(one, value)


def dockerfile_bases(text: str, build_args: Mapping[str, str] | None = None) -> list[str]:
    """The images a Dockerfile's build starts from (`FROM`, `COPY --from=IMAGE`), in order,
    with the ARGs declared before the first FROM substituted (their defaults, overridden by
    `build_args`), without its own stages and `scratch`; as the engine tags them."""
    build_args = build_args or {}
    variables: dict[str, str] = {}
    stages: list[str] = []
    out: list[str] = []

    def add(ref: str) -> None:
        if (
            ref
            and ref.lower() != "scratch"
            and ref.lower() not in stages
            and image_ref(ref) not in out
        ):
            out.append(image_ref(ref))

    for word, rest in _instructions(text):
        if word == "ARG" and not stages:  # only ARGs before the first FROM reach FROM lines
            for item in shlex.split(rest):
                name, eq, default = item.partition("=")
                variables[name] = build_args.get(
                    name, _substitute(default, variables) if eq else ""
                )
        elif word == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            if not words:
                continue
            add(_substitute(words[0], variables))
            stages.append(
                words[2].lower()
                if len(words) >= 3 and words[1].lower() == "as"
                else str(len(stages))
            )
        elif word == "COPY":
            for flag in rest.split():
                if flag.startswith("--from="):
                    source = _substitute(flag[len("--from=") :], variables)
                    if not source.isdigit():
                        add(source)
    return out


def read_dockerfiles(model: ComposeModel) -> dict[str, str]:
    """service -> text of the Dockerfile it builds from (builds from a local context only;
    a missing file is left for the build step to report)."""
    out = {}
    for service, build in model.builds.items():
        path = Path(build.context) / build.dockerfile
        if "://" not in build.context and path.is_file():
            out[service] = path.read_text(encoding="utf-8", errors="replace")
    return out


def needed(model: ComposeModel, dockerfiles: Mapping[str, str]) -> dict[str, str]:
    """image -> the first service that needs it: the images of the services and the bases of
    their builds, except the images the project builds itself."""
    built = {model.built_image(service) for service in model.builds}
    out: dict[str, str] = {}
    for service in model.services:
        refs = [model.images[service]] if service in model.images else []
        if service in model.builds:
            refs = dockerfile_bases(dockerfiles.get(service, ""), model.builds[service].args)
        for ref in refs:
            if ref not in built:
                out.setdefault(ref, service)
    return out


def registry_ref(image: str, registry: str) -> str:
    """Where the cluster's registry (registry.address) keeps `image`: `mongo:3.2.10` ->
    `localhost:5000/mongo:3.2.10`."""
    return image if image.startswith(registry + "/") else f"{registry}/{image}"


def plan(
    needs: Mapping[str, str],
    present: Iterable[str],
    offline: Iterable[str],
    in_registry: Iterable[str],
    node: str,
    registry: str,
) -> dict[str, str]:
    """image -> PRESENT (the node has it), OFFLINE (one of the tool's images: loaded into the
    node) or REGISTRY (pulled from the cluster's registry); MissingImage for the first that
    is none of these. `present`: the node's tags; `offline`: the tool's image refs it can
    load; `in_registry`: the needed images the registry answered for."""
    present, offline, in_registry = set(map(image_ref, present)), set(offline), set(in_registry)
    out = {}
    for image, service in needs.items():
        if image in present:
            out[image] = PRESENT
        elif image in offline:
            out[image] = OFFLINE
        elif image in in_registry:
            out[image] = REGISTRY
        else:
            raise MissingImage(
                f"image {image} needed by service {service} is not on CD node "
                f"{node}, not one the tool builds, and not in the registry "
                f"{registry}; Docker Hub is not reachable from here"
            )
    return out


def node_tags(client) -> set[str]:
    """Every tag the node's engine has."""
    return {t for i in client.images.list() for t in i.tags}


def in_registry(client, candidates: Iterable[str], registry: str) -> set[str]:
    """The candidates the registry has, asked through the node's engine (which reaches the
    registry at `registry`, e.g. localhost:5000); digests are not looked up."""
    out = set()
    for image in candidates:
        if "@" in image:
            continue
        try:
            gateway.registry_digest(client, registry_ref(image, registry))
        except gateway.APIFailure:  # NotFound, or the registry's error for an unknown repository
            continue
        out.add(image)
    return out


def apply(
    steps: Mapping[str, str],
    client,
    node: str,
    registry: str,
    image_source,
    log: Callable[[str], None],
) -> list[str]:
    """Load the OFFLINE images into the node (images.provide: built on `image_source` if
    needed, copied by ID) and pull the REGISTRY ones, tagged as the project names them.
    Returns what was done, one line each."""
    done = []
    offline = [i for i, source in steps.items() if source == OFFLINE]
    if offline:
        images.provide(image_source, {node: client}, offline, log)
        done.append(f"loaded {', '.join(offline)} into {node}")
    for image in (i for i, source in steps.items() if source == REGISTRY):
        ref = registry_ref(image, registry)
        log(f"{node}: pulling {ref}")
        repository, _, tag = ref.rpartition(":")
        pulled = client.images.pull(repository, tag=tag)
        if ref != image:
            name, _, version = image.rpartition(":")
            pulled.tag(name, version)
        done.append(f"pulled {image} from {registry} into {node}")
    return done


def ensure(
    model: ComposeModel, client, node: str, registry: str, image_source, log: Callable[[str], None]
) -> list[str]:
    """Everything above for one delivery: what the project needs, what the node lacks, where
    each comes from, then load and pull. `image_source`: the engine holding the tool's
    offline images (`cluster.provider.image_source()`; None: they cannot be loaded)."""
    needs = needed(model, read_dockerfiles(model))
    present = {image_ref(t) for t in node_tags(client)}
    lacking = [i for i in needs if i not in present]
    offline = {i.ref for i in images.IMAGES.values()} if image_source is not None else set()
    answered = in_registry(client, [i for i in lacking if i not in offline], registry)
    return apply(
        plan(needs, present, offline, answered, node, registry),
        client,
        node,
        registry,
        image_source,
        log,
    )
