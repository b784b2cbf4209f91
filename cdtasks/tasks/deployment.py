"""deploy, rollback, history: continuous deployment to production."""

from __future__ import annotations

from invoke import Collection, Exit

from .common import CONFIG, deployment_exit, out, print_json, settings, user_errors
from .flags import task

NOTES = {"env": "the cluster deployed to (default prod)", "test_env": "default test"}


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
    out(
        redact(
            f"{d.service} on {d.prod.env}: {entry['result']} ({entry['version']}, {d.image})",
            secrets,
        ),
        json,
    )
    paths = report.write_reports(
        d.prod.delivery.reports_dir, title, results, entry, secrets=secrets
    )
    out("reports: " + ", ".join(map(str, paths)), json)


def _deployment(c, env, test_env, version, wait, **kw):
    from .. import deployment, rollout

    return deployment.Deployment(
        settings(c, env),
        settings(c, test_env),
        version,
        wait=rollout.LOCK_WAIT if wait else 0,
        **kw,
    )


@task(
    notes={
        **NOTES,
        "version": "default: the last one that passed `inv deliver` on prod-like",
        "force": "deploy a version that never passed prod-like",
    }
)
@user_errors
def deploy(
    c,
    env="prod",
    version=None,
    force=False,
    no_rollback=False,
    wait=False,
    test_env="test",
    json=False,
):
    """Deploy the digest verified on prod-like; production tests; roll back on failure."""
    deploy_and_report(
        _deployment(c, env, test_env, version, wait, force=force, auto_rollback=not no_rollback),
        "deploy",
        json,
    )


@task(notes={**NOTES, "version": "the one to go back to (default: the previous image)"})
@user_errors
def rollback(c, env="prod", version=None, wait=False, test_env="test", json=False):
    """Roll a cluster back to its previous version (or --version V), then production tests."""
    deploy_and_report(
        _deployment(
            c, env, test_env, version, wait, force=True, auto_rollback=False, kind="rollback"
        ),
        "rollback",
        json,
    )


@task(notes={"env": "whose deployments (default prod)"})
@user_errors
def history(c, env="prod", json=False):
    """List the deployments of a cluster: time, user, version, digest, result, duration."""
    from .. import deployment, registry, report

    s = settings(c, env)
    rows, where = deployment.history(s)
    if where != "cluster":  # the local log has only this machine's runs, and may be old
        out(f"warning: {env}'s cluster did not answer; showing the {where}", stderr=True)
    if json:
        print_json(
            {"env": env, "service": s.services.app_service, "source": where, "deployments": rows}
        )
        return
    report.print_table(
        f"{env}: deployments of {s.services.app_service} (from {where})",
        ["time", "user", "kind", "version", "image", "digest", "result", "rolled back", "seconds"],
        [
            [
                r["time"],
                r["user"],
                r["kind"],
                r["version"],
                registry.repository(r.get("image") or "-"),
                (r.get("digest") or "-")[:19],
                r["result"],
                "yes" if r["rolled_back"] else "no",
                str(r["seconds"]),
            ]
            for r in rows
        ],
    )
    if not rows:
        out("no deployments yet")


ns = Collection("deployment", deploy, rollback, history)
ns.configure(CONFIG)
