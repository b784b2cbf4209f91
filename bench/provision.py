"""Provision benchmark: `inv provision` (both clusters) against the book's commands replayed one
node at a time, plus a no-op re-provision. Run from the repository root:

    python3 bench/provision.py

Creates two throwaway labs (cdtbench<rand>a for the tool, cdtbench<rand>b for the replay) and
removes both afterwards, also on failure or Ctrl-C. Figures go to bench/results/provision.json.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdtasks import config, engine, images, registry, state  # noqa: E402
from cdtasks.providers import certs  # noqa: E402
from cdtasks.providers.lab import LabProvider, remove_labelled  # noqa: E402
import benchlib  # noqa: E402

ENVS = ("test", "prod")
RATIO_TARGET, NOOP_TARGET = 0.5, 3.0
REGISTRY_TIMEOUT = 120
POLL = 0.5  # the tool's own poll interval while waiting for services
RESULTS = ROOT / "bench" / "results" / "provision.json"


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def lab_environ(lab: str, state: Path) -> dict[str, str]:
    return {**os.environ, "CDTASKS_LAB_NAME": lab, "CDTASKS_STATE_DIR": str(state)}


def inv(args: list[str], environ: dict[str, str]) -> tuple[float, str]:
    """Run `inv ...`; its log (stderr) shows live, its table (stdout) is returned."""
    t0 = time.monotonic()
    proc = subprocess.run(["inv", *args], cwd=ROOT, env=environ, stdout=subprocess.PIPE, text=True)
    seconds = time.monotonic() - t0
    print(proc.stdout, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"inv {' '.join(args)} failed (exit {proc.returncode})")
    return seconds, proc.stdout


def run(*cmd: str, stdin=None) -> str:
    proc = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def replay(host, environ: dict[str, str]) -> float:
    """The book's provisioning, one step after another: machines, then per cluster swarm init,
    joins, labels, the registry service, and the wait until it runs everywhere."""
    settings = [config.load(e, environ=environ, project_dir=ROOT) for e in ENVS]
    # One provider per cluster, as the tool has: a node's labels carry its cluster's env.
    providers = [LabProvider(s, host) for s in settings]
    node_image = images.IMAGES["node"].ref
    t0 = time.monotonic()
    # The lab's shared pieces, made as the provider makes them before its first machine.
    lab = providers[0]
    lab._ensure_network()
    state.private_dir(lab.root)
    certs.ensure_ca(lab.root / "certs")
    certs.ssh_keypair(lab.ssh_key)
    for s in settings:
        state.private_dir(s.registry_dir)
        state.private_dir(s.workspace_dir)

    addresses, names = {}, {}
    for prov, s in zip(providers, settings):
        for node in s.nodes:
            # The provider's own container code path (same caps, security opts, unmasked /proc
            # and /sys, tmpfs, volumes, certs, ports), called for one node at a time.
            c = prov._create_container(node, node_image, prov._prepare_machine(node))
            endpoint = prov._endpoint(node, c)
            prov._wait_ready(endpoint, c)
            addresses[node], names[node] = endpoint.address, c.name
            save = subprocess.Popen(["docker", "save", s.registry_image], stdout=subprocess.PIPE)
            run("docker", "exec", "-i", c.name, "docker", "load", "-q", stdin=save.stdout)
            save.stdout.close()
            if save.wait():
                raise RuntimeError(f"docker save {s.registry_image} failed")
            say(f"replay: {node} ready, registry image loaded ({time.monotonic() - t0:.1f} s)")

    for s in settings:
        first, *others = s.nodes

        def on(node: str, *args: str) -> str:  # like `docker-machine ssh NODE docker ...`
            return run("docker", "exec", names[node], "docker", *args)

        on(first, "swarm", "init", "--advertise-addr", addresses[first],
           "--listen-addr", "0.0.0.0:2377")
        for node in others:
            token = on(first, "swarm", "join-token", "-q",
                       "worker" if node in s.workers else "manager")
            on(node, "swarm", "join", "--token", token, "--advertise-addr", addresses[node],
               "--listen-addr", "0.0.0.0:2377", f"{addresses[first]}:2377")
        for node, key, value in s.node_labels:
            on(first, "node", "update", "--label-add", f"{key}={value}", node)
        # The tool's registry spec without IPVS: global, host-mode port, dnsrr. The API the
        # tool calls records the tag as given; --no-resolve-image makes the CLI do the same
        # instead of asking Docker Hub (unreachable here) for a digest.
        spec = registry.spec(s, "dnsrr")
        (secret, _), = spec.secrets  # the registry's htpasswd, as `provision` gives it
        with open(registry.auth_dir(s) / registry.HTPASSWD, "rb") as htpasswd:
            run("docker", "exec", "-i", names[first], "docker", "secret", "create", secret, "-",
                stdin=htpasswd)
        on(first, "service", "create", "--detach", "--no-resolve-image", "--name", spec.name,
           "--mode", "global", "--endpoint-mode", spec.endpoint_mode,
           "--reserve-memory", f"{spec.reserve_mb}M",
           *[f"--env={e}" for e in spec.env], *[f"--mount={m}" for m in spec.mounts],
           *[f"--secret=source={n},target={t},mode=0400" for n, t in spec.secrets],
           *[f"--publish=mode={m},target={t},published={p}" for p, t, m in spec.ports],
           *[f"--label={k}={v}" for k, v in spec.labels], spec.image)
        deadline = time.monotonic() + REGISTRY_TIMEOUT
        while sum(line.startswith("Running") for line in on(
                first, "service", "ps", spec.name, "--filter", "desired-state=running",
                "--format", "{{.CurrentState}}").splitlines()) < len(s.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{s.env}: registry not running on every node after "
                                   f"{REGISTRY_TIMEOUT}s")
            time.sleep(POLL)
        say(f"replay: {s.env} swarm up, registry on {len(s.nodes)} nodes "
            f"({time.monotonic() - t0:.1f} s)")
    return time.monotonic() - t0




def main() -> None:
    host = engine.host_client()
    wanted = [images.IMAGES["node"], images.IMAGES["registry"]]
    if images.missing(host, wanted):  # built once, outside any timing
        say("building the node and registry images first (inv images)")
        inv(["images"], dict(os.environ))
    rand = secrets.token_hex(3)
    lab_a, lab_b = f"cdtbench{rand}a", f"cdtbench{rand}b"
    tmp = Path(tempfile.mkdtemp(prefix="cdtbench-"))
    env_a, env_b = lab_environ(lab_a, tmp / "a"), lab_environ(lab_b, tmp / "b")
    # SIGTERM takes the same way out as Ctrl-C, so the labs are removed either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        say(f"tool: inv provision, lab {lab_a}")
        tool, _ = inv(["provision"], env_a)
        say(f"no-op: inv provision again (3 times), lab {lab_a}")
        # Three runs: the first follows the provisioning at once, while the new engines are
        # still settling; the median is what a user re-running provision sees.
        noops = []
        for _ in range(3):
            seconds, table = inv(["provision"], env_a)
            noops.append(seconds)
            up_to_date = table.count("up to date") == len(ENVS)
        noop = statistics.median(noops)
        # The replay starts with lab (a) gone, so it does not compete with its six engines.
        inv(["destroy", "--purge"], env_a)
        say(f"replay: the book's commands, one node at a time, lab {lab_b}")
        serial = replay(host, env_b)
    finally:
        # Cleanup must not be cut short by a second Ctrl-C (`inv destroy` inherits the ignore).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("cleaning up both labs")
        subprocess.run(["inv", "destroy", "--purge"], cwd=ROOT, env=env_a,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        remove_labelled(host, lab_b)
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = tool / serial
    print(f"\nprovision benchmark ({len(ENVS)} clusters x 3 nodes)\n"
          f"  tool (parallel)      {tool:6.1f} s\n"
          f"  book replay (serial) {serial:6.1f} s\n"
          f"  ratio                {ratio:6.2f}  (target <= {RATIO_TARGET})\n"
          f"  no-op re-provision   {noop:6.1f} s  (median of {', '.join(f'{n:.1f}' for n in noops)};"
          f" target <= {NOOP_TARGET:g} s)"
          f"{'' if up_to_date else '  WARNING: it changed something'}")
    benchlib.write_results(RESULTS, host, {
        "tool_s": round(tool, 1), "replay_s": round(serial, 1), "ratio": round(ratio, 2),
        "noop_s": round(noop, 1), "noop_runs_s": [round(n, 1) for n in noops],
        "noop_up_to_date": up_to_date,
        "targets": {"ratio": RATIO_TARGET, "noop_s": NOOP_TARGET},
    })


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
