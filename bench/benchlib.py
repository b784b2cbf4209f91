"""What the benchmarks share: removing a throwaway lab, and writing results with their context."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from cdtasks.providers.lab import remove_labelled

ROOT = Path(__file__).resolve().parent.parent
NOTE = "shared machine: other labs may have been running, figures are noisy"


def write_results(path: Path, host, figures: dict) -> None:
    """The figures plus when, where (cpus, engine) and a reminder that the machine is shared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "nproc": len(os.sched_getaffinity(0)),
                "docker": host.version()["Version"],
                **figures,
                "note": NOTE,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"  (written to {path.relative_to(path.parents[2])})")


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def lab_environ(lab: str, tmp: Path) -> dict[str, str]:
    # Other labs' CDTASKS_* must not leak in; reports go to the temp dir, not the repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDTASKS_")}
    return {
        **env,
        "CDTASKS_LAB_NAME": lab,
        "CDTASKS_STATE_DIR": str(tmp / "state"),
        "CDTASKS_REPORTS_DIR": str(tmp / "reports"),
    }


def inv(args: list[str], environ: dict[str, str], expect: int = 0) -> float:
    """Run `inv ...` (its log shows live); returns the wall time."""
    t0 = time.monotonic()
    proc = subprocess.run(["inv", *args], cwd=ROOT, env=environ)
    if proc.returncode != expect:
        raise RuntimeError(f"inv {' '.join(args)} exited {proc.returncode}, expected {expect}")
    return time.monotonic() - t0


def clean_up(host, lab: str, environ: dict[str, str], tmp: Path) -> None:
    """Remove a benchmark's lab and temp dir; a second Ctrl-C must not cut this short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    say(f"cleaning up lab {lab}")
    subprocess.run(
        ["inv", "destroy", "--purge"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    remove_labelled(host, lab)  # whatever `inv destroy` left
    shutil.rmtree(tmp, ignore_errors=True)


GIT_ID = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@cdtasks.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@cdtasks.invalid",
}


def git(repo: Path, *args: str) -> None:
    """A git command in a benchmark's own repository, under the bench's identity."""
    subprocess.run(["git", *args], cwd=repo, check=True, env={**os.environ, **GIT_ID})


TEAM = ROOT / "tests" / "apps" / "team-stack"


def commit() -> str:
    """The library's commit when a run starts (others may commit while it runs)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def loads(before: tuple[float, ...], after: tuple[float, ...]) -> dict:
    """os.getloadavg() before and after a run, as the results keep them."""
    return {
        "loadavg_before": [round(x, 1) for x in before],
        "loadavg_after": [round(x, 1) for x in after],
    }


def first_version(s, environ: dict[str, str]) -> str:
    """The version `inv services` starts a cluster of settings `s` on: the tag of the sample
    stack's `main` image in its stack file (demo/stack.yml: 1.0)."""
    from cdtasks import stack

    return stack.read_file(s, environ).service("main").image.rpartition(":")[2]


def app_service(s) -> str:
    """The Swarm service that runs the sample's image: the stack's `main` (go-demo_main)."""
    return f"{s.stack.stack_name}_main"


def load_text(before: tuple[float, ...], after: tuple[float, ...]) -> str:
    return f"{before[0]:.1f} before, {after[0]:.1f} after ({len(os.sched_getaffinity(0))} cpus)"
