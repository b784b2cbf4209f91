"""A release: the set of Swarm services it changes and the image each one runs, as data.

Without STACK_FILE the set has one member, the application's service (the book's flow). With
a stack, every service of the delivery compose file that has `build:` is an image of the
release, and every stack service running one of those images, matched by image name without
registry and tag, is a member; a job among them (a migration) runs to completion before the
others update (`rollout.update`). Delivery and deployment update, follow and undo the whole
set together; history and records keep it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import registry
from .compose import ComposeModel, ContractError
from .config import Settings
from .outcome import Outcome


def key(s: Settings) -> str:
    """What a release's lock, history and delivered records are kept under: the stack (one
    lock for all its services), else the application's service."""
    return s.stack.stack_name if s.stack.stack_file is not None else s.services.app_service


def image_name(ref: str) -> str:
    """An image reference without registry, tag and digest:
    `localhost:5000/team-api:1.0@sha256:…` -> `team-api`, `team-worker` -> `team-worker`."""
    name = registry.repository(ref)
    first, slash, rest = name.partition("/")
    return rest if slash and ("." in first or ":" in first or first == "localhost") else name


def built_names(model: ComposeModel, app_image: str) -> dict[str, str]:
    """Compose service -> the image name it is published under: `app` as APP_IMAGE (the
    book's contract), every other service with `build:` by the name of its `image:`, which
    it must have (compose's default name changes with every run's project)."""
    out = {}
    for service in model.builds:
        if service == "app":
            out[service] = app_image
        elif service in model.images:
            out[service] = image_name(model.images[service])
        else:
            raise ContractError(
                f"{model.file}: service {service} builds an image but names none: give it "
                f"`image:` (the name it is published under)"
            )
    return out


@dataclass(frozen=True)
class StackMember:
    """What the release needs to know of one stack service."""

    service: str  # Swarm's name (NAME_service)
    image: str  # the image the stack file names


def members(stack: Iterable[StackMember], published: Mapping[str, str]) -> dict[str, str]:
    """Swarm service -> the published reference (image name -> reference in `published`) for
    every stack service running an image the release publishes, jobs included; services
    running anything else are not part of it."""
    by_name = {image_name(ref): ref for ref in published.values()}
    return {
        m.service: by_name[image_name(m.image)] for m in stack if image_name(m.image) in by_name
    }


def parts(after: Mapping[str, str], before: Mapping[str, str]) -> list[dict]:
    """The history's and the report's form of a release: each service with its image before
    and after, in service order."""
    return [{"service": s, "image": after[s], "previous": before.get(s, "")} for s in sorted(after)]


def changed(after: Mapping[str, str], before: Mapping[str, str]) -> dict[str, str]:
    """The members to move back after a failure: those whose image is not the one they ran."""
    return {s: before[s] for s in after if before.get(s) and before[s] != after[s]}


def summary(images: Mapping[str, str]) -> str:
    """`team_api runs X, team_worker runs Y` in service order."""
    return ", ".join(f"{s} runs {images[s]}" for s in sorted(images))


def images_of(entry: Mapping) -> dict[str, str]:
    """Service -> image of a history entry or delivered record: its `services` (a release of
    several), else its one service."""
    if entry.get("services"):
        return {p["service"]: p["image"] for p in entry["services"]}
    return {entry["service"]: entry["image"]}


def previous_of(entry: Mapping) -> dict[str, str]:
    """Service -> the image it ran before the entry's release."""
    if entry.get("services"):
        return {p["service"]: p["previous"] for p in entry["services"] if p.get("previous")}
    return {entry["service"]: entry["previous"]} if entry.get("previous") else {}


def rollback_target(history: Iterable[Mapping], current: Mapping[str, str]) -> dict[str, str]:
    """What `inv rollback` moves the set back to (history oldest first, `current`: service ->
    image now): the images of the last successful release that differs from what runs; else
    what ran before the release that runs now (the first one the tool made). Empty: none."""
    ok = [e for e in history if Outcome.of(str(e.get("result", ""))).ok]
    for entry in reversed(ok):
        images = images_of(entry)
        if any(current.get(s) != image for s, image in images.items()):
            return images
    for entry in reversed(ok):
        before = previous_of(entry)
        if before and any(current.get(s) != image for s, image in before.items()):
            return before
    return {}
