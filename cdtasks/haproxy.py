"""HAProxy's runtime API on every replica of the proxy service: per backend/server counters
(`show stat`) and server weights (`set weight`), with no reload and no restart.

How it is reached: a short Python script run by the Engine API's exec in each proxy task's
container, on the node that runs it, talking to the runtime API's UNIX socket there. Nothing
listens on the network for it (a TCP `stats socket` would be an admin port on the overlay
network, open to every container attached to it), the proxy image needs nothing added (it has
python3, no socat), and each replica is asked by its task ID, so a replica that does not answer
is named. The sample's haproxy.cfg has the lines that enable it (`ENABLE_LINES`)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import gateway, services
from .cluster import Cluster

SOCKET = "/run/haproxy-admin.sock"
# What a proxy needs so that it can be driven, as the user adds it to haproxy.cfg.
ENABLE_LINES = (
    f"global: stats socket {SOCKET} mode 600 level admin",
    'backend <backend>: server-template canary N "${BACKEND_HOST}-canary:${BACKEND_PORT}" '
    "check resolvers docker init-addr none weight 0",
)

# Run inside the proxy's container: each argument is one runtime API command, sent on its own
# connection (non-interactive mode: the answer ends when HAProxy closes it); the answers come
# back as one JSON list. Exit 3: no socket (the runtime API is not enabled at that path).
# `--until JSON` first: `show stat` every 0.1 s, for at most the seconds JSON gives, until each
# of its backends has as many servers UP named PREFIX<n> as it asks (`wait_up`); a look costs
# a socket round trip there, where a look from outside costs an exec and a Python start.
_CLIENT = """
import json, os, socket, sys, time
path, args, answers = sys.argv[1], sys.argv[2:], []
if not os.path.exists(path):
    sys.exit(3)
def ask(cmd):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    s.sendall(cmd.encode() + b"\\n")
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out.decode(errors="replace")
def seen(stat, want):
    rows = [r.split(",") for r in stat.splitlines() if r.strip()]
    if not rows or not rows[0][0].startswith("# pxname"):
        return True  # not `show stat`: let the caller's reading say so
    status = [c.strip() for c in rows[0]].index("status")
    for backend, (prefix, wanted) in want.items():
        up = sum(
            1 for r in rows[1:]
            if len(r) > status and r[0] == backend and r[1].startswith(prefix)
            and r[1][len(prefix):].isdigit() and r[status].startswith("UP")
        )
        if up < wanted:
            return False
    return True
if args[:1] == ["--until"]:
    want, seconds = json.loads(args[1])
    args, end = args[2:], time.monotonic() + seconds
    while not seen(ask("show stat"), want) and time.monotonic() < end:
        time.sleep(0.1)
for cmd in args:
    answers.append(ask(cmd))
