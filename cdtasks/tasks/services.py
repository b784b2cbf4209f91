"""services: create the proxy, application and database services once per cluster."""

from __future__ import annotations

import time

from invoke import Collection, Exit

from . import flags
from .common import BAD_INPUT, CONFIG, DRIFT, envs, out, print_json, settings, user_errors
from .flags import task


@task(notes={"env": "default: every environment"})
@user_errors
def services(c, env=None, check=False, update=False, json=False):
    """Create the stack (STACK_FILE) once; --check shows drift, --update converges."""
    from .. import report, stack

    if check and update:
        raise Exit("error: --check and --update exclude each other", code=BAD_INPUT)
    drifted, docs = False, {}
    for e in envs(c, env):
        s = settings(c, e)
        wanted = s.stack.stack_file.name
        result = stack.ensure(s, report.make_logger(f"services {e}"), check=check, update=update)
        drifted = drifted or bool(result.drift)
        docs[e] = {
            "done": list(result.done),
            "drift": [d._asdict() for d in result.drift],
        }
        if json:
            continue
        if result.drift:
            report.print_table(
                f"{e}: differences ({wanted} vs running)",
                ["service", "field", wanted, "running"],
                [list(d) for d in result.drift],
            )
            if not check:
                out(f"{e}: left as they run; `inv services --env {e} --update` converges them")
        elif check:
            out(f"{e}: services match {wanted}")
        if not check:
            out(f"{e}: " + ("; ".join(result.done) if result.done else "nothing to change"))
    if json:
        print_json(docs)
    if check and drifted:
        raise Exit(code=DRIFT)


@task(positional=["service"])
@user_errors
def logs(c, service, env="test", since=None, tail=None, follow=False):
    """Print a service's logs through a manager, as `docker service logs` does."""
    from .. import cluster, services, stack

    s = settings(c, env)
    name = stack.service_name(s, service)
    try:
        started = time.time() - flags.seconds(since) if since else 0
        lines = int(tail) if tail is not None else None
    except ValueError as exc:
        raise Exit(f"error: {exc}", code=BAD_INPUT) from None
    manager = cluster.Cluster.of(s).discover().gateway()
    for line in services.logs(manager, name, since=int(started), tail=lines, follow=follow):
        out(line)


@task(
    notes={
        "env": "default: every environment; with --version, prod (like deploy)",
        "version": "instead: what deploying this delivered version to --env would change",
        "test_env": "with --version: default test",
    }
)
@user_errors
def plan(c, env=None, version=None, test_env="test", json=False):
    """Show what `inv services --update` (--version V: a deploy of V) would change, from what runs."""
    from .. import report, stack

    if version is not None:
        _release_plan(c, env or "prod", version, test_env, json)
        return
    docs = {}
    for e in envs(c, env):
        s = settings(c, e)
        p = stack.plan_file(s, report.make_logger(f"plan {e}")).plan
        docs[e] = {
            "stack": p.stack,
            "routing": p.routing,
            "adapted": list(p.adapted),
            "changes": [
                {
                    "kind": ch.kind,
                    "name": ch.name,
                    "action": ch.action,
                    "keys": [
                        dict(zip(("key", "wanted", "running"), k, strict=True)) for k in ch.keys
                    ],
                }
                for ch in p.changes
            ],
        }
        if json:
            continue
        if not p.changes:
            out(f"{e}: stack {p.stack} runs as {s.stack.stack_file.name} says: nothing to change")
            continue
        report.print_table(
            f"{e}: plan of stack {p.stack} ({s.stack.stack_file.name} vs running)",
            ["kind", "name", "action", "key", "wanted", "running"],
            [
                [ch.kind, ch.name, ch.action, *k]
                for ch in p.changes
                for k in (ch.keys or [("-", "-", "-")])
            ],
        )
    if json:
        print_json(docs)


def _release_plan(c, env: str, version: str, test_env: str, json: bool) -> None:
    """`inv plan --version V`: the plan a deployment of V to `env` would carry out."""
    from .. import deployment, release, report

    d = deployment.Deployment(
        settings(c, env), settings(c, test_env), version, log=report.make_logger(f"plan {env}")
    )
    p = deployment.plan(d)
    if json:
        print_json({env: p.doc()})
        return
    report.print_table(
        f"{env}: plan of the release of {p.version} ({p.key})",
        ["service", "image now", "digest now", "image after", "digest after", "replicas", "change"],
        [
            [
                m.service,
                *_image_digest(m.before),
                *_image_digest(m.after),
                "global" if m.replicas is None else str(m.replicas),
                "update" if m.changes else "none",
            ]
            for m in p.moves
        ],
    )
    if not any(m.changes for m in p.moves):
        out(f"{env}: runs {p.version} already: nothing to change")
    out(f"{env}: rollback target once deployed: {release.summary(p.rollback) or 'none'}")
    first = [j for j in p.jobs if j in p.images]
    if first:
        out(f"{env}: jobs run first, to completion: {', '.join(first)}")
    alone = [j for j in p.jobs if j not in p.images]
    if alone:
        out(f"{env}: jobs left alone (not on a released image): {', '.join(alone)}")


def _image_digest(image: str) -> tuple[str, str]:
    """REPOSITORY:TAG and the digest's first 12 hex digits, as `inv history` shows them."""
    name, _, digest = image.partition("@")
    return name, (digest or "-")[:19]


ns = Collection("services", services, logs, plan)
ns.configure(CONFIG)
