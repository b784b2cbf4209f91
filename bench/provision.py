"""Provision benchmark: `inv provision` (both clusters) against the book's commands replayed one
node at a time, plus a no-op re-provision, each with its time per phase, and one cluster of 3, 6
and 12 nodes. Run from the repository root:

    python3 bench/provision.py [PAIRS]

Creates throwaway labs (cdtbench<rand>a for the tool, cdtbench<rand>b for the replay,
cdtbench<rand>s for the sizes) and removes them afterwards, also on failure or Ctrl-C. Figures go
to bench/results/provision.json.
"""

from __future__ import annotations

import os
import re
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

import benchlib  # noqa: E402

from cdtasks import config, engine, images, registry, state  # noqa: E402
from cdtasks.providers import certs  # noqa: E402
from cdtasks.providers.lab import LabProvider, remove_labelled  # noqa: E402

ENVS = ("test", "prod")
SIZES = (3, 6, 12)  # one cluster: 3 managers, the rest workers
RATIO_TARGET, NOOP_TARGET = 0.5, 3.0
REGISTRY_TIMEOUT = 120
POLL = 0.5  # the tool's own poll interval while waiting for services
RESULTS = ROOT / "bench" / "results" / "provision.json"


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def lab_environ(lab: str, state: Path) -> dict[str, str]:
    return {**os.environ, "CDTASKS_LAB_NAME": lab, "CDTASKS_STATE_DIR": str(state)}


# The tool logs "ENV: PHASE after S.Ss" at the end of each phase of its provisioning.
PHASE_LINE = re.compile(
    r"\] (\w+): (machines ready|swarm converged|registry image on every node|"
    r"registry running) after ([\d.]+)s$"
)


