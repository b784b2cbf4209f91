"""Pure logic of the docker-machine and ssh providers: parsing, plans, messages. Their real
behaviour is proven end to end in tests/integration/test_5_providers.py."""

from __future__ import annotations

import io
import stat
import subprocess
import tarfile
from pathlib import Path

import paramiko
import pytest

from cdtasks import config, engine, workspace
from cdtasks.providers import ProviderError, for_settings
from cdtasks.providers.machine import MachineProvider, parse_config, parse_env, parse_ls
from cdtasks.providers.ssh import SshProvider, parse_route_source, parse_version


def _settings(tmp_path, **overrides):
    return config.load("test", {"STATE_DIR": str(tmp_path), **overrides}, environ={})


# -- config -----------------------------------------------------------------------------------
def test_ssh_hosts_parse(tmp_path):
    s = _settings(
        tmp_path,
        PROVIDER="ssh",
        SSH_HOSTS="swarm-test-1=deploy@10.0.0.1:2222,"
        "swarm-test-2=10.0.0.2,swarm-test-3=[fd00::3]:22",
        SSH_USER="ops",
    )
    assert s.ssh.ssh_hosts == (
        ("swarm-test-1", "deploy", "10.0.0.1", 2222),
        ("swarm-test-2", "", "10.0.0.2", 22),
        ("swarm-test-3", "", "fd00::3", 22),
    )
    prov = for_settings(s)
    assert isinstance(prov, SshProvider)
    assert prov.where("swarm-test-2") == "ops@10.0.0.2:22"
    ep = prov.endpoint("swarm-test-1", "10.0.0.1")
    assert ep.docker_host == "ssh://deploy@10.0.0.1:2222" and ep.cert_path is None and ep.via_ssh
    assert ep.env() == {"DOCKER_HOST": "ssh://deploy@10.0.0.1:2222"}


def test_a_host_may_have_its_own_key_file(tmp_path):
    s = _settings(
        tmp_path,
        PROVIDER="ssh",
        SSH_KEY="~/.ssh/team",
        SSH_HOSTS="swarm-test-1=h1,swarm-test-2=h2,swarm-test-3=h3",
        SSH_KEYS="swarm-test-3=~/.ssh/old-host",
    )
    prov = for_settings(s)
    assert prov.endpoint("swarm-test-3").ssh_key == Path("~/.ssh/old-host").expanduser()
    assert prov.endpoint("swarm-test-1").ssh_key == Path("~/.ssh/team").expanduser()
    for value, culprit in (
        ("swarm-test-9=/k", "'swarm-test-9', which is not in NODES"),
        ("swarm-test-1", "'swarm-test-1' is not node=path"),
    ):
        with pytest.raises(config.ConfigError) as exc:
            _settings(tmp_path, SSH_KEYS=value)
        assert "SSH_KEYS" in str(exc.value) and culprit in str(exc.value)


@pytest.mark.parametrize(
    "value, culprit",
    [
        ("swarm-test-1=h:99999", "swarm-test-1=h:99999"),
        ("swarm-test-1", "'swarm-test-1' is not node=[user@]host[:port]"),
        ("swarm-test-1=a,swarm-test-1=b", "listed twice"),
        (
            "nosuch=a,swarm-test-1=a,swarm-test-2=b,swarm-test-3=c",
            "'nosuch', which is not in NODES",
        ),
        ("swarm-test-1=a", "needs an SSH address for swarm-test-2, swarm-test-3"),
    ],
)
def test_bad_ssh_hosts_are_named(tmp_path, value, culprit):
    with pytest.raises(config.ConfigError) as exc:
        _settings(tmp_path, PROVIDER="ssh", SSH_HOSTS=value)
    assert "SSH_HOSTS" in str(exc.value) and culprit in str(exc.value)


