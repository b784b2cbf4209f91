"""deliver, and each of its steps as a task of its own for shell scripts to chain."""

from __future__ import annotations

from invoke import Collection, Exit

from .common import CONFIG, out, print_json, settings, user_errors
from .deployment import deploy_and_report
from .flags import task

NOTES = {
    "env": "the cluster that delivers: CD node, prod-like (default test)",
    "version": "default: the git tag, else the short commit id",
    "prod_env": "with --deploy (default prod)",
    "json": "with --deploy, the deploy report on a second line",
    "max_errors": "above it prod-like is rolled back (exit 16); with --deploy, production "
    "too (exit 20)",
}
STEP_NOTES = {"env": NOTES["env"]}


def _settings(c, env, image=None, compose_file=None, cd_node=None, job_timeout=None):
    return settings(
        c,
        env,
        app_image=image,
        compose_file=compose_file,
        cd_node=cd_node,
        job_timeout=job_timeout,
    )


def _reported(d, title: str, progress, run, json: bool = False) -> list:
    """`run(progress)`, then `_finish`: also when a signal stopped it (then the interruption
    goes on to `user_errors`, which exits 128 + the signal). Returns the results."""
    from ..runner import RunInterrupted

    try:
        with progress:
            results = run(progress)
    except RunInterrupted as exc:
        _finish(d, exc.results, title, json)
        raise
    _finish(d, results, title, json)
    return results


def _finish(d, results, title: str, json: bool = False) -> None:
    """Print the results (`json`: the report, nothing else on stdout) and the state left
    behind, write the reports."""
    from .. import delivery, release, report

    s = d.settings
    state = delivery.state_after(d, results)
    meta = {
        "env": s.env,
        "service": release.key(s),
        "version": d.version,
        "ref": d.ref,
        "repo": d.repo,
        "digest": d.digest,
        "services": release.parts(d.targets, d.previous),
        "budget": d.budget.record() if d.budget else None,
        "state": state,
        "dry_run": d.dry_run,
        "commands": d.commands,
    }
    if json:
        print_json(report.report_doc(title, results, meta, secrets=s.secrets))
    else:
        report.print_results(title, results, secrets=s.secrets)
    out(state, json)
    paths = report.write_reports(s.delivery.reports_dir, title, results, meta, secrets=s.secrets)
    out("reports: " + ", ".join(map(str, paths)), json)


def deliver_and_deploy(
    c,
    env="test",
    repo=None,
    ref="HEAD",
    version=None,
    image=None,
    compose_file=None,
    cd_node=None,
    dry_run=False,
    deploy=False,
    prod_env="prod",
    json=False,
    max_errors=None,
    job_timeout=None,
) -> int:
    """What `inv deliver` runs, and the watcher for each commit: the library's deliver-then-
    deploy with this layer's display and reports. Returns the exit code."""
    from .. import checks, delivery, report

    s = _settings(c, env, image, compose_file, cd_node, job_timeout)
    progress = report.Progress("deliver")
    budget = checks.max_errors(max_errors)
    d = delivery.Delivery(
        s,
        repo or s.delivery.repo,
        ref,
        version,
        dry_run=dry_run,
        log=progress.log,
        on_line=lambda line: progress.update(line[-100:]),
        defer_down=True,
        max_errors=budget,
    )
    return delivery.deliver_then_deploy(
        d,
        settings(c, prod_env, job_timeout=job_timeout) if deploy else None,
        lambda d: _reported(d, "deliver", progress, lambda p: delivery.deliver(d, p), json),
        lambda dep: deploy_and_report(dep, "deploy", json),
    )


@task(notes=NOTES)
@user_errors
def deliver(
    c,
    env="test",
    repo=None,
    ref="HEAD",
    version=None,
    image=None,
    compose_file=None,
    cd_node=None,
    dry_run=False,
    deploy=False,
    prod_env="prod",
    max_errors=None,
    job_timeout=None,
    json=False,
):
    """Deliver: checkout, unit, build, staging, publish, prod-like, prod tests (--deploy: on)."""
    code = deliver_and_deploy(
        c,
        env,
        repo,
        ref,
        version,
        image,
        compose_file,
        cd_node,
        dry_run,
        deploy,
        prod_env,
        json,
        max_errors,
        job_timeout,
    )
    if code:
        raise Exit(code=code)


def _one_step(name: str, d) -> None:
    from .. import delivery, report

    progress = report.Progress(name)
    d.log = progress.log
    d.on_line = lambda line: progress.update(line[-100:])
    code = delivery.failed_code(_reported(d, name, progress, lambda p: delivery.step(d, name, p)))
    if code:
        raise Exit(code=code)


def _step_task(name: str, doc: str):
    def step(c, env="test", image=None, compose_file=None, cd_node=None, dry_run=False):
        from .. import delivery

        s = _settings(c, env, image, compose_file, cd_node)
        _one_step(name, delivery.load_state(s, dry_run=dry_run))

    step.__doc__ = doc
    step.__name__ = name
    return task(name=name, notes=STEP_NOTES)(user_errors(step))


@task(notes={k: NOTES[k] for k in ("env", "version")})
@user_errors
def checkout(
    c,
    env="test",
    repo=None,
    ref="HEAD",
    version=None,
    image=None,
    compose_file=None,
    cd_node=None,
    dry_run=False,
):
    """Deliver's first step: check the repository out into the workspace (the later steps use it)."""
    from .. import delivery

    s = _settings(c, env, image, compose_file, cd_node)
    d = delivery.Delivery(s, repo or s.delivery.repo, ref, version, dry_run=dry_run)
    delivery.check_input(d)
    _one_step("checkout", d)


# `inv --list` sorts tasks by name: each step names the one it follows, not a number.
unit = _step_task("unit", "After checkout: unit tests (compose run --rm unit) on the CD node.")
build = _step_task("build", "After unit: build the image (compose build app) on the CD node.")
staging = _step_task("staging", "After build: staging tests against staging-dep; torn down.")
publish = _step_task("publish", "After staging: push the versioned image to the registry.")
prodlike = _step_task("prodlike", "After publish: update the prod-like service and wait.")
prodtest = _step_task("prodtest", "After prodlike: production tests against the proxy.")

ns = Collection("delivery", deliver, checkout, unit, build, staging, publish, prodlike, prodtest)
ns.configure(CONFIG)
