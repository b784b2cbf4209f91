"""watch, report: follow a branch and deliver each new commit; the release page."""

from __future__ import annotations

import sys
from contextlib import redirect_stdout
from pathlib import Path

from invoke import Collection, Exit

from .common import (
    BAD_INPUT,
    CONFIG,
    UNREACHABLE,
    exit_code,
    out,
    print_json,
    settings,
    user_errors,
)
from .flags import task

NOTES = {
    "env": "the cluster that delivers and keeps the watch records (default test)",
    "prod_env": "with --deploy; also whose deployments the page shows (default prod)",
    "repo": "the one followed",
    "json": "with --once: the run's result",
}
POLL = 60.0


def run_delivery(c, env: str, repo: str, commit: str, deploy: bool, prod_env: str):
    """Runs exactly what `inv deliver --repo REPO --ref COMMIT [--deploy --prod-env E]` runs (the
    same deliver-then-deploy, without the task's error wrapper, so that an interruption reaches
    the watcher as itself) and returns its exit code, one line, and the JSON reports it wrote,
    as a `watch.RunResult`."""
    import time

    from .. import watch
    from ..redaction import redact
    from .delivery import deliver_and_deploy

    s, started = settings(c, env), time.time()
    text = ""
    try:
        code = deliver_and_deploy(
            c, env=env, repo=repo, ref=commit, deploy=deploy, prod_env=prod_env
        )
    except Exception as exc:  # a library error: its documented code, as `inv deliver` exits
        mapped = exit_code(exc)
        if mapped is None:
            raise
        code, text = mapped, f"error: {exc}"
    places = [(s.delivery.reports_dir, "deliver")]
    if deploy:
        places.append((settings(c, prod_env).delivery.reports_dir, "deploy"))
    reports = watch.read_reports(places, started)
    text = "; ".join(t for t in (watch.summary(reports), text) if t)
    return watch.RunResult(code, redact(text, s.secrets), reports)


def _after_run(c, env: str, prod_env: str, log):
    """What follows each run: keep it for the page, tell the team, rewrite the page."""
    from .. import notify, page, watch

    s, prod = settings(c, env), settings(c, prod_env)

    def keep(payload: dict) -> None:
        watch.save_run(s.delivery.reports_dir / watch.RUNS_DIR, payload)

    def tell(payload: dict) -> None:
        notify.send(payload, s.watch.notify_url, s.watch.notify_command, log)

    def publish(payload: dict) -> None:
        page.write(s.delivery.reports_dir / page.FILE_NAME, page.gather(s, prod))

    return [keep, tell, publish]


def _pause(interval: str | None, listen: bool) -> float:
    """Seconds between polls: the flag, else 60; with a webhook 0 (no polling) may be given."""
    if interval is None:
        return 0.0 if listen else POLL
    try:
        pause = float(interval)
    except ValueError:
        pause = -1.0
    if pause < 0 or (pause == 0 and not listen) or pause != pause:
        raise ValueError(
            f"--interval {interval}: give a number of seconds above 0 (0 only with --listen)"
        )
    return pause


@task(name="watch", notes=NOTES)
@user_errors
def watch_(
    c,
    env="test",
    repo=None,
    branch=None,
    interval=None,
    deploy=False,
    prod_env="prod",
    once=False,
    listen=None,
    json=False,
):
    """Follow a branch: deliver (--deploy: and deploy) each new commit once; --once for cron."""
    from .. import release, report, watch  # imported here: `inv --list` stays light
    from ..cluster import Cluster
    from ..interrupt import exit_code as interrupted_code
    from ..interrupt import signals_as_interrupt
    from ..webhook import ListenError, Webhook

    s = settings(c, env)
    repo = repo or s.delivery.repo
    log = report.make_logger("watch")
    try:
        branch = watch.check_branch(branch or s.watch.watch_branch or watch.default_branch(repo))
        pause = _pause(interval, bool(listen))
        if json and not once:
            raise ValueError("--json goes with --once (a watcher that keeps running logs lines)")
    except (ValueError, watch.SourceError) as exc:
        raise Exit(f"error: {exc}", code=BAD_INPUT) from None
    w = watch.Watcher(
        repo,
        branch,
        watch.RecordStore(lambda: Cluster.of(s).discover().gateway(), release.key(s)),
        lambda commit: run_delivery(c, env, repo, commit, deploy, prod_env),
        interval=pause,
        after=_after_run(c, env, prod_env, log),
        log=log,
    )
    try:
        if once:
            # Under --json stdout holds only the result: the run's own output goes to stderr.
            with signals_as_interrupt(log), redirect_stdout(sys.stderr if json else sys.stdout):
                result = w.check()
            if json:
                print_json(
                    {
                        "repo": w.name,
                        "branch": branch,
                        "new": result is not None,
                        "code": result.code if result else 0,
                        "result": result.text if result else "no new commit",
                        "reports": list(result.reports) if result else [],
                    }
                )
            else:
                out(f"{w.name} {branch}: " + (result.text if result else "no new commit"))
            if result and not result.ok:
                raise Exit(code=result.code)
            return
        hook = Webhook(listen, s.watch.webhook_secret, branch, w.wake.set, log) if listen else None
        log(
            f"following {branch} of {w.name}"
            + (f", every {pause:g}s" if pause else "")
            + (f", pushes on {listen}" if hook else "")
            + (f", deploying to {prod_env}" if deploy else "")
        )
        try:
            with signals_as_interrupt(log):
                if hook:
                    hook.start()
                w.serve()
        finally:
            if hook:
                hook.stop()
    except (ListenError, watch.SourceError) as exc:
        raise Exit(f"error: {exc}", code=BAD_INPUT) from None
    except watch.StoreError as exc:
        raise Exit(f"error: {exc}", code=UNREACHABLE) from None
    except KeyboardInterrupt as exc:
        raise Exit("interrupted", code=interrupted_code(exc)) from None


@task(
    name="report",
    notes={
        "env": "the cluster of the deliveries, prod-like and the watch (default test)",
        "prod_env": "whose deployments the page shows (default prod)",
        "output": "the page (default REPORTS_DIR/releases.html); its directory must exist",
    },
)
@user_errors
def report_(c, env="test", prod_env="prod", output=None):
    """Write the release page: a self-contained HTML file of deliveries, deployments and runs."""
    from .. import page

    if output and not Path(output).resolve().parent.is_dir():
        raise Exit(
            f"error: --output {output}: directory {Path(output).resolve().parent} does not exist",
            code=BAD_INPUT,
        )
    if output and Path(output).is_dir():
        raise Exit(f"error: --output {output} is a directory: name the file", code=BAD_INPUT)
    s = settings(c, env)
    snap = page.gather(s, settings(c, prod_env))
    path = page.write(Path(output) if output else s.delivery.reports_dir / page.FILE_NAME, snap)
    for view in snap["clusters"]:
        if view["error"]:
            out(f"{view['label']} did not answer: {view['error']}")
    out(f"release page: {path}")


ns = Collection("watch", watch_, report_)
ns.configure(CONFIG)
