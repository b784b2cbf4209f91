"""deploy, rollback, history: continuous deployment to production."""

from __future__ import annotations

from invoke import Collection, Exit

from .common import BAD_INPUT, CONFIG, out, print_json, settings, user_errors
from .flags import task

NOTES = {"env": "the cluster deployed to (default prod)", "test_env": "default test"}


def deploy_and_report(d, title: str, json: bool = False) -> dict:
    """Run the deployment, print and report it (`json`: the report on stdout, nothing else);
    returns its history entry (a signal: the interruption goes on to `user_errors` once
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
    return entry


def _deployed(d, title: str, json: bool) -> None:
    """`deploy_and_report`, exiting with the outcome's code."""
    from ..outcome import Outcome

    code = Outcome.of(deploy_and_report(d, title, json)["result"]).exit_code
    if code:
        raise Exit(code=code)


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


def _deployment(c, env, test_env, version, wait, job_timeout=None, **kw):
    from .. import deployment, rollout

    return deployment.Deployment(
        settings(c, env, job_timeout=job_timeout),
        settings(c, test_env),
        version,
        wait=rollout.LOCK_WAIT if wait else 0,
        **kw,
    )


def _gate(steps, hold, replicas, max_error_rate, max_latency, min_requests):
    """The canary's flags as a Gate (None without --canary); a bad one: exit 2, naming it."""
    from .. import canary

    if steps is None:
        return None
    try:
        return canary.check_gate(
            canary.Gate(
                canary.parse_steps(steps),
                float(hold),
                float(max_error_rate),
                int(max_latency) or None,
                int(min_requests),
                int(replicas),
            )
        )
    except ValueError as exc:
        raise Exit(f"error: {exc}", code=BAD_INPUT) from None


@task(
    notes={
        **NOTES,
        "version": "default: the last one that passed `inv deliver` on prod-like",
        "force": "deploy a version that never passed prod-like",
        "max_errors": "above it the rollout fails and is rolled back (exit 20)",
        "max_error_rate": "default 1",
        "min_requests": "default 100",
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
    max_errors=None,
    job_timeout=None,
    json=False,
    canary=None,
    canary_for=30.0,
    canary_replicas=1,
    max_error_rate=1.0,
    max_latency=0,
    min_requests=100,
):
    """Deploy the digest verified on prod-like (after a canary); production tests; roll back."""
    from .. import checks

    gate = _gate(canary, canary_for, canary_replicas, max_error_rate, max_latency, min_requests)
    _deployed(
        _deployment(
            c,
            env,
            test_env,
            version,
            wait,
            job_timeout,
            force=force,
            auto_rollback=not no_rollback,
            canary=gate,
            max_errors=checks.max_errors(max_errors),
        ),
        "deploy",
        json,
    )


@task(notes={**NOTES, "version": "the one to go back to (default: the previous image)"})
@user_errors
def rollback(c, env="prod", version=None, wait=False, test_env="test", json=False):
    """Roll a cluster back to its previous version (or --version V), then production tests."""
    _deployed(
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
    from .. import budget, deployment, registry, release, report

    s = settings(c, env)
    rows, where = deployment.history(s)
    if where != "cluster":  # the local log has only this machine's runs, and may be old
        out(f"warning: {env}'s cluster did not answer; showing the {where}", stderr=True)
    if json:
        print_json({"env": env, "service": release.key(s), "source": where, "deployments": rows})
        return
    report.print_table(
        f"{env}: deployments of {release.key(s)} (from {where})",
        [
            "time",
            "user",
            "kind",
            "version",
            "image",
            "digest",
            "result",
            "rolled back",
            "errors",
            "seconds",
        ],
        [
            [
                r["time"],
                r["user"],
                r["kind"],
                r["version"],
                ", ".join(
                    f"{s} {registry.repository(i)}"
                    if len(r.get("services") or ()) > 1
                    else registry.repository(i)
                    for s, i in sorted(release.images_of({"image": "-", **r}).items())
                ),
                (r.get("digest") or "-")[:19],
                r["result"],
                "yes" if r["rolled_back"] else "no",
                budget.brief(r.get("budget")),
                str(r["seconds"]),
            ]
            for r in rows
        ],
    )
    if not rows:
        out("no deployments yet")


ns = Collection("deployment", deploy, rollback, history)
ns.configure(CONFIG)
