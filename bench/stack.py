"""Stack benchmark: `inv services` creating a stack from nothing against `docker stack deploy
--detach=false` of the same file on the same cluster, a second `inv services` (nothing to
change) and `inv plan`. Run from the repository root:

    python3 bench/stack.py [sample|team]   # default: the book's sample, demo/stack.yml

`team` is the team's stack (tests/apps/team-stack: a job, configs, a secret, a volume, two
built images). Creates a throwaway lab cdtbench<rand> with the test cluster only (provision,
untimed) and removes it afterwards, also on failure or Ctrl-C. The first `inv services` (a)
also builds and pushes the stack's images that the registry lacks; (c) finds them there.
Figures go to bench/results/stack.json (team: stack-team.json).
"""

from __future__ import annotations

import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402

from cdtasks import config, engine, registry  # noqa: E402
from cdtasks.cluster import Cluster, env_lines  # noqa: E402

# which stack: its directory (the stack file and what it names), env directory, STACK_NAME
STACKS = {
    "sample": (ROOT / "demo", "env", "go-demo", ROOT / "bench" / "results" / "stack.json"),
    "team": (
        benchlib.TEAM,
        "tests/apps/team-stack/env",
        "team",
        ROOT / "bench" / "results" / "stack-team.json",
    ),
}
WHICH = sys.argv[1] if len(sys.argv) > 1 else "sample"
if WHICH not in STACKS:
    sys.exit(f"usage: python3 bench/stack.py [{'|'.join(STACKS)}]")
DIR, ENV_DIR, NAME, RESULTS = STACKS[WHICH]
SERVICES = ["services", "--env", "test"]  # the cluster the benchmark made
DEPLOY_CAP = 300  # seconds: docker stack deploy may hang on jobs (docker/cli#5299)
GOAL_RATIO, GOAL_PLAN = 1.0, 2.0


def adapted_copy(tmp: Path) -> Path:
    """The stack's directory with its stack file adapted as `inv services` adapts it on this
    kernel (no IPVS: dnsrr endpoints, host-mode ports), for the CLI, which does not adapt."""
    copy = tmp / DIR.name
    shutil.copytree(DIR, copy)
    doc = yaml.safe_load((copy / "stack.yml").read_text())
    for svc in doc["services"].values():
        svc.setdefault("deploy", {})["endpoint_mode"] = "dnsrr"
        for port in svc.get("ports") or []:
            port["mode"] = "host"
    (copy / "stack.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return copy / "stack.yml"


def docker_env(s, environ: dict[str, str]) -> dict[str, str]:
    """The docker CLI pointed at the first manager (what `eval $(inv env NODE)` sets), with the
    stack's variables as `inv services` gives them (REGISTRY and PROXY_PORT among them)."""
    out = dict(environ)
    for line in env_lines(s, s.cluster.leader):
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value.strip("'")
    defaults = {"REGISTRY": registry.address(s), "PROXY_PORT": str(s.services.proxy_port)}
    return {**out, **defaults, **dict(s.stack.stack_variables)}


def remove_stack(env: dict[str, str], manager) -> float:
    """`docker stack rm` and wait until its services, networks and tasks' containers are gone."""
    t0 = time.monotonic()
    subprocess.run(["docker", "stack", "rm", NAME], env=env, check=True, capture_output=True)
    label = {"label": f"com.docker.stack.namespace={NAME}"}
    while manager.api.services(filters=label) or manager.api.networks(filters=label):
        if time.monotonic() - t0 > 120:
            raise RuntimeError("the stack was not removed within 120 s")
        time.sleep(1)
    time.sleep(5)  # tasks' containers and their network endpoints go after the services
    return time.monotonic() - t0


def cpu_seconds() -> float:
    """CPU time (user + system) of this process's finished children: what `inv` itself cost,
    apart from the wait for cores that other labs on a shared machine hold."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> None:
    host = engine.host_client()
    lab = f"cdtbench{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="cdtbench-"))
    environ = {**benchlib.lab_environ(lab, tmp), "CDTASKS_ENV_DIR": ENV_DIR}
    figures: dict = {}
    try:
        benchlib.say(f"lab {lab}: provision the test cluster")
        benchlib.inv(["provision", "--env", "test"], environ)
        s = config.load("test", environ=environ, project_dir=ROOT)
        cluster = Cluster.of(s).discover()
        manager = cluster.client(cluster.gateway().manager_name())  # the SDK, to watch removal
        cli = docker_env(s, environ)

        benchlib.say(
            f"(a) inv services from nothing, the {WHICH} stack (builds and pushes its images, "
            "loads the offline images into the nodes)"
        )
        figures["stack"] = WHICH
        figures["inv_services_first_s"] = round(benchlib.inv(SERVICES, environ), 1)
        figures["remove_s"] = round(remove_stack(cli, manager), 1)

        benchlib.say("(b) docker stack deploy --detach=false of the same file (adapted for dnsrr)")
        figures["load_1min_b"] = load()
        stack_file = adapted_copy(tmp)
        t0 = time.monotonic()
        try:
            subprocess.run(
                ["docker", "stack", "deploy", "--detach=false", "-c", str(stack_file), NAME],
                env=cli,
                check=True,
                timeout=DEPLOY_CAP,
            )
            figures["docker_stack_deploy_s"] = round(time.monotonic() - t0, 1)
        except subprocess.TimeoutExpired:
            figures["docker_stack_deploy_s"] = None
            figures["docker_stack_deploy_note"] = f"did not return within {DEPLOY_CAP} s"
        remove_stack(cli, manager)

        benchlib.say("(c) inv services from nothing again (images already on the nodes)")
        figures["load_1min_c"] = load()
        cpu = cpu_seconds()
        tool = benchlib.inv(SERVICES, environ)
        figures["inv_services_s"] = round(tool, 1)
        figures["inv_services_cpu_s"] = round(cpu_seconds() - cpu, 2)
        benchlib.say("(d) inv services again: nothing to change")
        figures["inv_services_noop_s"] = round(benchlib.inv(SERVICES, environ), 1)
        benchlib.say("(e) inv plan, 3 times")
        figures["load_1min_e"] = load()
        plans, cpus = [], []
        for _ in range(3):
            cpu = cpu_seconds()
            plans.append(benchlib.inv(["plan", "--env", "test"], environ))
            cpus.append(cpu_seconds() - cpu)
        figures["inv_plan_median_s"] = round(statistics.median(plans), 2)
        figures["inv_plan_cpu_median_s"] = round(statistics.median(cpus), 2)

        cli_s = figures["docker_stack_deploy_s"]
        figures["ratio_inv_services_vs_stack_deploy"] = round(tool / cli_s, 2) if cli_s else None
        figures["goals"] = {"ratio": GOAL_RATIO, "inv_plan_s": GOAL_PLAN}
        print()
        for key, value in figures.items():
            print(f"  {key:40} {value}")
        benchlib.write_results(RESULTS, host, figures)
    finally:
        benchlib.clean_up(host, lab, environ, tmp)


if __name__ == "__main__":
    main()