def inv(args: list[str], environ: dict[str, str]) -> tuple[float, str, dict]:
    """Run `inv ...`; its log (stderr) shows live, its table (stdout) is returned, with the
    phases the log reports ({env: {phase: seconds since that env's start}})."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["inv", *args],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    phases: dict[str, dict[str, float]] = {}
    for line in proc.stderr:  # stdout is small: reading it after stderr cannot block the child
        print(line, end="", file=sys.stderr, flush=True)
        m = PHASE_LINE.search(line.rstrip())
        if m:
            phases.setdefault(m[1], {})[m[2]] = float(m[3])
    stdout = proc.stdout.read()
    seconds = time.monotonic() - t0
    print(stdout, end="", flush=True)
    if proc.wait():
        raise RuntimeError(f"inv {' '.join(args)} failed (exit {proc.returncode})")
    return seconds, stdout, phases


def run(*cmd: str, stdin=None) -> str:
    proc = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def replay(host, environ: dict[str, str]) -> tuple[float, dict[str, float]]:
    """The book's provisioning, one step after another: machines, then per cluster swarm init,
    joins, labels, the registry service, and the wait until it runs everywhere. Returns the
    time and its parts (machines, image loads, swarm, registry)."""
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
        state.private_dir(s.registry.registry_dir)
        state.private_dir(s.delivery.workspace_dir)

    parts = dict.fromkeys(("machines", "image loads", "swarm", "registry"), 0.0)
    mark = t0

    def part(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        parts[name] += now - mark
        mark = now

    part("machines")  # the lab's shared pieces
    addresses, names = {}, {}
    for prov, s in zip(providers, settings, strict=True):
        for node in s.cluster.nodes:
            # The provider's own container code path (same caps, security opts, unmasked /proc
            # and /sys, tmpfs, volumes, certs, ports), called for one node at a time.
            c = prov._create_container(node, node_image, prov._prepare_machine(node))
            endpoint = prov._endpoint(node, c)
            prov._wait_ready(endpoint, c)
            addresses[node], names[node] = endpoint.address, c.name
            part("machines")
            save = subprocess.Popen(
                ["docker", "save", s.registry.registry_image], stdout=subprocess.PIPE
            )
            run("docker", "exec", "-i", c.name, "docker", "load", "-q", stdin=save.stdout)
            save.stdout.close()
            if save.wait():
                raise RuntimeError(f"docker save {s.registry.registry_image} failed")
            part("image loads")
            say(f"replay: {node} ready, registry image loaded ({time.monotonic() - t0:.1f} s)")

    for s in settings:
        first, *others = s.cluster.nodes

        def on(node: str, *args: str) -> str:  # like `docker-machine ssh NODE docker ...`
            return run("docker", "exec", names[node], "docker", *args)

        on(
            first,
            "swarm",
            "init",
            "--advertise-addr",
            addresses[first],
            "--listen-addr",
            "0.0.0.0:2377",
        )
        for node in others:
            token = on(
                first,
                "swarm",
                "join-token",
                "-q",
                "worker" if node in s.cluster.workers else "manager",
            )
            on(
                node,
                "swarm",
                "join",
                "--token",
                token,
                "--advertise-addr",
                addresses[node],
                "--listen-addr",
                "0.0.0.0:2377",
                f"{addresses[first]}:2377",
            )
        for node, key, value in s.cluster.node_labels:
            on(first, "node", "update", "--label-add", f"{key}={value}", node)
        part("swarm")
        # The tool's registry spec without IPVS: global, host-mode port, dnsrr. The API the
        # tool calls records the tag as given; --no-resolve-image makes the CLI do the same
        # instead of asking Docker Hub (unreachable here) for a digest.
        spec = registry.spec(s, "dnsrr")
        ((secret, _),) = spec.secrets  # the registry's htpasswd, as `provision` gives it
        with open(registry.auth_dir(s) / registry.HTPASSWD, "rb") as htpasswd:
            run(
                "docker",
                "exec",
                "-i",
                names[first],
                "docker",
                "secret",
                "create",
                secret,
                "-",
                stdin=htpasswd,
            )
        on(
            first,
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            spec.name,
            "--mode",
            "global",
            "--endpoint-mode",
            spec.endpoint_mode,
            "--reserve-memory",
            f"{spec.reserve_mb}M",
            *[f"--env={e}" for e in spec.env],
            *[f"--mount={m}" for m in spec.mounts],
            *[f"--secret=source={n},target={t},mode=0400" for n, t in spec.secrets],
            *[f"--publish=mode={m},target={t},published={p}" for p, t, m in spec.ports],
            *[f"--label={k}={v}" for k, v in spec.labels],
            spec.image,
        )
        deadline = time.monotonic() + REGISTRY_TIMEOUT
        while sum(
            line.startswith("Running")
            for line in on(
                first,
                "service",
                "ps",
                spec.name,
                "--filter",
                "desired-state=running",
                "--format",
                "{{.CurrentState}}",
            ).splitlines()
        ) < len(s.cluster.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{s.env}: registry not running on every node after {REGISTRY_TIMEOUT}s"
                )
            time.sleep(POLL)
        part("registry")
        say(
            f"replay: {s.env} swarm up, registry on {len(s.cluster.nodes)} nodes "
            f"({time.monotonic() - t0:.1f} s)"
        )
    return time.monotonic() - t0, {k: round(v, 1) for k, v in parts.items()}


def tool_parts(phases: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The tool's phases per env, from its "after S s" marks: machines, then swarm and image
    loads side by side (each from the machines' end), then the registry service."""
    out = {}
    for env, p in phases.items():
        m, sw, im = p["machines ready"], p["swarm converged"], p.get("registry image on every node")
        out[env] = {
            "machines": m,
            "swarm": round(sw - m, 1),
            "image loads": round(im - m, 1) if im is not None else 0.0,
            "registry": round(p["registry running"] - max(sw, im or 0.0), 1),
        }
    return out


def sizes(host, lab: str, tmp: Path) -> list[dict]:
    """One cluster of each size in SIZES (3 managers, the rest workers), provisioned by the tool
    from nothing, then destroyed."""
    rows = []
    for n in SIZES:
        nodes = [f"swarm-test-{i}" for i in range(1, n + 1)]
        environ = {
            **lab_environ(lab, tmp / f"s{n}"),
            "CDTASKS_NODES": ",".join(nodes),
            "CDTASKS_WORKERS": ",".join(nodes[3:]),
        }
        say(f"size: one cluster of {n} nodes, lab {lab}")
        seconds, _, phases = inv(["provision", "--env", "test"], environ)
        inv(["destroy", "--env", "test", "--purge"], environ)
        rows.append(
            {"nodes": n, "seconds": round(seconds, 1), "phases": tool_parts(phases)["test"]}
        )
    return rows


