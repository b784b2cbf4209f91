"""Delivery benchmark: `inv deliver` against the book's raw commands as a bash script, the same
source delivered twice on one lab. Run from the repository root:

    python3 bench/deliver.py [PAIRS]   # PAIRS (default 1): tool/script pairs, order alternating

Creates a throwaway lab cdtbench<rand> (provision, services and a warm-up delivery, untimed) and
removes it afterwards, also on failure or Ctrl-C. Figures go to bench/results/deliver.json.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402

from cdtasks import config, engine, registry  # noqa: E402

RATIO_TARGET = 1.0
WARMUP = "1.0-warm"  # then 1.1 (tool), 1.2 (script), 1.3 (script), 1.4 (tool) ...
RESULTS = ROOT / "bench" / "results" / "deliver.json"
MARK = "@@step "  # lines the script prints (to stderr) when a step starts: "@@step NAME EPOCH"

# The book's delivery, command after command, with the CD node's env as `docker-machine env`
# gave it. `docker service update` waits for convergence itself (--detach=false) where the
# book slept. HOST_IP: the address of a node running a proxy task (the book's `docker-machine ip`).
# The lab runs the sample as the stack go-demo (demo/stack.yml): the book's go-demo and proxy
# services are go-demo_main and go-demo_proxy there.
# The registry wants the tool's user: the script logs in (into a DOCKER_CONFIG of its own) and
# updates the service --with-registry-auth, as the book's commands would against such a registry.
SCRIPT = r"""
set -euo pipefail
step() { echo "@@step $1 $(date +%s.%N)" >&2; }
step checkout
git clone --quiet "$SRC" "$DEST"
step env
eval "$(cd "$ROOT" && inv env swarm-test-1)"
docker login --username "$REGISTRY_USER" --password-stdin localhost:5000 <"$REGISTRY_PASSWORD" >/dev/null
cd "$DEST"
export IMAGE=localhost:5000/go-demo VERSION BASE_IMAGE=cdtasks/python:3.11
dc() { docker compose -f demo/docker-compose-test-local.yml -p "$PROJ" "$@"; }
step unit;     dc run --rm unit
step build;    dc build app
step staging;  dc up -d staging-dep; dc run --rm staging; dc down
step publish;  docker push "$IMAGE:$VERSION"
step prodlike; docker service update --detach=false --with-registry-auth --image "$IMAGE:$VERSION" go-demo_main
step prodtest
NODE=$(docker service ps go-demo_proxy -f desired-state=running --format '{{.Node}}' | awk 'NR==1')
HOST_IP=$(docker node inspect -f '{{.Status.Addr}}' "$NODE")
export HOST_IP; dc run --rm production
step end
"""


def tool(environ: dict[str, str], version: str) -> tuple[float, dict[str, float]]:
    """`inv deliver`, timed as a whole, and its steps from its JSON report."""
    seconds = benchlib.inv(["deliver", "--version", version], environ)
    doc = json.loads((Path(environ["CDTASKS_REPORTS_DIR"]) / "deliver.json").read_text())
    return seconds, {s["name"]: round(s["seconds"], 1) for s in doc["steps"]}


def script(environ: dict[str, str], version: str) -> tuple[float, dict[str, float]]:
    """The script above, timed as a whole and step by step (from its markers)."""
    settings = config.load("test", environ=environ, project_dir=ROOT)
    dest = settings.delivery.workspace_dir / f"go-demo-book-{secrets.token_hex(3)}"
    docker_config = Path(tempfile.mkdtemp(prefix="cdtbench-docker-"))  # 0700: the login lands here
    (docker_config / "cli-plugins").symlink_to(
        Path(environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "cli-plugins"
    )
    env = {
        **environ,
        "ROOT": str(ROOT),
        "SRC": str(ROOT),
        "DEST": str(dest),
        "VERSION": version,
        "PROJ": f"go-demo-{version.replace('.', '-')}-book",
        "DOCKER_CONFIG": str(docker_config),
        "REGISTRY_USER": registry.USER,
        "REGISTRY_PASSWORD": str(registry.auth_dir(settings) / "password"),
    }
    marks: list[tuple[str, float]] = []
    t0 = time.monotonic()
    try:
        with subprocess.Popen(
            ["bash", "-c", SCRIPT], env=env, stderr=subprocess.PIPE, text=True, bufsize=1
        ) as proc:
            for line in proc.stderr:  # shown live, markers kept
                if line.startswith(MARK):
                    name, at = line[len(MARK) :].split()
                    marks.append((name, float(at)))
                    benchlib.say(f"script: {name}")
                else:
                    sys.stderr.write(line)
        seconds = time.monotonic() - t0
        if proc.returncode:
            raise RuntimeError(f"the book's script failed (exit {proc.returncode})")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(docker_config, ignore_errors=True)
    steps = {a: round(tb - ta, 1) for (a, ta), (_, tb) in pairwise(marks)}
    return seconds, steps


def mean(runs: list[dict], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


def main(pairs: int) -> None:
    host = engine.host_client()
    lab = f"cdtbench{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="cdtbench-"))
    environ = benchlib.lab_environ(lab, tmp)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    # The library's commit when the run starts (others may commit while it runs: note it).
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    runs: list[dict] = []
    try:
        benchlib.say(f"setup (untimed): provision, services, lab {lab}")
        benchlib.inv(["provision"], environ)
        benchlib.inv(["services"], environ)
        # A warm-up delivery of the same source: the timed runs then all find the same build
        # cache and the same layers in the registry and on the nodes, whichever runs first.
        benchlib.say(f"setup (untimed): warm-up delivery {WARMUP}")
        benchlib.inv(["deliver", "--version", WARMUP], environ)
        # Pairs alternate their order (tool first, then script first...): a machine whose load
        # changes during the run does not favour one side.
        kinds = [k for i in range(pairs) for k in (("tool", "script"), ("script", "tool"))[i % 2]]
        for n, kind in enumerate(kinds, start=1):
            version = f"1.{n}"
            benchlib.say(
                f"{kind}: version {version}"
                + (" (inv deliver)" if kind == "tool" else " (the book's commands)")
            )
            seconds, steps = (tool if kind == "tool" else script)(environ, version)
            runs.append(
                {
                    "kind": kind,
                    "version": version,
                    "seconds": round(seconds, 1),
                    "steps_s": steps,
                    "load1": round(os.getloadavg()[0], 1),
                }
            )
    finally:
        benchlib.clean_up(host, lab, environ, tmp)
    load_after = os.getloadavg()

    by = {k: [r for r in runs if r["kind"] == k] for k in ("tool", "script")}
    t, b = mean(by["tool"], "seconds"), mean(by["script"], "seconds")
    steps = {
        k: {
            n: round(sum(r["steps_s"].get(n, 0) for r in rs) / len(rs), 1) for n in rs[0]["steps_s"]
        }
        for k, rs in by.items()
    }
    names = list(dict.fromkeys([*steps["tool"], *steps["script"]]))
    cell = lambda d, n: f"{d[n]:6.1f} s" if n in d else "     - "  # noqa: E731
    rows = "\n".join(
        f"    {n:<16} {cell(steps['tool'], n)}   {cell(steps['script'], n)}" for n in names
    )
    each = ", ".join(f"{r['kind']} {r['version']} {r['seconds']} s" for r in runs)
    print(
        f"\ndeliver benchmark (commit {commit}; same source; {each})\n"
        f"  tool (inv deliver)   {t:6.1f} s\n"
        f"  book script          {b:6.1f} s\n"
        f"  ratio                {t / b:6.2f}  (target <= {RATIO_TARGET})\n"
        f"  steps (mean)         tool      script\n{rows}\n"
        f"  load average         {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({len(os.sched_getaffinity(0))} cpus)"
    )
    benchlib.write_results(
        RESULTS,
        host,
        {
            "commit": commit,
            "loadavg_before": [round(x, 1) for x in load_before],
            "loadavg_after": [round(x, 1) for x in load_after],
            "tool_s": round(t, 1),
            "script_s": round(b, 1),
            "ratio": round(t / b, 2),
            "tool_steps_s": steps["tool"],
            "script_steps_s": steps["script"],
            "runs": runs,
            "targets": {"ratio": RATIO_TARGET},
        },
    )


if __name__ == "__main__":
    try:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    except KeyboardInterrupt:
        sys.exit(130)