print(json.dumps(answers))
"""


class ProxyError(RuntimeError):
    """The proxy cannot be driven: not HAProxy, no runtime API, a replica that does not answer,
    or a command it refused. One line, naming what to fix."""


@dataclass(frozen=True)
class Replica:
    """One running task of the proxy service."""

    task: str  # Swarm task ID: a restarted proxy is a new task (its counters start at 0)
    node: str
    container: str


@dataclass(frozen=True)
class Counters:
    """What one proxy process counted for some servers since it started, or between two of its
    readings (`since`)."""

    requests: int  # attempts sent to servers, plus the requests HAProxy answered itself
    errors: int
    answered: int = 0  # responses relayed from servers (the samples of rtime)
    # HAProxy counters that only grow while its process lives (stot), by which a restart shows;
    # None: `requests` is one. The requests HAProxy answered itself are a difference of two
    # counters that a reading may catch between their increments (one more, then one less).
    sessions: int | None = field(default=None, compare=False)
    # Server slot -> (its address, "" when unresolved; its `hidden` attempts so far): by which
    # the error budget tells a task that Swarm stopped from the release's (budget.Tally).
    slots: Mapping[str, tuple[str, int]] = field(default_factory=dict, compare=False)

    @property
    def lifelong(self) -> int:
        return self.requests if self.sessions is None else self.sessions


def restarted(before: Counters, now: Counters) -> bool:
    """Fewer sessions than at the earlier reading: that proxy process restarted (its counters
    start at 0 again)."""
    return now.lifelong < before.lifelong


def since(before: Counters | None, now: Counters) -> Counters:
    """What one proxy replica counted between two readings: `before` None (a replica new since)
    or a restart between them: all of `now`. Never below 0 (see `sessions`)."""
    if before is None or restarted(before, now):
        return now
    requests = max(0, now.requests - before.requests)
    # An attempt under way at the earlier reading is counted in requests then, in errors only
    # when it fails: never more errors than requests (the lab saw 69 of 68).
    errors = min(requests, max(0, now.errors - before.errors))
    return Counters(requests, errors, max(0, now.answered - before.answered))


OWN = "(haproxy)"  # the entry, among a backend's servers, for the requests HAProxy answered itself


@dataclass(frozen=True)
class Server:
    """One server line of `show stat` (counters since that proxy process started), or the
    BACKEND line of its backend."""

    backend: str
    name: str
    status: str  # UP, DOWN, MAINT, MAINT (resolution), no check ...
    weight: int  # as set (`uweight`): what `set weight` changes
    requests: int  # stot: attempts sent to it, retried ones included
    responses_5xx: int  # hrsp_5xx: 5xx answers the clients got from it
    failed_connections: int  # econ: attempts whose connection failed, retries exhausted
    response_errors: int  # eresp: aborted, invalid or timed out answers (HAProxy sent 502/504)
    retries: int  # wretr: attempts on it retried on it (`retry-on` retries its 500s: here)
    rtime: int  # ms, HAProxy's average response time over its last responses (`window`)
    ttime: int  # ms, the same for the whole session
    answered: int = 0  # req_tot: responses relayed from it, the samples of rtime and ttime
    redispatches: int = 0  # wredis: attempts on it sent on to another server (`redispatch`)
    address: str = ""  # addr: IP:port of the task behind it; "" while unresolved (MAINT)

    @property
    def hidden(self) -> int:
        """Attempts it failed that HAProxy retried or sent elsewhere, which the client never
        saw fail (see `errors`)."""
        return max(self.retries, self.redispatches)

    @property
    def errors(self) -> int:
        """Attempts it failed: 5xx, failed connections, broken answers, and the attempts
        retried or redispatched elsewhere (with `retry-on`, a 500 that HAProxy retried is never
        a 5xx of the server; a refused connection sent to another server is no `econ`). HAProxy
        2.6.12 counts a retried 500 in both wretr and wredis, or twice in wretr on a backend of
        one server (tests/unit/data): the larger of the two, capped at its attempts."""
        failed = self.responses_5xx + self.failed_connections + self.response_errors
        return min(self.requests, failed + self.hidden)

    @property
    def counters(self) -> Counters:
        """Its counters; the OWN entry's are no evidence of a restart (see `sessions`)."""
        return Counters(
            self.requests, self.errors, self.answered, 0 if self.name == OWN else self.requests
        )

    @property
    def full_name(self) -> str:
        return f"{self.backend}/{self.name}"

    @property
    def up(self) -> bool:
        """Taking requests: UP, or going down (UP 1/2), as HAProxy's health checks see it."""
        return self.status.startswith("UP")

    @property
    def resolved(self) -> bool:
        """A server-template slot that has an address (a task behind it); else MAINT."""
        return not self.status.startswith("MAINT")


@dataclass(frozen=True)
class Reading:
    """What one proxy replica counted, at one moment (`parse_stat`'s lines)."""

    replica: Replica
    servers: tuple[Server, ...]

    def backend(self, name: str) -> tuple[Server, ...]:
        """The servers of backend `name` (its BACKEND line left out)."""
        return tuple(s for s in self.servers if s.backend == name and s.name != "BACKEND")

    def unserved(self, name: str) -> int:
        """Requests of backend `name` that HAProxy answered itself, no server taking them (a
        503 when none is up): the connection errors of the BACKEND line that are no server's
        (`econ` of a backend: its servers' plus those "not associated with a particular
        server", HAProxy's management guide)."""
        line = next((s for s in self.servers if s.full_name == f"{name}/BACKEND"), None)
        if line is None:
            return 0
        return max(
            0, line.failed_connections - sum(s.failed_connections for s in self.backend(name))
        )

    def counted(self, name: str) -> tuple[Server, ...]:
        """Backend `name`'s servers, and an entry OWN for the requests HAProxy answered itself
        (each one an error): what its requests and errors are made of."""
        own = self.unserved(name)
        entry = Server(name, OWN, "", 0, own, own, 0, 0, 0, 0, 0)
        return self.backend(name) + ((entry,) if own else ())


