"""Where a cluster's images live. The book's way: the `registry` service of each cluster,
reachable as localhost:PORT on every node, storing into the directory both clusters share, so
an image pushed through one is pullable through the other. Or your own registry (REGISTRY_URL):
no service; every node gets its CA and logs in to it, and both clusters push and pull there."""

from __future__ import annotations

import hashlib
import secrets
import shlex
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import bcrypt

from . import engine, gateway, state

# Settings whole: the registry section, and the state directory (cluster) where the
# credentials live
from .config import Settings
from .services import ServiceSpec, with_routing

NAME = "registry"
DATA = "/var/lib/registry"
USER = "cdtasks"
HTPASSWD = "htpasswd"  # the secret's file in /run/secrets/
LABELS = (("io.cdtasks.role", "registry"),)
# The registry checks the bcrypt hash on every request (a push makes dozens): the fewest rounds
# keep that cheap, and a 256-bit random password needs no key stretching.
ROUNDS = 4
CERTS_D = "/etc/docker/certs.d"  # an engine trusts DIR/HOST:PORT/ca.crt for that registry
_generating = threading.Lock()


@dataclass(frozen=True)
class Credentials:
    """The registry's only user: what clients log in with, and its htpasswd line."""

    username: str
    password: str = field(repr=False)
    htpasswd: bytes = field(repr=False)

    @property
    def secret_name(self) -> str:
        """Swarm secrets are immutable: other credentials get another name (and the registry
        another spec)."""
        return f"{NAME}-{HTPASSWD}-{hashlib.sha256(self.htpasswd).hexdigest()[:10]}"


def auth_dir(settings: Settings) -> Path:
    """Where the credentials live: beside the other state, shared by every cluster of it."""
    return settings.cluster.state_dir / "registry-auth"


def credentials(settings: Settings) -> Credentials:
    """The registry's user and password for this STATE_DIR, made on first use: `password`
    (random) and `htpasswd` (its bcrypt hash), both 0600 in a 0700 directory. Runs that start
    together agree: the first file written wins."""
    d = auth_dir(settings)
    with _generating:
        state.create_private(d / "password", (secrets.token_urlsafe(32) + "\n").encode())
        password = (d / "password").read_text().strip()
        if not state.create_private(d / HTPASSWD, _htpasswd(password)) and not _matches(
            d / HTPASSWD, password
        ):
            state.write_private(d / HTPASSWD, _htpasswd(password))  # password replaced by hand
        return Credentials(USER, password, (d / HTPASSWD).read_bytes())


def _htpasswd(password: str) -> bytes:
    return f"{USER}:".encode() + bcrypt.hashpw(password.encode(), bcrypt.gensalt(ROUNDS)) + b"\n"


def _matches(htpasswd: Path, password: str) -> bool:
    user, _, hashed = htpasswd.read_bytes().strip().partition(b":")
    try:
        return user == USER.encode() and bcrypt.checkpw(password.encode(), hashed)
    except ValueError:  # not a bcrypt hash
        return False


def external(settings: Settings) -> bool:
    """Your own registry (REGISTRY_URL) instead of a registry service per cluster."""
    return bool(settings.registry.registry_url)


def logins(settings: Settings) -> dict[str, tuple[str, str]]:
    """{HOST:PORT: (user, password)} for the clients of the cluster's nodes."""
    r = settings.registry
    if external(settings):
        if r.registry_password_file is None:
            return {}
        return {server(settings): (r.registry_user, r.registry_password_file.read_text().strip())}
    creds = credentials(settings)
    return {server(settings): (creds.username, creds.password)}


def ca_command(settings: Settings) -> str:
    """A node's shell command that puts REGISTRY_CA_FILE where its engine looks for it (read
    at each connection: no restart), printing `changed` when it did. Through sudo where the SSH
    user is not root (servers of the ssh provider, docker-machine's VMs)."""
    target, ca_file = f"{CERTS_D}/{server(settings)}", settings.registry.registry_ca_file
    pem = ca_file.read_text() if ca_file else ""
    script = (
        f"mkdir -p {shlex.quote(target)} && cd {shlex.quote(target)} && "
        f"printf %s {shlex.quote(pem)} > ca.crt.new && chmod 644 ca.crt.new && "
        f"if cmp -s ca.crt.new ca.crt; then rm ca.crt.new; "
        f"else mv ca.crt.new ca.crt && echo changed; fi"
    )
    return (
        f'if [ "$(id -u)" = 0 ]; then sh -c {shlex.quote(script)}; '
        f"else sudo -n sh -c {shlex.quote(script)}; fi"
    )


