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
    lock for all its services)."""
    return s.stack.stack_name


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


# -- the plan of a release: what it changes, before anything changes --------------------------
@dataclass(frozen=True)
class Move:
    """One member of a release: the image it runs now and the one the release sets."""

    service: str
    before: str  # REPOSITORY:TAG@DIGEST as the spec names it now
    after: str
    replicas: int | None  # None: one per node (global)

    @property
    def changes(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class Plan:
    """A release of `version` to `env`, computed from what runs: each member's image before
    and after, what `inv rollback` goes back to once it is done, and the stack's jobs (those
    that are members run first, to completion; the others are left alone). `inv plan
    --version` prints it and a deployment carries out its `images`."""

    env: str
    key: str  # the stack, else the application's service
    version: str
    moves: tuple[Move, ...]
    rollback: Mapping[str, str]  # service -> image; empty: none
    jobs: tuple[str, ...] = ()  # the stack's jobs, members or not

    @property
    def images(self) -> dict[str, str]:
        return {m.service: m.after for m in self.moves}

    @property
    def before(self) -> dict[str, str]:
        return {m.service: m.before for m in self.moves}

    def doc(self) -> dict:
        """The plan as JSON (`inv plan --version V --json`)."""
        return {
            "env": self.env,
            "service": self.key,
            "version": self.version,
            "services": [
                {
                    "service": m.service,
                    "before": m.before,
                    "after": m.after,
                    "digest_before": m.before.partition("@")[2],
                    "digest_after": m.after.partition("@")[2],
                    "replicas": m.replicas,
                    "changes": m.changes,
                }
                for m in self.moves
            ],
            "rollback": dict(self.rollback),
            "jobs": [{"service": j, "runs": j in self.images} for j in self.jobs],
        }


def plan(
    env: str,
    name: str,
    version: str,
    images: Mapping[str, str],
    running: Mapping[str, tuple[str, int | None]],
    history: Iterable[Mapping],
    jobs: Iterable[str] = (),
) -> Plan:
    """The plan of a release setting `images` (service -> image) where `running` has each
    member's image and replicas now; its rollback target is `rollback_target` of the history
    with this release's successful entry after it (`history` oldest first)."""
    before = {s: running[s][0] for s in images}
    done = {"services": parts(images, before), "result": Outcome.DEPLOYED}
    return Plan(
        env,
        name,
        version,
        tuple(Move(s, before[s], images[s], running[s][1]) for s in sorted(images)),
        rollback_target([*history, done], images),
        tuple(sorted(jobs)),
    )