def _int(value: str) -> int:
    return int(value) if value and value.lstrip("-").isdigit() else 0


def parse_stat(text: str) -> tuple[Server, ...]:
    """`show stat` CSV -> the server lines and each backend's BACKEND line (FRONTEND lines
    left out)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# pxname,"):
        raise ValueError(f"not `show stat` output: {(lines or [''])[0][:80]!r}")
    lines[0] = lines[0][2:]
    return tuple(
        Server(
            backend=row["pxname"],
            name=row["svname"],
            status=row["status"],
            # uweight: the weight set (configured, or by `set weight`); `weight` is the
            # effective one, 0 while a server is in maintenance whatever was set
            weight=_int(row.get("uweight") or row["weight"]),
            requests=_int(row["stot"]),
            responses_5xx=_int(row["hrsp_5xx"]),
            failed_connections=_int(row["econ"]),
            response_errors=_int(row["eresp"]),
            retries=_int(row["wretr"]),
            rtime=_int(row["rtime"]),
            ttime=_int(row["ttime"]),
            answered=_int(row["req_tot"]),
            redispatches=_int(row["wredis"]),
            address=row.get("addr") or "",
        )
        for row in csv.DictReader(lines)
        if row.get("type") in ("1", "2")  # 1: a backend's summary, 2: a server
    )


def replicas(cluster: Cluster, proxy_service: str) -> list[Replica]:
    """The proxy's running tasks, sorted by task ID."""
    manager = cluster.gateway()
    _, _, tasks = services.running_tasks(manager, proxy_service)
    nodes = services.hostnames(manager)
    return sorted(
        (
            Replica(t.id, nodes.get(t.node_id, t.node_id), t.container_id)
            for t in tasks
            if t.state == "running"
        ),
        key=lambda r: r.task,
    )


def _where(replica: Replica) -> str:
    return f"proxy task {replica.task[:12]} on {replica.node}"


def command(cluster: Cluster, replica: Replica, *commands: str) -> list[str]:
    """Each runtime API command's answer, from one replica. ProxyError when it cannot be asked."""
    argv = ["python3", "-c", _CLIENT, SOCKET, *commands]
    try:
        code, out = gateway.exec_in(cluster.client(replica.node), replica.container, argv)
    except Exception as exc:  # APIFailure, a node that went away: this replica cannot be driven
        raise ProxyError(
            f"{_where(replica)} does not answer: {str(exc).splitlines()[0][:160]}"
        ) from None
    if code == 3:
        raise ProxyError(f"{_where(replica)} has no runtime API at {SOCKET}: {_enable()}")
    try:
        answers = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ProxyError(
            f"{_where(replica)}: its runtime API did not answer "
            f"(exit {code}: {out.strip()[-160:] or 'no output'}); {_enable()}"
        ) from None
    return [str(a) for a in answers]


def _enable(line: int = 0, backend: str = "<backend>") -> str:
    """The haproxy.cfg line that enables what was missing: 0 the runtime API, 1 the slots."""
    return "haproxy.cfg needs, in " + ENABLE_LINES[line].replace("<backend>", backend)


def _each(replicas: Sequence[Replica], act: Callable[[Replica], object]) -> list:
    """`act` on every replica at once (a weight set on one and not the others splits traffic
    unevenly for as long as it takes): results in the replicas' order."""
    if not replicas:
        return []
    with ThreadPoolExecutor(max_workers=len(replicas)) as pool:
        return list(pool.map(act, replicas))


def read(cluster: Cluster, replicas: Sequence[Replica]) -> list[Reading]:
    """Every replica's server counters (all backends)."""

    return _each(replicas, lambda r: _reading(r, command(cluster, r, "show stat")[0]))


