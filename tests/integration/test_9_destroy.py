"""`inv destroy --purge` (run last): nothing of the lab is left on the engine or on disk."""

from __future__ import annotations

import time

import docker

LAB_LABEL = "io.cdtasks.lab"


def test_destroy_purge_leaves_nothing(lab):
    host = docker.from_env()
    label = {"label": f"{LAB_LABEL}={lab.name}"}
    lab_dir = lab.state_dir / lab.name
    registry_dir = lab.state_dir / "registry"
    # What there is to remove (the lab fixture provisioned it).
    assert host.containers.list(all=True, filters=label)
    assert lab_dir.is_dir() and registry_dir.is_dir()

    started = time.monotonic()
    proc = lab.inv("destroy", "--purge")
    print(proc.stdout.strip())
    print(f"`inv destroy --purge`: {time.monotonic() - started:.1f}s wall")

    assert host.containers.list(all=True, filters=label) == []
    assert host.volumes.list(filters=label) == []
    assert host.networks.list(filters=label) == []
    # Named after the lab, labelled or not.
    assert [
        c.name for c in host.containers.list(all=True) if c.name.startswith(f"{lab.name}-")
    ] == []
    assert [v.name for v in host.volumes.list() if v.name.startswith(f"{lab.name}-")] == []
    assert [n.name for n in host.networks.list() if n.name == lab.name] == []
    assert not lab_dir.exists(), sorted(p.name for p in lab_dir.iterdir())
    assert not registry_dir.exists()

    # A second destroy finds nothing to do.
    again = lab.inv("destroy", "--purge")
    assert "nothing to remove" in again.stdout
