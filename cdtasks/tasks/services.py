"""services: create the proxy, application and database services once per cluster."""
from __future__ import annotations

from invoke import Collection, Exit, task

from .common import BAD_INPUT, DRIFT, envs, out, settings, user_errors


@task(help={"env": "environment (test, prod); default: every environment",
            "check": "only compare the env file with what runs; exit 5 on drift",
            "update": "also update services whose spec differs (only what differs)"})
@user_errors
def services(c, env=None, check=False, update=False):
    """Create networks and services once; --check shows drift, --update converges."""
    from .. import report, stack
    if check and update:
        raise Exit("error: --check and --update exclude each other", code=BAD_INPUT)
    drifted = False
    for e in envs(env):
        result = stack.ensure(settings(e), report.make_logger(f"services {e}"),
                              check=check, update=update)
        if result.drift:
            drifted = True
            report.print_table(f"{e}: differences (env file vs running)",
                               ["service", "field", "env file", "running"],
                               [list(d) for d in result.drift])
            if not check:
                out(f"{e}: left as they run; `inv services --env {e} --update` converges them")
        elif check:
            out(f"{e}: services match {e}.env")
        if not check:
            out(f"{e}: " + ("; ".join(result.done) if result.done else "nothing to change"))
    if check and drifted:
        raise Exit(code=DRIFT)


ns = Collection("services", services)