def wait_up(
    cluster: Cluster,
    replicas: Sequence[Replica],
    wanted: Mapping[str, int],
    prefix: str,
    seconds: float,
) -> list[Reading]:
    """Every replica's counters once it has `wanted[backend]` servers named `prefix`<n> UP in
    each backend, or after `seconds` (the caller tells which from the reading): the waiting is
    done inside each proxy container, all replicas at once."""
    until = json.dumps([{b: [prefix, n] for b, n in wanted.items()}, seconds])
    return _each(
        replicas,
        lambda r: _reading(r, command(cluster, r, "--until", until, "show stat")[0]),
    )


def _reading(replica: Replica, answer: str) -> Reading:
    try:
        return Reading(replica, parse_stat(answer))
    except ValueError as exc:
        raise ProxyError(f"{_where(replica)}: `show stat` refused: {exc}") from None


def set_weights(
    cluster: Cluster, weights: Mapping[Replica, Mapping[str, int | str]], then_read: bool = False
) -> list[Reading]:
    """`set weight BACKEND/SERVER W` on each replica, all replicas at once (W: 0-256, or "100%"
    for the configured weight). An answer other than silence is HAProxy refusing it (no such
    server, no admin level): ProxyError naming it. `then_read`: each replica's counters right
    after, in the same exec (one round trip less when a step starts), in `weights`' order."""

    def one(replica: Replica) -> Reading | None:
        cmds = [f"set weight {server} {w}" for server, w in weights[replica].items()]
        answers = command(cluster, replica, *cmds, *(["show stat"] if then_read else []))
        for cmd, answer in zip(cmds, answers, strict=False):
            if answer.strip():
                raise ProxyError(f"{_where(replica)} refused `{cmd}`: {answer.strip()[:160]}")
        return _reading(replica, answers[-1]) if then_read else None

    return [r for r in _each(list(weights), one) if r is not None]


def servers_named(reading: Reading, backend: str, prefix: str) -> tuple[Server, ...]:
    """The servers of `backend` whose name starts with `prefix` (a server-template's slots:
    canary1, canary2...)."""
    return tuple(
        s
        for s in reading.backend(backend)
        if s.name.startswith(prefix) and s.name[len(prefix) :].isdigit()
    )


def check(cluster: Cluster, replicas: Sequence[Replica], backend: str, slots: str) -> list[Reading]:
    """Each replica answers, is HAProxy with an admin-level runtime API, and has `backend` with
    the server-template `slots` (e.g. canary); ProxyError naming the haproxy.cfg lines otherwise.
    Nothing that serves changes: the admin level is proven by setting the first slot's weight to
    0 (a canary slot takes no traffic until its step), in the same exec as the reading, on every
    replica at once: one exec per replica, where a reading and a proof in turn took two."""
    if not replicas:
        raise ProxyError("the proxy service runs no task")
    proof = f"set weight {backend}/{slots}1 0"

    def one(replica: Replica) -> tuple[Reading, str]:
        answers = command(cluster, replica, "show stat", proof)
        return _reading(replica, answers[0]), (answers[1:] or [""])[0].strip()

    checked = _each(replicas, one)
    for reading, refused in checked:
        where = _where(reading.replica)
        if not reading.backend(backend):
            raise ProxyError(f"{where} has no backend {backend}: {_enable(1, backend)}")
        own = servers_named(reading, backend, slots)
        if not own:
            raise ProxyError(
                f"{where}: backend {backend} has no {slots}N servers: {_enable(1, backend)}"
            )
        if refused and own[0].name == f"{slots}1":  # "Permission denied": not admin level
            raise ProxyError(f"{where} refused `{proof}`: {refused[:160]}; {_enable()}")
        if refused:  # the template numbers its slots from elsewhere: prove it on the first
            try:
                set_weights(cluster, {reading.replica: {own[0].full_name: 0}})
            except ProxyError as exc:
                raise ProxyError(f"{exc}; {_enable()}") from None
    return [reading for reading, _ in checked]


def totals(servers: Iterable[Server]) -> Counters:
    """The counters of some servers, added up."""
    counters = [s.counters for s in servers]
    return Counters(
        sum(c.requests for c in counters),
        sum(c.errors for c in counters),
        sum(c.answered for c in counters),
        sum(c.lifelong for c in counters),
    )
