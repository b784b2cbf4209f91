"""deliver, and each of its steps as a task of its own for shell scripts to chain."""
from __future__ import annotations

from invoke import Collection, Exit, task

from .common import CONFIG, JSON_HELP, out, print_json, settings, step_failed, user_errors
from .deployment import deploy_and_report

FLAGS = {
    "env": "environment whose cluster gets the release (default test)",
    "repo": "repository URL or local path (default: REPO in the env file, else this project)",
    "ref": "branch, tag or commit to deliver (default HEAD)",
    "version": "version to tag the image with (default: the git tag, else the short commit id)",
    "service": "Swarm service to update (default APP_SERVICE)",
    "image": "image name in the registry (default APP_IMAGE)",
    "compose_file": "compose file relative to the repository root (default COMPOSE_FILE)",
    "cd_node": "node that runs tests and builds (default CD_NODE)",
    "dry_run": "print every docker and compose command in order; change nothing",
    "deploy": "continuous deployment: after a successful delivery, `inv deploy` it to --to-env",
    "to_env": "environment `--deploy` deploys to (default prod)",
    "json": JSON_HELP + "; with --deploy, the deploy report on a second line",
}


def _settings(c, env, service=None, image=None, compose_file=None, cd_node=None):
    return settings(c, env, app_service=service, app_image=image, compose_file=compose_file,
                    cd_node=cd_node)


def _reported(d, title: str, progress, run, json: bool = False) -> None:
    """`run(progress)`, then `_finish`: also when a signal stopped it (then the interruption
    goes on to `user_errors`, which exits 128 + the signal)."""
    from ..runner import RunInterrupted
    try:
        with progress:
            results = run(progress)
    except RunInterrupted as exc:
        _finish(d, exc.results, title, json)
        raise
    _finish(d, results, title, json)


def _finish(d, results, title: str, json: bool = False) -> None:
    """Print the results (`json`: the report, nothing else on stdout) and the state left
    behind, write the reports, exit as documented (an interrupted run: the caller exits)."""
    from .. import delivery, report
    s = d.settings
    state = delivery.state_after(d, results)
    meta = {"env": s.env, "service": s.services.app_service, "version": d.version, "ref": d.ref,
            "repo": d.repo, "digest": d.digest, "state": state,
            "dry_run": d.dry_run, "commands": d.commands}
    if json:
        print_json(report.report_doc(title, results, meta, secrets=s.secrets))
    else:
        report.print_results(title, results, secrets=s.secrets)
    out(state, json)
    paths = report.write_reports(s.delivery.reports_dir, title, results, meta, secrets=s.secrets)
    out("reports: " + ", ".join(map(str, paths)), json)
    failed = next((x for x in results if x.failed), None)
    if failed is not None and not failed.interrupted:
        raise Exit(code=step_failed(delivery.STEPS.index(failed.name)))


@task(help=FLAGS)
@user_errors
def deliver(c, env="test", repo=None, ref="HEAD", version=None, service=None, image=None,
            compose_file=None, cd_node=None, dry_run=False, deploy=False, to_env="prod",
            json=False):
    """Deliver: checkout, unit, build, staging, publish, prod-like, prod tests (--deploy: on)."""
    from .. import delivery, deployment, report
    s = _settings(c, env, service, image, compose_file, cd_node)
    progress = report.Progress("deliver")
    d = delivery.Delivery(s, repo or s.delivery.repo, ref, version, dry_run=dry_run, log=progress.log,
                          on_line=lambda line: progress.update(line[-100:]), defer_down=True)
    delivery.check_input(d)
    _reported(d, "deliver", progress, lambda p: delivery.deliver(d, p), json)
    if deploy and not dry_run:
        deploy_and_report(deployment.Deployment(settings(c, to_env), s, d.version), "deploy",
                          json)


def _one_step(name: str, d) -> None:
    from .. import delivery, report
    progress = report.Progress(name)
    d.log = progress.log
    d.on_line = lambda line: progress.update(line[-100:])
    _reported(d, name, progress, lambda p: delivery.step(d, name, p))


def _step_task(name: str, doc: str):
    def step(c, env="test", service=None, image=None, compose_file=None, cd_node=None,
             dry_run=False):
        from .. import delivery
        s = _settings(c, env, service, image, compose_file, cd_node)
        _one_step(name, delivery.load_state(s, dry_run=dry_run))
    step.__doc__ = doc
    step.__name__ = name
    flags = ("env", "service", "image", "compose_file", "cd_node", "dry_run")
    return task(name=name, help={k: FLAGS[k] for k in flags})(user_errors(step))


@task(help={k: FLAGS[k] for k in ("env", "repo", "ref", "version", "service", "image",
                                  "compose_file", "cd_node", "dry_run")})
@user_errors
def checkout(c, env="test", repo=None, ref="HEAD", version=None, service=None, image=None,
             compose_file=None, cd_node=None, dry_run=False):
    """Step 1: check the repository out into the workspace (the later steps use it)."""
    from .. import delivery
    s = _settings(c, env, service, image, compose_file, cd_node)
    d = delivery.Delivery(s, repo or s.delivery.repo, ref, version, dry_run=dry_run)
    delivery.check_input(d)
    _one_step("checkout", d)


unit = _step_task("unit", "Step 2: unit tests (compose run --rm unit) on the CD node.")
build = _step_task("build", "Step 3: build the image (compose build app) on the CD node.")
staging = _step_task("staging", "Step 4: staging tests against staging-dep; always torn down.")
publish = _step_task("publish", "Step 5: push the versioned image to the cluster's registry.")
prodlike = _step_task("prodlike", "Step 6: update the service on the prod-like nodes and wait.")
prodtest = _step_task("prodtest", "Step 7: production tests against the cluster's proxy.")

ns = Collection("delivery", deliver, checkout, unit, build, staging, publish, prodlike, prodtest)
ns.configure(CONFIG)
