"""One flag vocabulary for every task: each concept has one long name, at most one short flag
that means the same in every task, and one meaning (its help); a task adds only what the flag
means for it (its default). Invoke's automatic short flags are off: they took the first free
letter per task, so one letter meant different flags in different tasks."""

from __future__ import annotations

import inspect
from typing import NamedTuple

from invoke import Task
from invoke import task as invoke_task


class Flag(NamedTuple):
    short: str | None
    meaning: str


JSON_MEANING = (
    "print one JSON document on stdout instead of tables (fields: README); logs on stderr"
)

VOCABULARY: dict[str, Flag] = {
    # Environments: the one a task acts on, and the other side of a deployment.
    "env": Flag("e", "environment the task acts on (a file in the env directory: test, prod)"),
    "prod_env": Flag(None, "environment deployments go to"),
    "test_env": Flag(None, "environment whose prod-like cluster verified the versions"),
    # What is delivered and deployed.
    "repo": Flag(
        None, "repository, URL or local path (default: REPO in the env file, else this project)"
    ),
    "ref": Flag("r", "branch, tag or commit of the repository (default HEAD)"),
    "branch": Flag(
        "b", "branch to follow (default: WATCH_BRANCH, else the repository's default branch)"
    ),
    "version": Flag("v", "version: the image's tag"),
    "service": Flag(
        "s", "a service of the stack: as the stack file (`main`) or Swarm (`go-demo_main`) names it"
    ),
    "image": Flag("i", "image name in the registry (default APP_IMAGE)"),
    "compose_file": Flag(
        "c", "compose file, relative to the repository root (default COMPOSE_FILE)"
    ),
    "cd_node": Flag(None, "node that runs the tests and builds (default CD_NODE)"),
    "node": Flag(None, "node name, e.g. swarm-test-1"),
    # How a task runs.
    "dry_run": Flag("n", "print every docker and compose command in order; change nothing"),
    "deploy": Flag("d", "continuous deployment: deploy each delivered version to --prod-env"),
    "force": Flag("f", "do what is refused without it"),
    "wait": Flag("w", "wait for another deployment's lock instead of refusing (up to 10 minutes)"),
    "no_rollback": Flag(
        None, "keep a failing version running (for debugging) instead of rolling back"
    ),
    "max_errors": Flag(
        None,
        "error budget of each rollout: the most errors (5xx and failed connections, as the "
        "proxy counts them) a release may cause (default: none, errors recorded only)",
    ),
    "job_timeout": Flag(
        None,
        "seconds a release's job (a stack's replicated-job on a released image, a migration) "
        "may run before the release stops (default JOB_TIMEOUT, 300)",
    ),
    "json": Flag("j", JSON_MEANING),
    # A canary before a deployment's rollout (README "Canary releases").
    "canary": Flag(
        None,
        "PERCENT[,PERCENT...]: first run the release as a canary service that gets these "
        "shares of the requests through the proxy, step by step, judged at each step",
    ),
    "canary_for": Flag(None, "seconds each canary step lasts (default 30)"),
    "canary_replicas": Flag(None, "tasks of the canary service (default 1)"),
    "max_error_rate": Flag(
        None, "percent of the canary's requests in a step that may fail: 5xx, failed connections"
    ),
    "max_latency": Flag(
        None, "ms: limit of the canary's response time in a step (HAProxy's rtime; 0: none)"
    ),
    "min_requests": Flag(None, "fewer canary requests than this in a step fail the canary"),
    "output": Flag("o", "file to write"),
    # One task's own.
    "cmd": Flag(None, "command to run instead of an interactive shell"),
    "purge": Flag(None, "also delete the registry data both clusters share"),
    "check": Flag(
        None, "only compare the env file (or its STACK_FILE) with what runs; exit 5 on drift"
    ),
    "update": Flag(None, "also update services whose spec differs (only what differs)"),
    "since": Flag(None, "only log lines newer than this: a duration (10m, 1h30m) back from now"),
    "tail": Flag(None, "only the last N log lines of each task"),
    "follow": Flag(None, "keep printing new log lines until interrupted"),
    "action": Flag(
        None, "status: who holds the lock, or 'free'; release: remove it (needs --force)"
    ),
    "interval": Flag(
        None, "seconds between two polls (default 60; with --listen 0: only on pushes)"
    ),
    "once": Flag(None, "check once: run the newest commit if it is new, exit with that run's code"),
    "listen": Flag(
        None,
        "ADDR:PORT to accept signed push notifications on (WEBHOOK_SECRET), e.g. 127.0.0.1:9000",
    ),
}


def seconds(duration: str) -> float:
    """A flag's duration (`10m`, `1h30m`, `45s`) in seconds; ValueError naming the form."""
    from ..stackfile import duration_ns

    try:
        return duration_ns(duration) / 1e9
    except ValueError:
        raise ValueError(f"--since {duration!r} is not a duration (e.g. 10m, 1h30m)") from None


class VocabularyTask(Task):
    """A task whose flags take their short names from VOCABULARY, never Invoke's guess."""

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        short = VOCABULARY[name].short
        if short:
            opts["names"].append(short)
        return opts


def help_text(name: str, note: str | None = None) -> str:
    """A flag's help: its meaning, then what it means in one task (`note`: its default...)."""
    meaning = VOCABULARY[name].meaning
    return f"{meaning}; {note}" if note else meaning


def task(name: str | None = None, notes: dict[str, str] | None = None, **kw):
    """Invoke's @task over this vocabulary: every parameter's long name, short flag and help
    come from VOCABULARY (an unknown parameter is refused at import); `notes` says what a flag
    means in this task (its default, ...)."""
    notes = notes or {}

    def decorate(body):
        params = list(inspect.signature(body).parameters)[1:]  # after the Context
        unknown = [p for p in params + list(notes) if p not in VOCABULARY]
        if unknown:
            raise TypeError(f"{body.__name__}: flags not in the vocabulary: {unknown}")
        helps = {p: help_text(p, notes.get(p)) for p in params}
        return invoke_task(
            name=name, help=helps, auto_shortflags=False, klass=VocabularyTask, **kw
        )(body)

    return decorate