def prepare_node(endpoint: engine.Endpoint, client, settings: Settings) -> list[str]:
    """Your own registry on one node: its CA (when REGISTRY_CA_FILE is set), then a login
    from the node's engine, which proves the CA, the address and the password before any
    release needs them. Nothing is stored on the node: every push, pull and service update
    sends the login (engine.client)."""
    done, where = [], server(settings)
    if settings.registry.registry_ca_file:
        with engine.ssh(endpoint) as conn:
            result = conn.run(ca_command(settings), hide=True, warn=True)
        if not result.ok:
            said = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
            raise engine.EngineError(
                f"{endpoint.node}: cannot write {CERTS_D}/{where}/ca.crt: {said[0][:200]}"
            )
        if "changed" in result.stdout:
            done.append(f"gave {endpoint.node} the CA of {where}")
    for registry_server, (user, password) in logins(settings).items():
        try:
            gateway.login(client, user, password, registry_server)
        except gateway.APIFailure as exc:
            reason = str(exc).replace(password, "***").strip()
            raise engine.EngineError(
                f"{endpoint.node} cannot log in to {registry_server} as "
                f"{user}: {reason.splitlines()[0][:300]}"
            ) from None
    return done


def ensure_secret(manager, settings: Settings, log) -> list[str]:
    """The htpasswd file as a Swarm secret of the cluster, created once per content."""
    creds = credentials(settings)
    if creds.secret_name in manager.secrets():
        return []
    log(f"creating secret {creds.secret_name} (the registry's {HTPASSWD})")
    manager.create_secret(creds.secret_name, creds.htpasswd, labels=dict(LABELS))
    return [f"created secret {creds.secret_name}"]


def spec(settings: Settings, routing: str) -> ServiceSpec:
    """The book's registry service. With the routing mesh, one replica published on every node
    (`-p 5000:5000`); without IPVS, a task on every node publishing in host mode instead.
    Only the tool's user may push or pull (htpasswd from a Swarm secret; the registry accepts
    basic auth over plain HTTP, and engines send it to localhost registries). Deletes stay
    off: `inv destroy --purge` empties the directory itself."""
    port = settings.registry.registry_port
    base = ServiceSpec(
        name=NAME,
        image=settings.registry.registry_image,
        replicas=1,
        env=(
            f"REGISTRY_HTTP_ADDR=:{port}",
            "REGISTRY_AUTH=htpasswd",
            f"REGISTRY_AUTH_HTPASSWD_REALM={NAME}",
            f"REGISTRY_AUTH_HTPASSWD_PATH=/run/secrets/{HTPASSWD}",
            "REGISTRY_STORAGE_DELETE_ENABLED=false",
        ),
        reserve_mb=settings.registry.registry_reserve_mb,
        mounts=(f"type=bind,source={settings.registry.registry_dir},target={DATA}",),
        ports=((port, port, "ingress"),),
        secrets=((credentials(settings).secret_name, HTPASSWD),),
        labels=LABELS,
    )
    if routing == "dnsrr":
        base = replace(base, replicas=None)
    return with_routing(base, routing)


def address(settings: Settings) -> str:
    """The registry as every node's engine names it, with the path images go under:
    REGISTRY_URL (HOST:PORT[/PATH]), or the service's localhost:PORT."""
    return settings.registry.registry_url or f"localhost:{settings.registry.registry_port}"


def server(settings: Settings) -> str:
    """HOST:PORT of the registry: what logins and CA directories are keyed by."""
    return address(settings).partition("/")[0]


def local_ref(settings: Settings, name: str, version: str = "", digest: str = "") -> str:
    """The one owner of how every node of the cluster names an image in its registry:
    ADDRESS/NAME[:VERSION][@DIGEST], e.g. localhost:5000/go-demo:1.1 or
    registry.example.org:443/team/go-demo:1.1."""
    return (
        f"{address(settings)}/{name}"
        + (f":{version}" if version else "")
        + (f"@{digest}" if digest else "")
    )


def repository(ref: str) -> str:
    """The repository of an image reference, without tag and digest:
    `localhost:5000/go-demo:1.1@sha256:…` -> `localhost:5000/go-demo`."""
    name = ref.partition("@")[0]
    head, colon, tag = name.rpartition(":")
    return head if colon and "/" not in tag else name