def test_machine_options_are_shell_words(tmp_path):
    s = _settings(
        tmp_path,
        PROVIDER="docker-machine",
        MACHINE_OPTIONS="--engine-label 'team=a b' --virtualbox-memory 2048",
    )
    assert s.machine.machine_options == (
        "--engine-label",
        "team=a b",
        "--virtualbox-memory",
        "2048",
    )
    with pytest.raises(config.ConfigError, match="MACHINE_OPTIONS"):
        _settings(tmp_path, MACHINE_OPTIONS="--engine-label 'open")


@pytest.mark.parametrize("provider", ["docker-machine", "ssh"])
def test_example_env_files_are_valid(provider):
    env_dir = Path(__file__).resolve().parents[2] / "env" / "examples" / provider
    for env in ("test", "prod"):
        s = config.load(env, environ={"CDTASKS_ENV_DIR": str(env_dir)})
        assert s.cluster.provider == provider and s.env == env


def test_unknown_provider(tmp_path):
    with pytest.raises(config.ConfigError, match="PROVIDER='vagrant'"):
        _settings(tmp_path, PROVIDER="vagrant")


# -- docker-machine ---------------------------------------------------------------------------
LS = "swarm-test-1|Running|\nswarm-test-2|Stopped|\nswarm-test-3|Error|machine does not exist\n"
ENV = """export DOCKER_TLS_VERIFY="1"
export DOCKER_HOST="tcp://192.168.99.100:2376"
export DOCKER_CERT_PATH="/home/u/.docker/machine/machines/swarm-test-1"
export DOCKER_MACHINE_NAME="swarm-test-1"
# Run this command to configure your shell:
# eval $(docker-machine env swarm-test-1)
"""


CONFIG = """--tlsverify
--tlscacert="/home/u/.docker/machine/certs/ca.pem"
--tlscert="/home/u/.docker/machine/certs/cert.pem"
--tlskey="/home/u/.docker/machine/certs/key.pem"
-H=tcp://192.168.99.100:2376
"""


def test_parse_ls_and_env():
    assert parse_ls(LS) == {
        "swarm-test-1": ("Running", ""),
        "swarm-test-2": ("Stopped", ""),
        "swarm-test-3": ("Error", "machine does not exist"),
    }
    assert parse_env(ENV)["DOCKER_HOST"] == "tcp://192.168.99.100:2376"
    assert parse_env(ENV)["DOCKER_CERT_PATH"].endswith("machines/swarm-test-1")
    assert parse_config(CONFIG) == {
        "tlsverify": "",
        "tlscacert": "/home/u/.docker/machine/certs/ca.pem",
        "tlscert": "/home/u/.docker/machine/certs/cert.pem",
        "tlskey": "/home/u/.docker/machine/certs/key.pem",
        "host": "tcp://192.168.99.100:2376",
    }


