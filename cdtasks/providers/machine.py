"""The docker-machine provider, as in the book: machines made by the `docker-machine` command line.

Only its documented commands and outputs are used: `ls --format`, `create -d DRIVER`, `start`,
`ip`, `env --shell bash`, `ssh`, `rm -f`. Docker is reached over the TLS setup docker-machine
made (`env`), shells through `docker-machine ssh`. With the virtualbox driver the host directory
holding the registry's storage and the workspace is shared into every VM at the same path
(VIRTUALBOX_SHARE_FOLDER, as the book's script does); other drivers get checkouts copied.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import state
from ..config import Settings
from ..engine import Endpoint
from ..log import Log
from .base import Provider, ProviderError, removed_with_registry

BINARY = "docker-machine"
# Error last: it is free text and may contain the separator.
LS_FORMAT = "{{.Name}}|{{.State}}|{{.Error}}"
CREATE_TIMEOUT = 900  # a VM on a slow cloud takes minutes
TIMEOUT = 120

Runner = Callable[[Sequence[str], dict, float], subprocess.CompletedProcess]


def _run(argv: Sequence[str], env: dict, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def parse_ls(output: str) -> dict[str, tuple[str, str]]:
    """`ls --format LS_FORMAT` -> {name: (state, error)}."""
    out = {}
    for line in output.splitlines():
        if line.strip():
            name, state, error = (line.split("|", 2) + ["", ""])[:3]
            out[name.strip()] = (state.strip(), error.strip())
    return out


def parse_env(output: str) -> dict[str, str]:
    """`env --shell bash` -> {"DOCKER_HOST": ..., ...} (comment lines ignored)."""
    out = {}
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, _, value = line[len("export ") :].partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def parse_config(output: str) -> dict[str, str]:
    """`config` -> {"host": "tcp://...", "tlscacert": ..., "tlscert": ..., "tlskey": ...}: the
    docker CLI flags it prints, one a line (`--tlscacert="..."`, `-H=tcp://...`)."""
    out = {}
    for flag in shlex.split(output):
        name, _, value = flag.lstrip("-").partition("=")
        out["host" if name == "H" else name] = value
    return out


def _message(proc: subprocess.CompletedProcess) -> str:
    """docker-machine's own words: the last lines of stderr (else stdout)."""
    lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
    return " / ".join(lines[-2:]) if lines else f"exit code {proc.returncode}"


