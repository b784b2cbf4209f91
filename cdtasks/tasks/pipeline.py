"""deliver, and each of its steps as a task of its own for shell scripts to chain."""
from __future__ import annotations

import json
from pathlib import Path

from invoke import Collection, Exit, task

from .. import pipeline, report
from ..pipeline import STEPS, Release
from ..release import Deployment
from .common import out, settings, user_errors
from .release import run_deployment

STEP_EXIT_BASE = 10  # a failed step exits 10 + its position: checkout 11 ... prodtest 17

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
}


def _settings(env, service=None, image=None, compose_file=None, cd_node=None):
    return settings(env, app_service=service, app_image=image, compose_file=compose_file,
                    cd_node=cd_node)


def _secrets(s) -> list[str]:
    """Values of env-file keys that look secret never reach output or reports."""
    return [v for k, v in s.raw.items() if any(w in k for w in ("PASSWORD", "SECRET", "TOKEN", "KEY"))]


def _finish(r: Release, results, title: str) -> None:
    s = r.settings
    state = pipeline.state_after(r, results)
    report.print_results(title, results, secrets=_secrets(s))
    out(state)
    meta = {"env": s.env, "service": s.app_service, "version": r.version, "ref": r.ref,
            "repo": r.repo or "(this project)", "digest": r.digest, "state": state,
            "dry_run": r.dry_run, "commands": r.commands}
    paths = report.write_reports(s.reports_dir, title, results, meta, secrets=_secrets(s))
    out("reports: " + ", ".join(map(str, paths)))
    failed = next((i for i, x in enumerate(results) if x.failed), None)
    if failed is not None:
        raise Exit(code=STEP_EXIT_BASE + 1 + STEPS.index(results[failed].name))


@task(help=FLAGS)
@user_errors
def deliver(c, env="test", repo=None, ref="HEAD", version=None, service=None, image=None,
            compose_file=None, cd_node=None, dry_run=False, deploy=False, to_env="prod"):
    """Deliver: checkout, unit, build, staging, publish, prod-like, prod tests (--deploy: on)."""
    s = _settings(env, service, image, compose_file, cd_node)
    with report.Progress("deliver") as progress:
        r = Release(s, repo or s.repo, ref, version, dry_run=dry_run, log=progress.log,
                    on_line=lambda line: progress.update(line[-100:]), defer_down=True)
        try:
            results = pipeline.run_steps(r, STEPS, progress)
        finally:
            pipeline.cleanup(r)
    _finish(r, results, "deliver")
    if deploy and not dry_run:
        run_deployment(Deployment(settings(to_env), s, r.version), "deploy")


# -- one step at a time: the checkout's state is kept in the workspace between tasks ---------
def _state_file(s) -> Path:
    return s.workspace_dir / f"{s.app_service}.release.json"


def _load(s, dry_run: bool) -> Release:
    f = _state_file(s)
    if not f.exists():
        raise Exit(f"error: no checkout of {s.app_service}: run `inv checkout` first", code=2)
    data = json.loads(f.read_text())
    r = Release(s, data["repo"], data["ref"], data["version"], dry_run=dry_run,
                log=report.make_logger(s.app_service), workdir=Path(data["workdir"]),
                digest=data.get("digest"), project=data["project"])
    if not r.workdir.exists():
        raise Exit(f"error: checkout {r.workdir} is gone: run `inv checkout` again", code=2)
    return r


def _save(r: Release) -> None:
    _state_file(r.settings).write_text(json.dumps({
        "repo": r.repo, "ref": r.ref, "version": r.version, "workdir": str(r.workdir),
        "digest": r.digest, "project": r.project}))


def _one_step(name: str, r: Release) -> None:
    with report.Progress(name) as progress:
        r.log = progress.log
        r.on_line = lambda line: progress.update(line[-100:])
        try:
            results = pipeline.run_steps(r, [name], progress)
        finally:
            pipeline.release_lock(r)  # a step run alone holds the lock only while it runs
    if not r.dry_run:
        _save(r)
    _finish(r, results, name)


def _step_task(name: str, doc: str):
    def step(c, env="test", service=None, image=None, compose_file=None, cd_node=None,
             dry_run=False):
        s = _settings(env, service, image, compose_file, cd_node)
        _one_step(name, _load(s, dry_run))
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
    s = _settings(env, service, image, compose_file, cd_node)
    _one_step("checkout", Release(s, repo or s.repo, ref, version, dry_run=dry_run))


unit = _step_task("unit", "Step 2: unit tests (compose run --rm unit) on the CD node.")
build = _step_task("build", "Step 3: build the image (compose build app) on the CD node.")
staging = _step_task("staging", "Step 4: staging tests against staging-dep; always torn down.")
publish = _step_task("publish", "Step 5: push the versioned image to the cluster's registry.")
prodlike = _step_task("prodlike", "Step 6: update the service on the prod-like nodes and wait.")
prodtest = _step_task("prodtest", "Step 7: production tests against the cluster's proxy.")

ns = Collection("pipeline", deliver, checkout, unit, build, staging, publish, prodlike, prodtest)