class FakeMachine:
    """Records docker-machine calls and answers from a table (no machine involved)."""

    def __init__(self, ls: str, fail: dict | None = None, config: str = CONFIG):
        self.ls, self.fail, self.calls, self.envs = ls, fail or {}, [], []
        self.config = config

    def __call__(self, argv, env, timeout):
        self.calls.append(list(argv[1:]))
        self.envs.append(env)
        cmd = argv[1]
        if cmd in self.fail:
            return subprocess.CompletedProcess(argv, 1, "", self.fail[cmd])
        out = {"ls": self.ls, "ip": "192.168.99.100\n", "env": ENV, "config": self.config}.get(
            cmd, ""
        )
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_machine_ensure_creates_the_missing_starts_the_stopped(tmp_path):
    fake = FakeMachine("swarm-test-1|Running|\nswarm-test-2|Stopped|\n")
    s = _settings(tmp_path, PROVIDER="docker-machine", MACHINE_OPTIONS="--virtualbox-memory 2048")
    eps = MachineProvider(s, run=fake).ensure(s.cluster.nodes, lambda m: None)
    assert [
        "create",
        "-d",
        "virtualbox",
        "--virtualbox-memory",
        "2048",
        "swarm-test-3",
    ] in fake.calls
    assert ["start", "swarm-test-2"] in fake.calls
    assert not any(c[0] in ("create", "start") and c[-1] == "swarm-test-1" for c in fake.calls)
    create_env = fake.envs[
        fake.calls.index(
            ["create", "-d", "virtualbox", "--virtualbox-memory", "2048", "swarm-test-3"]
        )
    ]
    # The book's share folder: registry storage and workspace, at the same path in the VMs.
    assert create_env["VIRTUALBOX_SHARE_FOLDER"] == f"{tmp_path}:{tmp_path}"
    # Made private; the VMs' root still reads and writes them.
    for d in (s.registry.registry_dir, s.delivery.workspace_dir, s.delivery.workspace_dir.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    ep = eps["swarm-test-1"]
    assert ep.address == "192.168.99.100" and ep.docker_host == "tcp://192.168.99.100:2376"
    assert ep.cert_path == Path("/home/u/.docker/machine/certs")  # from `config`
    assert ep.shell == ("docker-machine", "ssh", "swarm-test-1")


def test_machine_env_is_docker_machines_own(tmp_path):
    fake = FakeMachine("swarm-test-1|Running|\n")
    s = _settings(tmp_path, PROVIDER="docker-machine")
    prov = MachineProvider(s, run=fake)
    ep = prov.endpoints(["swarm-test-1"])["swarm-test-1"]
    assert prov.exports(ep)["DOCKER_MACHINE_NAME"] == "swarm-test-1"
    assert ["env", "--shell", "bash", "swarm-test-1"] in fake.calls


def test_machine_config_with_scattered_tls_files_is_refused(tmp_path):
    fake = FakeMachine(
        "swarm-test-1|Running|\n", config=CONFIG.replace("certs/key.pem", "keys/client-key.pem")
    )
    s = _settings(tmp_path, PROVIDER="docker-machine")
    with pytest.raises(
        ProviderError,
        match="machine swarm-test-1: `docker-machine config` names "
        "TLS files .*; expected ca.pem, cert.pem and key.pem",
    ):
        MachineProvider(s, run=fake).endpoints(["swarm-test-1"])


def test_machine_in_error_is_refused_before_anything_changes(tmp_path):
    fake = FakeMachine(LS)
    s = _settings(tmp_path, PROVIDER="docker-machine")
    with pytest.raises(ProviderError) as exc:
        MachineProvider(s, run=fake).ensure(s.cluster.nodes, lambda m: None)
    assert "machine swarm-test-3 is in state Error (machine does not exist)" in str(exc.value)
    assert [c[0] for c in fake.calls] == ["ls"]


def test_failed_create_names_the_machine_and_docker_machines_words(tmp_path):
    fake = FakeMachine(
        "swarm-test-1|Running|\nswarm-test-2|Running|\n",
        fail={
            "create": "Error creating machine: Error in driver during machine "
            "creation: quota exceeded"
        },
    )
    s = _settings(tmp_path, PROVIDER="docker-machine", MACHINE_DRIVER="amazonec2")
    prov = MachineProvider(s, run=fake)
    assert not prov.shares_workspace  # a cloud VM cannot see this machine's directories
    with pytest.raises(ProviderError) as exc:
        prov.ensure(s.cluster.nodes, lambda m: None)
    assert str(exc.value) == (
        "machine swarm-test-3: `docker-machine create -d amazonec2` failed: "
        "Error creating machine: Error in driver during machine creation: "
        "quota exceeded"
    )
    assert "VIRTUALBOX_SHARE_FOLDER" not in fake.envs[-1]


def test_missing_docker_machine_binary(tmp_path):
    def missing(argv, env, timeout):
        raise FileNotFoundError(argv[0])

    s = _settings(tmp_path, PROVIDER="docker-machine")
    with pytest.raises(ProviderError, match="`docker-machine` is not on PATH"):
        MachineProvider(s, run=missing).endpoints(s.cluster.nodes)


# -- ssh --------------------------------------------------------------------------------------
def test_parse_version_and_route():
    assert parse_version("20.10.24+dfsg1\n") == (20, 10)
    assert parse_version("27.3.1") == (27, 3)
    with pytest.raises(ValueError):
        parse_version("")
    route = "1.1.1.1 via 172.18.0.1 dev eth0 src 172.18.0.3 uid 0 \\    cache "
    assert parse_route_source(route) == "172.18.0.3"
    assert parse_route_source("RTNETLINK answers: Network is unreachable") is None


class FakeConn:
    def __init__(self, answers):
        self.answers, self.ran = answers, []

    def run(self, cmd, **kw):
        self.ran.append(cmd)
        code, out, err = next(
            (v for k, v in self.answers.items() if cmd.startswith(k)), (0, "", "")
        )
        return type("R", (), {"ok": code == 0, "exited": code, "stdout": out, "stderr": err})()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize(
    "answers, message",
    [
        (
            {"docker version": (127, "", "bash: docker: command not found")},
            "Docker is not installed: bash: docker: command not found",
        ),
        (
            {
                "docker version": (
                    1,
                    "",
                    "permission denied while trying to connect to the Docker daemon",
                )
            },
            "Docker does not answer: permission denied",
        ),
        ({"docker version": (0, "19.03.5\n", "")}, "Docker 19.03.5 is too old: 20.10 or newer"),
        ({"docker version": (0, "24.0.7\n", ""), "ip -4": (2, "", "")}, "set NODE_ADDRESSES"),
    ],
)
def test_host_checks_name_the_host(tmp_path, monkeypatch, answers, message):
    s = _settings(
        tmp_path, PROVIDER="ssh", SSH_HOSTS="swarm-test-1=u@h1:2201,swarm-test-2=h2,swarm-test-3=h3"
    )
    monkeypatch.setattr(engine, "ssh", lambda ep: FakeConn(answers))
    with pytest.raises(ProviderError) as exc:
        SshProvider(s).ensure(["swarm-test-1"], lambda m: None)
    assert str(exc.value).startswith("host swarm-test-1 (u@h1:2201): ")
    assert message in str(exc.value)


def test_host_check_returns_the_swarm_address_and_prepares_the_registry_dir(tmp_path, monkeypatch):
    s = _settings(
        tmp_path,
        PROVIDER="ssh",
        SSH_HOSTS="swarm-test-1=h1,swarm-test-2=h2,swarm-test-3=h3",
        NODE_ADDRESSES="swarm-test-3=10.9.9.9",
    )
    conn = FakeConn(
        {
            "docker version": (0, "24.0.7\n", ""),
            "ip -4": (0, "1.1.1.1 via 10.0.0.1 dev eth0 src 10.0.0.7 uid 0", ""),
        }
    )
    monkeypatch.setattr(engine, "ssh", lambda ep: conn)
    eps = SshProvider(s).ensure(s.cluster.nodes, lambda m: None)
    assert eps["swarm-test-1"].address == "10.0.0.7"
    assert eps["swarm-test-3"].address == "10.9.9.9"  # configured wins over detected
    assert f"mkdir -p -m 700 {s.registry.registry_dir}" in conn.ran
    # Later tasks find the addresses without asking the hosts again.
    monkeypatch.setattr(engine, "ssh", lambda ep: pytest.fail("asked a host"))
    assert SshProvider(s).endpoints(s.cluster.nodes)["swarm-test-2"].address == "10.0.0.7"


# -- host keys --------------------------------------------------------------------------------
def test_host_key_messages_give_the_fingerprint_and_the_fix(tmp_path):
    key = paramiko.Ed25519Key.from_private_key_file(str(_ed25519(tmp_path / "k1")))
    other = paramiko.Ed25519Key.from_private_key_file(str(_ed25519(tmp_path / "k2")))
    fp = engine.fingerprint(key)
    assert fp.startswith("SHA256:") and not fp.endswith("=") and len(fp) == 50
    unknown = engine.UnknownHostKey("10.0.0.1", 2201, key, Path("/k/known_hosts"))
    assert str(unknown) == (
        f"host key of [10.0.0.1]:2201 is not in /k/known_hosts (ssh-ed25519 "
        f"{fp}); if that is the host's key, trust it with: ssh-keyscan -p "
        f"2201 10.0.0.1 >> /k/known_hosts"
    )
    changed = engine.HostKeyChanged(
        paramiko.BadHostKeyException("h1", key, other), 22, Path("/k/known_hosts")
    )
    assert isinstance(changed, paramiko.BadHostKeyException)
    assert str(changed) == (
        f"host key of h1 CHANGED: it offers {fp}, /k/known_hosts expects "
        f"{engine.fingerprint(other)}; if the host was rebuilt, forget the "
        f"old key with: ssh-keygen -R h1 -f /k/known_hosts"
    )


def test_a_host_key_problem_is_not_taken_for_an_absent_manager(tmp_path, monkeypatch):
    """The gateway's probe skips managers that do not answer, but a refused host key stops it
    with the key's own message (what `inv status` and `inv deploy` print)."""
    from cdtasks.cluster import Cluster

    s = _settings(
        tmp_path, PROVIDER="ssh", SSH_HOSTS="swarm-test-1=h1,swarm-test-2=h2,swarm-test-3=h3"
    )
    c = Cluster.of(s)
    c.endpoints = {n: c.provider.endpoint(n, "10.0.0.1") for n in s.cluster.nodes}
    key = paramiko.Ed25519Key.from_private_key_file(str(_ed25519(tmp_path / "k1")))
    other = paramiko.Ed25519Key.from_private_key_file(str(_ed25519(tmp_path / "k2")))
    tried = []

    def answer(refusal):
        def client(ep, **kwargs):
            tried.append(ep.node)
            raise refusal(ep)

        return client

    monkeypatch.setattr(engine, "client", answer(lambda ep: engine.EngineError("gone")))
    with pytest.raises(engine.EngineError, match="no manager of test answers"):
        c.gateway().manager_name()
    assert tried == list(s.cluster.nodes)
    for refusal in (
        lambda ep: engine.UnknownHostKey(ep.ssh_host, 22, key, s.ssh.ssh_known_hosts),
        lambda ep: engine.HostKeyChanged(
            paramiko.BadHostKeyException(ep.ssh_host, key, other), 22, s.ssh.ssh_known_hosts
        ),
    ):
        tried.clear()
        monkeypatch.setattr(engine, "client", answer(refusal))
        with pytest.raises(paramiko.SSHException) as exc:
            c.gateway().manager_name()
        assert tried == ["swarm-test-1"] and "host key of h1" in str(exc.value)
        assert engine.fingerprint(key) in str(exc.value)


def _ed25519(path: Path) -> Path:
    from cdtasks.providers.certs import ssh_keypair

    ssh_keypair(path)
    return path


# -- workspace --------------------------------------------------------------------------------
def test_workspace_archive_leaves_git_out(tmp_path):
    checkout = tmp_path / "go-demo-x"
    (checkout / ".git" / "objects").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref")
    (checkout / "demo").mkdir()
    (checkout / "demo" / "compose.yml").write_text("services: {}")
    (checkout / ".gitignore").write_text("*.pyc")
    with tarfile.open(fileobj=io.BytesIO(workspace._archive(checkout))) as archive:
        names = archive.getnames()
    assert sorted(names) == [
        "go-demo-x",
        "go-demo-x/.gitignore",
        "go-demo-x/demo",
        "go-demo-x/demo/compose.yml",
    ]
