"""Release benchmark: `inv deliver --deploy` of the team's repository (tests/apps/team-stack)
releasing its two images (team-api and team-worker) against the same repository releasing one
(team-api; the worker stays on the image the stack file pins), as a ratio two/one (goal <= 1.2:
builds, pushes and rollouts side by side, not one after the other). Run from the repository root:

    python3 bench/release.py [ROUNDS]     # default 2 rounds of each; ~20 min on 2 cores

Creates a throwaway lab cdtbench<rand> with both clusters running the team's stack (provision,
`inv services`, which builds the team's 1.0 images, one warm-up release of both images:
untimed) and removes it afterwards, also on failure or Ctrl-C. The rounds alternate (two, one, one, two, ...) so that
a load changing during the run hits both; each round is a new commit and a new version.
Figures go to bench/results/release.json.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402

from cdtasks import engine  # noqa: E402

GOAL = 1.2
RESULTS = ROOT / "bench" / "results" / "release.json"
COMPOSE = "docker-compose-ci.yml"
# The team's clusters: its test.env (tests/apps/team-stack/env) and a production cluster of the
# same stack; both over the project's base.env and the book's node layout (env/).
STACK = {
    "STACK_FILE": str(benchlib.TEAM / "stack.yml"),
    "STACK_NAME": "team",
    "APP_IMAGE": "team-api",
    "COMPOSE_FILE": COMPOSE,
    "PROXY_PORT": "8070",
}
PLACEMENT = {"test": "prod-like", "prod": "prod"}


def env_dir(tmp: Path, repo: Path) -> Path:
    """base.env, test.env and prod.env: the project's, with the team's stack on both clusters,
    whose 1.0 images `inv services` builds from `repo` (the team's repository)."""
    out = tmp / "env"
    out.mkdir()
    shutil.copy(ROOT / "env" / "base.env", out / "base.env")
    for env, label in PLACEMENT.items():
        keys = {
            **STACK,
            "REPO": str(repo),
            "STACK_VARIABLES": f"REGISTRY=localhost:5000 PLACEMENT='node.labels.env == {label}'",
        }
        own = (ROOT / "env" / f"{env}.env").read_text().rstrip("\n") + "\n"
        (out / f"{env}.env").write_text(own + "".join(f"{k}={v}\n" for k, v in keys.items()))
    return out


def repositories(tmp: Path) -> dict[str, Path]:
    """`two`: the team's repository as it is; `one`: the same whose delivery compose file builds
    only the api (no worker service: the stack keeps running the worker it pins)."""
    out = {kind: tmp / kind for kind in ("two", "one")}
    for kind, repo in out.items():
        shutil.copytree(
            benchlib.TEAM, repo, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "env")
        )
        if kind == "one":
            doc = yaml.safe_load((repo / COMPOSE).read_text())
            del doc["services"]["worker"]
            (repo / COMPOSE).write_text(yaml.safe_dump(doc, sort_keys=False))
        for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", kind]):
            benchlib.git(repo, *args)
    return out


def new_version(repo: Path, version: str) -> None:
    """A commit that changes the code both images copy (shared/), as a release would."""
    store = repo / "shared" / "store.py"
    store.write_text(store.read_text() + f"# release {version}\n")
    benchlib.git(repo, "commit", "-qam", f"release {version}")


def steps(reports: Path, suite: str) -> dict[str, float]:
    doc = json.loads((reports / f"{suite}.json").read_text())
    return {s["name"]: round(s["seconds"], 1) for s in doc["steps"]}


def release(kind: str, repo: Path, version: str, environ: dict[str, str]) -> dict:
    """One timed `inv deliver --deploy`: its wall time, load, and each step's seconds."""
    reports = Path(environ["CDTASKS_REPORTS_DIR"])
    shutil.rmtree(reports, ignore_errors=True)
    load = round(os.getloadavg()[0], 2)
    benchlib.say(f"{kind}: inv deliver --repo {repo.name} --version {version} --deploy")
    new_version(repo, version)
    wall = benchlib.inv(["deliver", "--repo", str(repo), "--version", version, "--deploy"], environ)
    return {
        "kind": kind,
        "version": version,
        "seconds": round(wall, 1),
        "load_1min": load,
        "deliver_steps_s": steps(reports, "deliver"),
        "deploy_steps_s": steps(reports, "deploy"),
    }


def order(rounds: int) -> list[str]:
    """two, one, one, two, two, one, ...: each kind first in every other pair."""
    pairs = [("two", "one") if i % 2 == 0 else ("one", "two") for i in range(rounds)]
    return [kind for pair in pairs for kind in pair]


def mean_steps(runs: list[dict], key: str) -> dict[str, float]:
    names = list(dict.fromkeys(n for r in runs for n in r[key]))
    return {n: round(statistics.mean(r[key].get(n, 0.0) for r in runs), 1) for n in names}


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    host = engine.host_client()
    lab = f"cdtbench{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="cdtbench-"))
    repos = repositories(tmp)
    environ = {
        **benchlib.lab_environ(lab, tmp),
        "CDTASKS_ENV_DIR": str(env_dir(tmp, repos["two"])),
    }
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    commit = benchlib.commit()
    runs: list[dict] = []
    try:
        benchlib.say(f"lab {lab} (untimed): provision, services (the team's images), a warm-up")
        benchlib.inv(["provision"], environ)
        benchlib.inv(["services"], environ)
        release("two", repos["two"], "1.0-warm", environ)
        for i, kind in enumerate(order(rounds)):
            runs.append(release(kind, repos[kind], f"1.{i + 1}", environ))
    finally:
        benchlib.clean_up(host, lab, environ, tmp)
    load_after = os.getloadavg()

    by = {k: [r for r in runs if r["kind"] == k] for k in ("two", "one")}
    means = {k: round(statistics.mean(r["seconds"] for r in v), 1) for k, v in by.items()}
    ratio = round(means["two"] / means["one"], 2)
    print(f"\nrelease benchmark (commit {commit}; {rounds} rounds of each)")
    for r in runs:
        print(
            f"  {r['kind']:3} {r['version']:4} {r['seconds']:6.1f} s  load {r['load_1min']:5.1f}"
            f"  deliver {r['deliver_steps_s']}  deploy {r['deploy_steps_s']}"
        )
    print(
        f"  mean: two images {means['two']:.1f} s, one image {means['one']:.1f} s, "
        f"ratio two/one {ratio:.2f} (goal <= {GOAL:g}: {'met' if ratio <= GOAL else 'missed'})\n"
        f"  load average {benchlib.load_text(load_before, load_after)}"
    )
    benchlib.write_results(
        RESULTS,
        host,
        {
            "commit": commit,
            **benchlib.loads(load_before, load_after),
            "two_images_s": means["two"],
            "one_image_s": means["one"],
            "ratio": ratio,
            "goal": GOAL,
            "two_steps_s": {
                "deliver": mean_steps(by["two"], "deliver_steps_s"),
                "deploy": mean_steps(by["two"], "deploy_steps_s"),
            },
            "one_steps_s": {
                "deliver": mean_steps(by["one"], "deliver_steps_s"),
                "deploy": mean_steps(by["one"], "deploy_steps_s"),
            },
            "runs": runs,
        },
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
