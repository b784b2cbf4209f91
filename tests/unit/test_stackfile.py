"""The stack file model: interpolation as compose does it, every mapped key, and each bad input
refused with one line naming file, service and key (the team's stack under tests/apps)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cdtasks import stackfile
from cdtasks.stackfile import StackFileError, interpolate

TEAM = Path(__file__).resolve().parents[1] / "apps" / "team-stack" / "stack.yml"
VARS = {"REGISTRY": "localhost:5000", "PLACEMENT": "node.labels.env == prod-like"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("$A-${A}", "a-a"),
        ("${UNSET:-d}|${EMPTY:-d}|${EMPTY-d}|${UNSET-d}", "d|d||d"),
        ("${A:+x}|${EMPTY:+x}|${EMPTY+x}|${UNSET+x}", "x||x|"),
        ("$$A costs $${A}", "$A costs ${A}"),
        ("${UNSET:-${A}/b}", "a/b"),
    ],
)
def test_interpolation_follows_compose(text, expected):
    assert interpolate(text, {"A": "a", "EMPTY": ""}) == expected


@pytest.mark.parametrize("text", ["$UNSET", "${UNSET}", "${EMPTY:?needed}", "${UNSET?x}", "a $ b"])
def test_a_variable_without_a_value_is_refused(text):
    with pytest.raises(stackfile._Unset):
        interpolate(text, {"EMPTY": ""})


def test_the_team_stack_maps_every_key():
    s = stackfile.read(TEAM, "team", VARS)
    assert s.names == ("api", "migrate", "worker", "store", "proxy")
    api = s.service("api")
    assert api.image == "localhost:5000/team-api:1.0"
    assert api.deploy.replicas == 2 and api.deploy.constraints == (VARS["PLACEMENT"],)
    assert api.deploy.update_config.order == "start-first"
    assert api.deploy.update_config.delay == 1_000_000_000
    assert api.deploy.rollback_config.order == "stop-first"
    assert api.deploy.preferences == ("node.hostname",) and api.deploy.max_replicas_per_node == 2
    assert api.deploy.resources.mem_limit == 128 * 1024 * 1024
    assert api.deploy.resources.cpu_reservation == 50_000_000
    assert api.healthcheck.test[0] == "CMD" and api.healthcheck.start_period == 60 * 10**9
    assert ("front", ("team-api",)) in api.networks
    assert api.secrets[0].target == "api_token" and api.configs[0].target.startswith("/etc")
    assert s.service("migrate").deploy.mode == "replicated-job"
    assert s.service("migrate").command == ("python3", "-u", "/app/migrate.py")
    assert dict(s.service("worker").environment)["WORK_INTERVAL"] == "1"  # from env_file
    assert s.service("store").volumes[0].source == "store-data"
    assert s.service("proxy").deploy.mode == "global"
    assert s.service("proxy").ports[0].published == 8070
    assert [n.name for n in s.networks] == ["team_front", "team_back"]
    assert [c.base for c in s.configs] == ["team_greeting", "team_haproxy"]
    assert s.secrets[0].data.startswith(b"not-a-real-token")
    assert s.volumes[0].name == "team_store-data"


def test_configs_and_secrets_are_named_by_their_content(tmp_path):
    """`sha256sum` of a config's file begins with its name's hash; a secret's hash is another
    (stretched) one; an external one keeps its name."""
    team = stackfile.read(TEAM, "team", VARS)
    greeting = next(c for c in team.configs if c.key == "greeting")
    data = (TEAM.parent / "config" / "greeting.txt").read_bytes()
    assert greeting.name == f"team_greeting-{hashlib.sha256(data).hexdigest()[:10]}"
    token = team.secrets[0]
    assert (
        token.name.startswith("team_api_token-") and len(token.name) == len("team_api_token-") + 10
    )
    assert hashlib.sha256(token.data).hexdigest()[:10] not in token.name
    (tmp_path / "a.txt").write_text("one")
    body = "configs:\n  a: {file: ./a.txt}\n  b: {external: true, name: shared}\n" + GOOD
    first = stackfile.read(_write(tmp_path, body), "s", {}).configs
    (tmp_path / "a.txt").write_text("two")
    second = stackfile.read(_write(tmp_path, body), "s", {}).configs
    assert first[0].base == second[0].base == "s_a" and first[0].name != second[0].name
    assert first[1].name == second[1].name == "shared"


def test_a_config_name_too_long_for_its_hash_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    body = f"configs:\n  a: {{file: ./a.txt, name: {'n' * 54}}}\n" + GOOD
    with pytest.raises(stackfile.StackFileError, match="configs.a: name 'n+' is too long"):
        stackfile.read(_write(tmp_path, body), "s", {})


def test_one_file_serves_two_clusters():
    prod = stackfile.read(TEAM, "team", {**VARS, "PLACEMENT": "node.labels.env == prod"})
    assert prod.service("worker").deploy.constraints == ("node.labels.env == prod",)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "stack.yml"
    path.write_text(body)
    return path


GOOD = """
services:
  web:
    image: cdtasks/haproxy:2.6
    ports: ["8000:80"]
  db:
    image: cdtasks/redis:7.0
"""


@pytest.mark.parametrize(
    "body, message",
    [
        (
            GOOD.replace("image: cdtasks/redis", "imgae: cdtasks/redis"),
            "service db: unknown key imgae (did you mean image?)",
        ),
        (GOOD + "    build: .\n", "service db: key build: Swarm ignores it"),
        (GOOD + "    deploy:\n      replica: 2\n", "service db: deploy: unknown key replica"),
        (
            GOOD + "    deploy:\n      replicas: ${N}\n",
            "service db: deploy.replicas: variable N has no value",
        ),
        (
            GOOD + "    ports: ['8000:6379']\n",
            "service db: ports: host port 8000/tcp is already published by service web",
        ),
        (GOOD.replace("redis:7.0", "redis"), "service db: image: cdtasks/redis has no tag"),
        (GOOD + "    logging: {}\n", "service db: key logging is not supported by cdtasks yet"),
        (GOOD + "    networks: [nowhere]\n", "network nowhere is not declared"),
        (GOOD + "    deploy:\n      mode: global\n      replicas: 2\n", "remove replicas"),
    ],
)
def test_bad_input_is_one_line_naming_file_service_and_key(tmp_path, body, message):
    path = _write(tmp_path, body)
    with pytest.raises(StackFileError) as err:
        stackfile.read(path, "s", {})
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert message in text


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(StackFileError, match="STACK_FILE .*nothing.yml: No such file"):
        stackfile.read(tmp_path / "nothing.yml", "s", {})


def test_durations_and_sizes():
    assert stackfile.duration_ns("1m30s") == 90 * 10**9
    assert stackfile.duration_ns("500ms") == 5 * 10**8
    assert stackfile.size_bytes("64M") == 64 * 1024**2 and stackfile.size_bytes("1gb") == 1024**3
    with pytest.raises(ValueError):
        stackfile.duration_ns("10 seconds")