def main() -> None:
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    host = engine.host_client()
    wanted = [images.IMAGES["node"], images.IMAGES["registry"]]
    if images.missing(host, wanted):  # built once, outside any timing
        say("building the node and registry images first (inv images)")
        inv(["images"], dict(os.environ))
    # So is the seeded node image new machines start from.
    LabProvider(config.load("test", environ=dict(os.environ)), host).node_image(say)
    rand = secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix="cdtbench-"))
    labs: list[str] = []
    load_before = [round(x, 2) for x in os.getloadavg()]
    runs, noops, up_to_date = [], [], True
    # SIGTERM takes the same way out as Ctrl-C, so the labs are removed either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for i in range(pairs):
            # Each pair on fresh labs; the order alternates against a load that changes.
            lab_a, lab_b = f"cdtbench{rand}a{i}", f"cdtbench{rand}b{i}"
            labs += [lab_a, lab_b]
            env_a, env_b = lab_environ(lab_a, tmp / lab_a), lab_environ(lab_b, tmp / lab_b)
            run_ = {
                "order": "tool first" if i % 2 == 0 else "replay first",
                "load_1min": round(os.getloadavg()[0], 2),
            }
            for side in ("tool", "replay") if i % 2 == 0 else ("replay", "tool"):
                if side == "tool":
                    say(f"tool: inv provision, lab {lab_a}")
                    seconds, _, phases = inv(["provision"], env_a)
                    run_.update(tool_s=round(seconds, 1), tool_phases=tool_parts(phases))
                    if i == 0:
                        say(f"no-op: inv provision again (3 times), lab {lab_a}")
                        # Three runs: the first follows the provisioning at once, while the new
                        # engines are still settling; the median is what a user re-running sees.
                        for _ in range(3):
                            seconds, table, _ = inv(["provision"], env_a)
                            noops.append(seconds)
                            up_to_date = up_to_date and table.count("up to date") == len(ENVS)
                    # Gone before the other side starts, so it does not compete with six engines.
                    inv(["destroy", "--purge"], env_a)
                else:
                    say(f"replay: the book's commands, one node at a time, lab {lab_b}")
                    seconds, parts = replay(host, env_b)
                    run_.update(replay_s=round(seconds, 1), replay_phases=parts)
                    remove_labelled(host, lab_b)
            run_["ratio"] = round(run_["tool_s"] / run_["replay_s"], 2)
            runs.append(run_)
        labs.append(f"cdtbench{rand}s")
        size_rows = sizes(host, labs[-1], tmp)
    finally:
        # Cleanup must not be cut short by a second Ctrl-C (`inv destroy` inherits the ignore).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("cleaning up the labs")
        for lab in labs:
            remove_labelled(host, lab)
        shutil.rmtree(tmp, ignore_errors=True)

    tool = statistics.mean(r["tool_s"] for r in runs)
    serial = statistics.mean(r["replay_s"] for r in runs)
    ratio = tool / serial
    noop = statistics.median(noops)
    print(
        f"\nprovision benchmark ({len(ENVS)} clusters x 3 nodes, {pairs} pair(s); "
        f"load average before {load_before[0]:.1f})"
    )
    for r in runs:
        print(
            f"  {r['order']:<13} tool {r['tool_s']:5.1f} s  replay {r['replay_s']:5.1f} s  "
            f"ratio {r['ratio']:.2f}  (1-min load {r['load_1min']:.1f})"
        )
        for env, p in r["tool_phases"].items():
            print(f"    tool {env:<5}  " + "  ".join(f"{k} {v:.1f}" for k, v in p.items()))
        print("    replay      " + "  ".join(f"{k} {v:.1f}" for k, v in r["replay_phases"].items()))
    print(
        f"  tool (parallel)      {tool:6.1f} s\n"
        f"  book replay (serial) {serial:6.1f} s\n"
        f"  ratio                {ratio:6.2f}  (target <= {RATIO_TARGET})\n"
        f"  no-op re-provision   {noop:6.1f} s  (median of {', '.join(f'{n:.1f}' for n in noops)};"
        f" target <= {NOOP_TARGET:g} s)"
        f"{'' if up_to_date else '  WARNING: it changed something'}"
    )
    print("  one cluster, by size (3 managers, the rest workers):")
    for prev, row in zip([None, *size_rows], size_rows, strict=False):
        grow = (
            f"  x{row['seconds'] / prev['seconds']:.2f} for x{row['nodes'] // prev['nodes']} nodes"
            if prev
            else ""
        )
        print(
            f"    {row['nodes']:>2} nodes {row['seconds']:5.1f} s{grow}   "
            + "  ".join(f"{k} {v:.1f}" for k, v in row["phases"].items())
        )
    benchlib.write_results(
        RESULTS,
        host,
        {
            "tool_s": round(tool, 1),
            "replay_s": round(serial, 1),
            "ratio": round(ratio, 2),
            "runs": runs,
            "noop_s": round(noop, 1),
            "noop_runs_s": [round(n, 1) for n in noops],
            "noop_up_to_date": up_to_date,
            "sizes": size_rows,
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "targets": {"ratio": RATIO_TARGET, "noop_s": NOOP_TARGET},
        },
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
