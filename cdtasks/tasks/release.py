"""deploy, rollback, history: continuous deployment to production."""
from __future__ import annotations

from invoke import Collection, Exit, task

from .. import release, report
from ..records import LockHeld
from ..release import Deployment, ReleaseError
from .common import BAD_INPUT, out, settings, user_errors

ROLLED_BACK, NOT_RECOVERED, LOCKED = 20, 21, 22  # exit codes, documented in the README

HELP = {
    "env": "environment to deploy to (default prod)",
    "version": "version to deploy (default: the last one that passed `inv deliver` on prod-like)",
    "force": "deploy a version that never passed prod-like",
    "no_rollback": "keep a failing version running (for debugging) instead of rolling back",
    "wait": "wait for another deployment's lock instead of refusing (up to 10 minutes)",
    "source": "environment whose prod-like cluster verified the versions (default test)",
}
LOCK_WAIT = 600


def run_deployment(d: Deployment, title: str) -> dict:
    """Prepare (lock), run, record, print and report; exit non-zero on failure."""
    d.log = report.make_logger(title)
    try:
        token = release.prepare(d)
    except ReleaseError as exc:
        raise Exit(f"error: {exc}", code=BAD_INPUT) from None
    except LockHeld as exc:
        raise Exit(f"error: {exc}", code=LOCKED) from None
    results = []
    with report.Progress(title) as progress:
        d.log = progress.log
        d.release.log = progress.log
        d.release.on_line = d.on_line = lambda line: progress.update(line[-100:])
        try:
            results = release.run(d, progress)
        finally:
            entry = release.finish(d, results, token)
    report.print_results(title, results)
    out(f"{d.service} on {d.prod.env}: {entry['result']} ({entry['version']}, {d.image})")
    paths = report.write_reports(d.prod.reports_dir, title, results, entry)
    out("reports: " + ", ".join(map(str, paths)))
    if entry["result"] in ("failed, rolled back",):
        raise Exit(code=ROLLED_BACK)
    if entry["result"].startswith("failed"):
        raise Exit(code=NOT_RECOVERED)
    return entry


@task(help=HELP)
@user_errors
def deploy(c, env="prod", version=None, force=False, no_rollback=False, wait=False, source="test"):
    """Deploy the digest verified on prod-like; production tests; roll back on failure."""
    d = Deployment(settings(env), settings(source), version, force=force,
                   auto_rollback=not no_rollback, wait=LOCK_WAIT if wait else 0)
    run_deployment(d, "deploy")


@task(help={"env": HELP["env"], "to": "version to go back to (default: the previous image)",
            "wait": HELP["wait"], "source": HELP["source"]})
@user_errors
def rollback(c, env="prod", to=None, wait=False, source="test"):
    """Roll a cluster back to its previous version (or --to one), then production tests."""
    d = Deployment(settings(env), settings(source), to, force=True, auto_rollback=False,
                   wait=LOCK_WAIT if wait else 0, kind="rollback")
    run_deployment(d, "rollback")


@task(help={"env": HELP["env"]})
@user_errors
def history(c, env="prod"):
    """List the deployments of a cluster: time, user, version, digest, result, duration."""
    s = settings(env)
    rows, where = release.history(s)
    report.print_table(f"{env}: deployments of {s.app_service} (from {where})",
                       ["time", "user", "kind", "version", "digest", "result", "rolled back",
                        "seconds"],
                       [[r["time"], r["user"], r["kind"], r["version"], (r.get("digest") or "-")[:19],
                         r["result"], "yes" if r["rolled_back"] else "no", str(r["seconds"])]
                        for r in rows])
    if not rows:
        out("no deployments yet")


ns = Collection("release", deploy, rollback, history)
