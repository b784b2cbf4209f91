"""deploy, rollback, history: continuous deployment to production."""
from __future__ import annotations

from invoke import Collection, Exit, task

from .common import CONFIG, JSON_HELP, deployment_exit, out, print_json, settings, user_errors

HELP = {
    "env": "environment to deploy to (default prod)",
    "version": "version to deploy (default: the last one that passed `inv deliver` on prod-like)",
    "force": "deploy a version that never passed prod-like",
    "no_rollback": "keep a failing version running (for debugging) instead of rolling back",
    "wait": "wait for another deployment's lock instead of refusing (up to 10 minutes)",
    "source": "environment whose prod-like cluster verified the versions (default test)",
    "json": JSON_HELP,
}


def deploy_and_report(d, title: str, json: bool = False) -> dict:
    """Run the deployment, print and report it (`json`: the report on stdout, nothing else);
    exit non-zero on failure (a signal: the interruption goes on to `user_errors` once
    reported)."""
    from .. import deployment, report
    from ..runner import RunInterrupted
    progress = report.Progress(title)
    d.log = progress.log
    d.on_line = lambda line: progress.update(line[-100:])
    try:
        with progress:
            entry, results = deployment.run(d, progress)
    except RunInterrupted as exc:
        if exc.record is not None:
            _report(d, title, exc.results, exc.record, json)
        raise
    _report(d, title, results, entry, json)
    code = deployment_exit(entry["result"])
    if code:
        raise Exit(code=code)
    return entry


def _report(d, title: str, results, entry: dict, json: bool = False) -> None:
    from .. import report
    from ..redaction import redact
    secrets = [*d.prod.secrets, *d.test.secrets]
    if json:
        print_json(report.report_doc(title, results, entry, secrets=secrets))
    else:
        report.print_results(title, results, secrets=secrets)
    out(redact(f"{d.service} on {d.prod.env}: {entry['result']} ({entry['version']}, "
                      f"{d.image})", secrets), json)
    paths = report.write_reports(d.prod.delivery.reports_dir, title, results, entry, secrets=secrets)
    out("reports: " + ", ".join(map(str, paths)), json)


def _deployment(c, env, source, version, wait, **kw):
    from .. import deployment, rollout
    return deployment.Deployment(settings(c, env), settings(c, source), version,
                                 wait=rollout.LOCK_WAIT if wait else 0, **kw)


@task(help=HELP)
@user_errors
def deploy(c, env="prod", version=None, force=False, no_rollback=False, wait=False, source="test",
           json=False):
    """Deploy the digest verified on prod-like; production tests; roll back on failure."""
    deploy_and_report(_deployment(c, env, source, version, wait, force=force,
                                  auto_rollback=not no_rollback), "deploy", json)


@task(help={"env": HELP["env"], "to": "version to go back to (default: the previous image)",
            "wait": HELP["wait"], "source": HELP["source"], "json": JSON_HELP})
@user_errors
def rollback(c, env="prod", to=None, wait=False, source="test", json=False):
    """Roll a cluster back to its previous version (or --to one), then production tests."""
    deploy_and_report(_deployment(c, env, source, to, wait, force=True, auto_rollback=False,
                                  kind="rollback"), "rollback", json)


@task(help={"env": HELP["env"], "json": JSON_HELP})
@user_errors
def history(c, env="prod", json=False):
    """List the deployments of a cluster: time, user, version, digest, result, duration."""
    from .. import deployment, registry, report
    s = settings(c, env)
    rows, where = deployment.history(s)
    if json:
        print_json({"env": env, "service": s.services.app_service, "source": where, "deployments": rows})
        return
    report.print_table(f"{env}: deployments of {s.services.app_service} (from {where})",
                       ["time", "user", "kind", "version", "image", "digest", "result",
                        "rolled back", "seconds"],
                       [[r["time"], r["user"], r["kind"], r["version"],
                         registry.repository(r.get("image") or "-"), (r.get("digest") or "-")[:19],
                         r["result"], "yes" if r["rolled_back"] else "no", str(r["seconds"])]
                        for r in rows])
    if not rows:
        out("no deployments yet")


ns = Collection("deployment", deploy, rollback, history)
ns.configure(CONFIG)
