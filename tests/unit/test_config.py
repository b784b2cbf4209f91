"""config.load: env files, precedence, validation and the Settings object (no engine, no network)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cdtasks import config
from cdtasks.config import ConfigError, load, pinned_image

REPO = Path(__file__).resolve().parents[2]


def write_env(directory: Path, name: str, text: str = "") -> Path:
    path = directory / f"{name}.env"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, overrides=None, environ=None, name: str = "test"):
    write_env(tmp_path, name, text)
    return load(name, overrides, environ={} if environ is None else environ, env_dir=tmp_path)


# -- defaults -------------------------------------------------------------------------------------
def test_empty_file_gives_the_documented_defaults(tmp_path):
    s = load_text(tmp_path, "")
    assert s.env == "test"
    assert s.source == str(tmp_path / "test.env")
    assert s.provider == "lab"
    assert s.lab_name == "cdtasks"
    assert s.state_dir == Path("~/.cdtasks").expanduser()
    assert s.nodes == ("swarm-test-1", "swarm-test-2", "swarm-test-3")
    assert s.workers == ()
    assert s.node_labels == ()
    assert s.cd_node == "swarm-test-1"
    assert s.registry_image == "cdtasks/registry-slim:2.8.2"
    assert s.registry_port == 5000 and isinstance(s.registry_port, int)
    assert s.registry_reserve_mb == 100
    # REGISTRY_DIR empty: the registry lives under STATE_DIR
    assert s.registry_dir == s.state_dir / "registry"
    assert s.routing == "auto"
    assert s.lab_port_base == 0


def test_every_default_passes_its_own_parser():
    for spec in config.KEYS.values():
        spec.parse(spec.default)  # raises on a bad default


def test_registry_dir_set_explicitly_is_kept(tmp_path):
    s = load_text(tmp_path, f"STATE_DIR={tmp_path / 'state'}\nREGISTRY_DIR={tmp_path / 'shared'}\n")
    assert s.state_dir == tmp_path / "state"
    assert s.registry_dir == tmp_path / "shared"


def test_registry_dir_follows_state_dir_when_empty(tmp_path):
    s = load_text(tmp_path, f"STATE_DIR={tmp_path / 'state'}\nREGISTRY_DIR=\n")
    assert s.registry_dir == tmp_path / "state" / "registry"


def test_comments_and_values_are_read_from_the_file(tmp_path):
    s = load_text(tmp_path, "# a comment\nNODES=a-1,b-2\nCD_NODE=b-2\nREGISTRY_PORT=5001\n")
    assert s.nodes == ("a-1", "b-2")
    assert s.cd_node == "b-2"
    assert s.registry_port == 5001
    assert s.raw["NODES"] == "a-1,b-2"


# -- precedence -----------------------------------------------------------------------------------
def test_precedence_flag_over_environment_over_file_over_default(tmp_path):
    write_env(tmp_path, "test", "REGISTRY_PORT=5001\n")
    environ = {"CDTASKS_REGISTRY_PORT": "5002"}
    flags = {"REGISTRY_PORT": 5003}

    assert load("test", flags, environ=environ, env_dir=tmp_path).registry_port == 5003
    assert load("test", None, environ=environ, env_dir=tmp_path).registry_port == 5002
    assert load("test", None, environ={}, env_dir=tmp_path).registry_port == 5001
    write_env(tmp_path, "test", "")
    assert load("test", None, environ={}, env_dir=tmp_path).registry_port == 5000


def test_flag_given_as_none_does_not_override(tmp_path):
    write_env(tmp_path, "test", "ROUTING=dnsrr\n")
    s = load("test", {"ROUTING": None}, environ={"CDTASKS_ROUTING": "mesh"}, env_dir=tmp_path)
    assert s.routing == "mesh"
    s = load("test", {"ROUTING": None}, environ={}, env_dir=tmp_path)
    assert s.routing == "dnsrr"


def test_environment_variable_without_prefix_is_ignored(tmp_path):
    s = load_text(tmp_path, "", environ={"REGISTRY_PORT": "6000", "ROUTING": "dnsrr"})
    assert s.registry_port == 5000
    assert s.routing == "auto"


def test_values_of_different_keys_come_from_different_layers(tmp_path):
    write_env(tmp_path, "test", "NODES=n1,n2,n3\nCD_NODE=n1\nROUTING=mesh\n")
    s = load("test", {"CD_NODE": "n3"}, environ={"CDTASKS_WORKERS": "n2"}, env_dir=tmp_path)
    assert s.nodes == ("n1", "n2", "n3")  # file
    assert s.workers == ("n2",)  # process environment
    assert s.cd_node == "n3"  # flag
    assert s.routing == "mesh"  # file
    assert s.registry_port == 5000  # default


# -- environments ---------------------------------------------------------------------------------
def test_unknown_environment_lists_valid_names(tmp_path):
    write_env(tmp_path, "test")
    write_env(tmp_path, "prod")
    with pytest.raises(ConfigError) as exc:
        load("staging", environ={}, env_dir=tmp_path)
    msg = str(exc.value)
    assert "'staging'" in msg
    assert "prod, test" in msg


def test_missing_env_dir_says_there_are_none(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=missing)
    assert "none in" in str(exc.value)
    assert str(missing) in str(exc.value)


def test_env_dir_without_env_files(tmp_path):
    (tmp_path / "test.txt").write_text("NODES=a\n")
    with pytest.raises(ConfigError, match="none in"):
        load("test", environ={}, env_dir=tmp_path)


def test_environments_lists_stems_sorted(tmp_path):
    for name in ("prod", "test", "alpha"):
        write_env(tmp_path, name)
    (tmp_path / "notes.md").write_text("")
    assert config.environments(tmp_path) == ["alpha", "prod", "test"]


# -- validation -----------------------------------------------------------------------------------
def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write_env(tmp_path, "test", "NODES=a\nCD_NODE=a\nREGISTRY_PROT=5000\n")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=tmp_path)
    assert str(path) in str(exc.value)
    assert "REGISTRY_PROT" in str(exc.value)


@pytest.mark.parametrize("text, key, value", [
    ("REGISTRY_PORT=50x0\n", "REGISTRY_PORT", "50x0"),
    ("REGISTRY_PORT=70000\n", "REGISTRY_PORT", "70000"),
    ("REGISTRY_PORT=0\n", "REGISTRY_PORT", "0"),
    ("REGISTRY_RESERVE_MB=-1\n", "REGISTRY_RESERVE_MB", "-1"),
    ("LAB_PORT_BASE=65001\n", "LAB_PORT_BASE", "65001"),
    ("NODES=swarm-test-1,Swarm_2\n", "NODES", "swarm-test-1,Swarm_2"),
    ("NODES=a,a\n", "NODES", "a,a"),
    ("NODE_LABELS=swarm-test-2 env=prod\n", "NODE_LABELS", "swarm-test-2 env=prod"),
    ("NODE_LABELS=swarm-test-2:env\n", "NODE_LABELS", "swarm-test-2:env"),
    ("ROUTING=ipvs\n", "ROUTING", "ipvs"),
    ("PROVIDER=aws\n", "PROVIDER", "aws"),
    ("LAB_NAME=Lab\n", "LAB_NAME", "Lab"),
    ("CD_NODE=bad_name\n", "CD_NODE", "bad_name"),
    ("REGISTRY_IMAGE=cdtasks/registry\n", "REGISTRY_IMAGE", "cdtasks/registry"),
    ("REGISTRY_IMAGE=cdtasks/registry:latest\n", "REGISTRY_IMAGE", "cdtasks/registry:latest"),
])
def test_malformed_value_names_file_key_and_value(tmp_path, text, key, value):
    path = write_env(tmp_path, "test", text)
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=tmp_path)
    msg = str(exc.value)
    assert str(path) in msg
    assert f"{key}={value!r}" in msg


def test_malformed_value_from_environment_names_the_variable(tmp_path):
    write_env(tmp_path, "test", "")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={"CDTASKS_REGISTRY_PORT": "99999"}, env_dir=tmp_path)
    msg = str(exc.value)
    assert "CDTASKS_REGISTRY_PORT" in msg
    assert "REGISTRY_PORT='99999'" in msg
    assert "outside 1..65535" in msg


def test_malformed_flag_is_reported(tmp_path):
    write_env(tmp_path, "test", "")
    with pytest.raises(ConfigError, match=r"REGISTRY_RESERVE_MB='lots'"):
        load("test", {"REGISTRY_RESERVE_MB": "lots"}, environ={}, env_dir=tmp_path)


@pytest.mark.parametrize("key, value", [
    ("WORKERS", "swarm-test-9"),
    ("CD_NODE", "swarm-9"),
    ("NODE_LABELS", "swarm-test-7:env=prod"),
])
def test_node_names_outside_nodes_are_refused(tmp_path, key, value):
    path = write_env(tmp_path, "test", f"NODES=swarm-test-1,swarm-test-2\n{key}={value}\n")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={}, env_dir=tmp_path)
    msg = str(exc.value)
    assert str(path) in msg
    assert key in msg
    wrong = value.split(":")[0]
    assert repr(wrong) in msg
    assert "not in NODES" in msg


def test_every_node_a_worker_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="needs a manager"):
        load_text(tmp_path, "NODES=a,b\nWORKERS=a,b\nCD_NODE=a\n")


def test_empty_nodes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="NODES is empty"):
        load_text(tmp_path, "NODES=\n")


def test_lists_tolerate_spaces_and_empty_items(tmp_path):
    s = load_text(tmp_path, "NODES= a , b ,,c\nCD_NODE=a\nWORKERS=c,\n"
                            "NODE_LABELS=a:env=prod , b:zone=x.y-1,\n")
    assert s.nodes == ("a", "b", "c")
    assert s.workers == ("c",)
    assert s.node_labels == (("a", "env", "prod"), ("b", "zone", "x.y-1"))


# -- pinned_image ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", [
    "go-demo:1.0",
    "vfarcic/go-demo:2.0",
    "localhost:5000/go-demo:1.0",
    "registry.example.com:443/team/go-demo:1.0-rc1",
    "cdtasks/registry-slim:2.8.2",
    "go-demo@sha256:" + "a" * 64,
    "localhost:5000/go-demo@sha256:" + "b" * 64,
    "go-demo:1.0@sha256:" + "c" * 64,
])
def test_pinned_image_accepts_tags_and_digests(ref):
    assert pinned_image(ref) == ref


@pytest.mark.parametrize("ref, why", [
    ("go-demo", "no tag"),
    ("vfarcic/go-demo", "no tag"),
    ("localhost:5000/go-demo", "no tag"),  # the port is not a tag
    ("go-demo:latest", "latest"),
    ("localhost:5000/go-demo:latest", "latest"),
])
def test_pinned_image_refuses_untagged_and_latest(ref, why):
    with pytest.raises(ValueError, match=why):
        pinned_image(ref)


# -- Settings -------------------------------------------------------------------------------------
def test_settings_is_frozen(tmp_path):
    s = load_text(tmp_path, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.registry_port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.nodes = ("x",)  # type: ignore[misc]


def test_managers_and_leader_follow_workers(tmp_path):
    s = load_text(tmp_path, "NODES=n1,n2,n3,n4\nWORKERS=n1,n3\nCD_NODE=n1\n")
    assert s.managers == ("n2", "n4")
    assert s.leader == "n2"  # the first node is a worker: the first manager leads
    s = load_text(tmp_path, "NODES=n1,n2,n3\nCD_NODE=n1\n")
    assert s.managers == ("n1", "n2", "n3")
    assert s.leader == "n1"


def test_labels_of(tmp_path):
    s = load_text(tmp_path, "NODES=n1,n2\nCD_NODE=n1\n"
                            "NODE_LABELS=n1:env=prod,n1:zone=a,n2:env=prod-like\n")
    assert s.labels_of("n1") == {"env": "prod", "zone": "a"}
    assert s.labels_of("n2") == {"env": "prod-like"}
    assert s.labels_of("n3") == {}


def test_check_node(tmp_path):
    s = load_text(tmp_path, "NODES=n1,n2\nCD_NODE=n1\n")
    assert s.check_node("n2") == "n2"
    with pytest.raises(ConfigError) as exc:
        s.check_node("n9")
    assert "'n9'" in str(exc.value)
    assert "test" in str(exc.value)
    assert "n1, n2" in str(exc.value)


# -- the project's own environments ---------------------------------------------------------------
def test_project_environments_exist():
    assert {"test", "prod"} <= set(config.environments(REPO / "env"))


def test_project_test_env_is_the_books_cd_cluster(monkeypatch):
    monkeypatch.chdir(REPO)
    s = load("test", environ={}, env_dir=Path("env"))
    assert s.nodes == ("swarm-test-1", "swarm-test-2", "swarm-test-3")
    assert s.managers == s.nodes and s.leader == "swarm-test-1"
    assert s.cd_node == "swarm-test-1"
    assert s.labels_of("swarm-test-1") == {}
    assert s.labels_of("swarm-test-2") == {"env": "prod-like"}
    assert s.labels_of("swarm-test-3") == {"env": "prod-like"}
    assert s.registry_port == 5000
    assert s.registry_reserve_mb == 100
    assert pinned_image(s.registry_image) == s.registry_image


def test_project_prod_env_is_the_books_production_cluster(monkeypatch):
    monkeypatch.chdir(REPO)
    s = load("prod", environ={}, env_dir=Path("env"))
    assert s.nodes == ("swarm-1", "swarm-2", "swarm-3")
    assert s.managers == s.nodes and s.leader == "swarm-1"
    for node in s.nodes:
        assert s.labels_of(node) == {"env": "prod"}
    assert s.registry_port == 5000
    assert s.registry_reserve_mb == 100
    assert pinned_image(s.registry_image) == s.registry_image


def test_project_envs_share_the_registry_directory(monkeypatch):
    """Both clusters' registries store into one directory, so an image pushed through one is
    pullable through the other (registry.py's contract)."""
    monkeypatch.chdir(REPO)
    test, prod = (load(e, environ={}, env_dir=Path("env")) for e in ("test", "prod"))
    assert test.registry_dir == prod.registry_dir
    assert test.registry_image == prod.registry_image


# -- where a bad value came from ---------------------------------------------------------------
def test_bad_file_value_is_blamed_on_the_file_when_the_flag_is_unset(tmp_path):
    """An unset flag (None) is no source: the error names the env file the value came from."""
    path = write_env(tmp_path, "test", "REGISTRY_PORT=oops\n")
    with pytest.raises(ConfigError) as exc:
        load("test", {"REGISTRY_PORT": None}, environ={}, env_dir=tmp_path)
    assert str(exc.value).startswith(str(path))
    assert "REGISTRY_PORT='oops'" in str(exc.value)


# -- known defect (documented, not fixed here) ----------------------------------------------------
def test_inconsistent_value_from_environment_is_not_blamed_on_the_file(tmp_path):
    path = write_env(tmp_path, "test", "")
    with pytest.raises(ConfigError) as exc:
        load("test", environ={"CDTASKS_CD_NODE": "swarm-9"}, env_dir=tmp_path)
    assert "'swarm-9'" in str(exc.value)
    assert str(path) not in str(exc.value)


# -- lines of an env file --------------------------------------------------------------------------
@pytest.mark.parametrize("bad, line", [
    ("LAB_NAME=lab\nthis is not a setting\n", 2),
    ("# comment\n\nNODES\n", 3),  # a bare key: dotenv would read it as unset
    ("LAB_NAME=lab\n\nROUTING=\"auto\nSTATE_DIR=x\n", 3),  # unterminated quote swallows the rest
    ("LAB_NAME=lab\n  = value\n", 2)])
def test_a_line_that_is_not_key_value_names_file_and_line(tmp_path, bad, line):
    path = write_env(tmp_path, "test", bad)
    with pytest.raises(ConfigError) as err:
        load("test", environ={}, env_dir=tmp_path)
    assert str(err.value).startswith(f"{path}:{line}: not KEY=VALUE")


def test_a_refused_line_is_not_shown(tmp_path):
    write_env(tmp_path, "test", "REPO https://deploy:s3cr3t@git.example.com/x.git\n")
    with pytest.raises(ConfigError) as err:
        load("test", environ={}, env_dir=tmp_path)
    assert "s3cr3t" not in str(err.value)


def test_dotenv_syntax_still_reads(tmp_path):
    s = load_text(tmp_path, "# comment\n\nexport LAB_NAME=lab-x\nCONSTRAINT='node.role == worker'\n"
                            "MACHINE_OPTIONS=\"--opt a\n--opt b\"\nCD_NODE=swarm-test-2 # why\n"
                            "  ROUTING = dnsrr\n")
    assert s.lab_name == "lab-x" and s.constraint == "node.role == worker"
    assert s.machine_options == ("--opt", "a", "--opt", "b")
    assert s.cd_node == "swarm-test-2" and s.routing == "dnsrr"


def test_pass_env_names(tmp_path):
    assert load_text(tmp_path, "").pass_env == ()
    assert load_text(tmp_path, "PASS_ENV=HTTP_PROXY, no_proxy,_X1\n").pass_env == \
        ("HTTP_PROXY", "no_proxy", "_X1")


@pytest.mark.parametrize("value, why", [("HTTP-PROXY", "not a variable name"),
                                        ("1X", "not a variable name"),
                                        ("DOCKER_HOST", "DOCKER_")])
def test_pass_env_refuses_bad_names_and_docker_variables(tmp_path, value, why):
    with pytest.raises(ConfigError, match=f"PASS_ENV={value!r}: .*{why}"):
        load_text(tmp_path, f"PASS_ENV={value}\n")
