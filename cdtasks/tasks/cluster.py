"""provision, status, env, ssh, destroy: the clusters and their machines. The library is
imported inside each task: `inv --list` imports every task module and must stay fast."""

from __future__ import annotations

from invoke import Collection, Exit

from .common import CONFIG, UNREACHABLE, envs, out, print_json, settings, user_errors
from .flags import task

EVERY = {"env": "default: every environment"}
OF_NODE = {"env": "default: the one whose NODES has the node"}


@task(notes=EVERY)
@user_errors
def provision(c, env=None):
    """Create or repair the clusters: machines, swarm, labels, registry (idempotent)."""
    from .. import cluster, report

    all_settings = [settings(c, e) for e in envs(c, env)]
    log = report.make_logger("provision")
    results = cluster.provision_many(all_settings, log)
    notes = {r.routing_reason for r in results}
    for note in notes:
        out(f"routing: {note}")
    report.print_table(
        "provision",
        ["env", "changes", "routing", "seconds"],
        [
            [
                r.env,
                str(len(r.actions)) if r.actions else "none (up to date)",
                r.routing,
                f"{r.seconds:.1f}",
            ]
            for r in results
        ],
    )


@task(notes=EVERY)
@user_errors
def status(c, env=None, json=False):
    """Show each cluster's nodes (roles, state, labels) and services (replicas)."""
    from .. import cluster, report

    found = [cluster.status(settings(c, e)) for e in envs(c, env)]
    if json:
        print_json({st.env: _status_json(st) for st in found})
    else:
        _status_tables(found, report)
    empty = [st.env for st in found if not st.members]
    if empty:
        raise Exit(
            "error: no machine runs in "
            + ", ".join(empty)
            + ": `inv provision"
            + (f" --env {empty[0]}`" if len(empty) == 1 else "`")
            + " creates them",
            code=UNREACHABLE,
        )


def _status_tables(found, report) -> None:
    for st in found:
        if not st.members:  # said on stderr, with the exit code
            continue
        rows = [
            [
                m.hostname,
                m.role + (" (leader)" if m.leader else ""),
                m.status,
                m.availability,
                m.reachability or "-",
                ",".join(f"{k}={v}" for k, v in sorted(m.labels.items())) or "-",
            ]
            for m in st.members
        ]
        rows += [[n, "-", "no machine", "-", "-", "-"] for n in st.missing]
        report.print_table(
            f"{st.env}: nodes",
            ["node", "role", "status", "availability", "manager", "labels"],
            rows,
        )
        if st.services:
            report.print_table(
                f"{st.env}: services",
                ["service", "mode", "replicas", "image"],
                [list(s) for s in st.services],
            )


@task(notes=OF_NODE)
@user_errors
def env(c, node, env=None):
    """Print the exports that point the docker CLI at a node: eval $(inv env NODE)."""
    from .. import cluster

    s = _settings_with_node(c, node, env)
    for line in cluster.env_lines(s, node):
        out(line)
    out(f"# Run this command to configure your shell: eval $(inv env {node})")


@task(notes=OF_NODE)
@user_errors
def ssh(c, node, cmd=None, env=None):
    """Open a shell, or run one command, on a node over SSH (host key verified)."""
    from .. import cluster

    result = cluster.run_on(_settings_with_node(c, node, env), node, cmd)
    if result is not None and not result.ok:
        raise Exit(code=result.exited)


@task(notes=EVERY)
@user_errors
def destroy(c, env=None, purge=False):
    """Remove the machines, networks, volumes, certificates and keys the tool created."""
    from .. import cluster, report

    log = report.make_logger("destroy")
    removed = []
    for e in envs(c, env):
        removed += cluster.destroy(settings(c, e), log, purge=purge)
    out(f"removed {len(removed)} item(s)" if removed else "nothing to remove")


def _status_json(st) -> dict:
    """`inv status --json`'s document for one environment (fields: README)."""
    return {
        "nodes": [
            {
                "node": m.hostname,
                "role": m.role,
                "leader": m.leader,
                "status": m.status,
                "availability": m.availability,
                "reachability": m.reachability,
                "labels": dict(m.labels),
            }
            for m in st.members
        ],
        "missing": list(st.missing),
        "services": [
            {"service": name, "mode": mode, "replicas": replicas, "image": image}
            for name, mode, replicas, image in st.services
        ],
    }


def _settings_with_node(c, node: str, env: str | None):
    for e in envs(c, env):
        s = settings(c, e)
        if node in s.cluster.nodes:
            return s
    return settings(c, envs(c, env)[0]).check_node(node)  # raises: names the valid nodes


ns = Collection("cluster", provision, status, env, ssh, destroy)
ns.configure(CONFIG)