class MachineProvider(Provider):
    name = "docker-machine"

    def __init__(self, settings: Settings, run: Runner | None = None):
        self.s = settings
        self._run = run or _run

    @property
    def shares_workspace(self) -> bool:
        return self.s.machine.machine_driver == "virtualbox"

    @property
    def share_folder(self) -> Path:
        """One folder holds what the VMs must see: the registry's storage and the workspace."""
        return Path(
            os.path.commonpath([self.s.registry.registry_dir, self.s.delivery.workspace_dir])
        )

    def _env(self) -> dict:
        env = dict(os.environ)
        if self.shares_workspace:
            env["VIRTUALBOX_SHARE_FOLDER"] = f"{self.share_folder}:{self.share_folder}"
        return env

    def dm(self, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        try:
            return self._run([BINARY, *args], self._env(), timeout)
        except FileNotFoundError:
            raise ProviderError(
                f"PROVIDER=docker-machine but `{BINARY}` is not on PATH: install "
                f"docker-machine, or choose PROVIDER=lab or ssh in {self.s.source}"
            ) from None
        except subprocess.TimeoutExpired:
            raise ProviderError(
                f"`{BINARY} {' '.join(args)}` did not finish within {timeout}s"
            ) from None

    def _checked(self, node: str, *args: str, timeout: float = TIMEOUT) -> str:
        proc = self.dm(*args, timeout=timeout)
        if proc.returncode != 0:
            raise ProviderError(f"machine {node}: `{BINARY} {args[0]}` failed: {_message(proc)}")
        return proc.stdout

    def states(self) -> dict[str, tuple[str, str]]:
        proc = self.dm("ls", "--format", LS_FORMAT)
        if proc.returncode != 0:
            raise ProviderError(f"`{BINARY} ls` failed: {_message(proc)}")
        return parse_ls(proc.stdout)

    # -- queries ---------------------------------------------------------------------------
    def _endpoint(self, node: str) -> Endpoint:
        """`ip` for the swarm's address; `config` for the Docker API and its TLS files."""
        address = self._checked(node, "ip", node).strip()
        flags = parse_config(self._checked(node, "config", node))
        if not flags.get("host"):
            raise ProviderError(f"machine {node}: `{BINARY} config` printed no -H")
        files = [Path(flags[k]) for k in ("tlscacert", "tlscert", "tlskey") if flags.get(k)]
        if files and [(f.parent, f.name) for f in files] != [
            (files[0].parent, n) for n in ("ca.pem", "cert.pem", "key.pem")
        ]:
            raise ProviderError(
                f"machine {node}: `{BINARY} config` names TLS files "
                f"{', '.join(map(str, files))}; expected ca.pem, cert.pem and "
                f"key.pem in one directory"
            )
        return Endpoint(
            node=node,
            docker_host=flags["host"],
            cert_path=files[0].parent if files else None,
            address=address,
            shell=(BINARY, "ssh", node),
        )

    def exports(self, ep: Endpoint) -> dict[str, str]:
        """docker-machine's own `env` (with DOCKER_MACHINE_NAME), as the book evals it."""
        env = parse_env(self._checked(ep.node, "env", "--shell", "bash", ep.node))
        if "DOCKER_HOST" not in env:
            raise ProviderError(f"machine {ep.node}: `{BINARY} env` printed no DOCKER_HOST")
        return env

    def _each(self, fn: Callable, nodes: Sequence[str]) -> list:
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            return list(pool.map(fn, nodes))

    def endpoints(self, nodes: Sequence[str]) -> dict[str, Endpoint]:
        states = self.states()
        running = [n for n in nodes if states.get(n, ("",))[0] == "Running"]
        return dict(zip(running, self._each(self._endpoint, running), strict=True))

    # -- create ----------------------------------------------------------------------------
    def ensure(self, nodes: Sequence[str], log: Log) -> dict[str, Endpoint]:
        states = self.states()
        broken = [
            f"machine {n} is in state Error ({states[n][1] or 'no reason given'})"
            for n in nodes
            if states.get(n, ("",))[0] == "Error"
        ]
        if broken:
            raise ProviderError(
                "; ".join(broken) + ": remove it with `docker-machine rm -f "
                "NAME` (or `inv destroy`) and provision again"
            )
        if self.shares_workspace:
            state.private_dir(self.share_folder)
        for d in (self.s.registry.registry_dir, self.s.delivery.workspace_dir):
            state.private_dir(d)

        def one(node: str) -> str | None:
            state = states.get(node, ("",))[0]
            try:
                if not state:
                    log(f"{node}: docker-machine create -d {self.s.machine.machine_driver}")
                    self._create(node)
                elif state != "Running":
                    log(f"{node}: starting the {state.lower()} machine")
                    self._checked(node, "start", node, timeout=CREATE_TIMEOUT)
            except ProviderError as exc:
                return str(exc)
            return None

        errors = [e for e in self._each(one, nodes) if e]
        if errors:
            raise ProviderError("; ".join(errors))
        return dict(zip(nodes, self._each(self._endpoint, nodes), strict=True))

    def _create(self, node: str) -> None:
        proc = self.dm(
            "create",
            "-d",
            self.s.machine.machine_driver,
            *self.s.machine.machine_options,
            node,
            timeout=CREATE_TIMEOUT,
        )
        if proc.returncode != 0:
            # docker-machine keeps a half-made machine (state Error): remove it so that the
            # next provision starts clean, then say what docker-machine said.
            if node in self.states():
                self.dm("rm", "-f", node)
            raise ProviderError(
                f"machine {node}: `{BINARY} create -d {self.s.machine.machine_driver}` "
                f"failed: {_message(proc)}"
            )

    # -- remove ----------------------------------------------------------------------------
    def remove(self, nodes: Sequence[str], log: Log, purge: bool = False) -> list[str]:
        existing = [n for n in nodes if n in self.states()]
        for node in existing:
            log(f"{node}: docker-machine rm -f")
        self._each(lambda n: self._checked(n, "rm", "-f", n), existing)
        removed = [f"machine {n}" for n in existing]
        return removed_with_registry(self.s, removed, log, purge)
