"""services: create the proxy, application and database services once per cluster."""

from __future__ import annotations

from invoke import Collection, Exit

from .common import BAD_INPUT, CONFIG, DRIFT, envs, out, print_json, settings, user_errors
from .flags import task


@task(notes={"env": "default: every environment"})
@user_errors
def services(c, env=None, check=False, update=False, json=False):
    """Create networks and services once; --check shows drift, --update converges."""
    from .. import report, stack

    if check and update:
        raise Exit("error: --check and --update exclude each other", code=BAD_INPUT)
    drifted, docs = False, {}
    for e in envs(c, env):
        result = stack.ensure(
            settings(c, e), report.make_logger(f"services {e}"), check=check, update=update
        )
        drifted = drifted or bool(result.drift)
        docs[e] = {
            "done": list(result.done),
            "drift": [
                dict(zip(("service", "field", "env_file", "running"), d, strict=True))
                for d in result.drift
            ],
        }
        if json:
            continue
        if result.drift:
            report.print_table(
                f"{e}: differences (env file vs running)",
                ["service", "field", "env file", "running"],
                [list(d) for d in result.drift],
            )
            if not check:
                out(f"{e}: left as they run; `inv services --env {e} --update` converges them")
        elif check:
            out(f"{e}: services match {e}.env")
        if not check:
            out(f"{e}: " + ("; ".join(result.done) if result.done else "nothing to change"))
    if json:
        print_json(docs)
    if check and drifted:
        raise Exit(code=DRIFT)


ns = Collection("services", services)
ns.configure(CONFIG)
