"""`inv services` with a stack file, against the real lab: the team's repository under
tests/apps/team-stack (two images it builds, a worker, a replicated-job migration, a store, a
proxy with a config, a secret), created as `docker stack deploy` would (the CLI on a manager
shows and works on it), a second run changing nothing, drift reported by --check, and every bad
input refused with one line and exit 2 before anything exists."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .conftest import ROOT, TEAM, TEAM_ENV_DIR, WIDE, app_repository, git, on_manager

SERVICES = ("team_api", "team_migrate", "team_proxy", "team_store", "team_worker")


def test_docker_stack_services_shows_what_cdtasks_made(team):
    out = team.created.stdout + team.created.stderr
    # From nothing: the registry lacked the team's images, built from its compose file and
    # pushed before anything else was made.
    [done] = [ln for ln in team.created.stdout.splitlines() if ln.startswith("test: ")]
    assert done.startswith(
        "test: built and pushed localhost:5000/team-api:1.0; "
        "built and pushed localhost:5000/team-worker:1.0; "
    ), done
    assert "building localhost:5000/team-worker:1.0" in team.created.stderr
    assert "no IPVS on these nodes" in out and out.count("no IPVS on these nodes") == 1
    rows = {
        r["Name"]: r
        for r in map(
            json.loads,
            on_manager(team, "stack", "services", "team", "--format", "{{json .}}").splitlines(),
        )
    }
    print(rows)
    assert sorted(rows) == list(SERVICES)
    assert rows["team_api"]["Replicas"].startswith("2/2")
    assert rows["team_migrate"]["Replicas"] == "0/1 (1/1 completed)"
    assert rows["team_worker"]["Replicas"] == "1/1" and rows["team_store"]["Replicas"] == "1/1"
    assert rows["team_proxy"]["Mode"] == "global"
    assert rows["team_worker"]["Image"] == "localhost:5000/team-worker:1.0"
    assert "team" in on_manager(team, "stack", "ls", "--format", "{{.Name}}").split()
    states = on_manager(
        team, "stack", "ps", "team", "--format", "{{.Name}} {{.Node}} {{.CurrentState}}"
    )
    for line in states.splitlines():  # placed by the env file's variable, on the prod-like nodes
        assert line.split()[1] in ("swarm-test-2", "swarm-test-3"), line
    for kind in ("network", "config", "secret"):
        names = on_manager(
            team,
            kind,
            "ls",
            "--filter",
            "label=com.docker.stack.namespace=team",
            "--format",
            "{{.Name}}",
        ).split()
        assert names, kind
        assert all(n.startswith("team_") for n in names), names


def test_the_stack_answers_through_its_proxy(team):
    """From a container on the stack's attachable network: the proxy finds the API by its
    alias, the job migrated the schema, the worker works, config and secret are mounted."""
    out = on_manager(
        team,
        "run",
        "--rm",
        "--network",
        "team_front",
        "cdtasks/python:3.11",
        "python3",
        "-c",
        "import time, urllib.request as u\n"
        "for _ in range(60):\n"
        "    try:\n"
        "        print(u.urlopen('http://proxy/', timeout=5).read().decode()); break\n"
        "    except Exception: time.sleep(1)\n",
    )
    body = json.loads(out)
    assert body["schema"] == "1" and body["token"] is True
    assert body["greeting"] == (TEAM / "config" / "greeting.txt").read_text().strip()
    assert int(body["work"]) > 0


def versions(lab) -> dict[str, int]:
    return {
        n: json.loads(on_manager(lab, "service", "inspect", n))[0]["Version"]["Index"]
        for n in SERVICES
    }


def test_second_run_changes_nothing(team):
    before = versions(team)
    proc = team.inv("services", "--env", "test", extra_env=WIDE)
    assert "test: nothing to change" in proc.stdout.splitlines(), proc.stdout
    assert versions(team) == before


def plan_of(team, extra_env: dict | None = None) -> list[tuple[str, str, list[str]]]:
    doc = json.loads(team.inv("plan", "--env", "test", "--json", extra_env=extra_env).stdout)
    return [(c["name"], c["action"], [k["key"] for k in c["keys"]]) for c in doc["test"]["changes"]]


def test_check_and_plan_report_drift_and_update_converges(team):
    proc = team.inv("services", "--env", "test", "--check", check=False, extra_env=WIDE)
    assert proc.returncode == 0 and "test: services match stack.yml" in proc.stdout, proc.stdout
    assert plan_of(team) == []
    on_manager(
        team, "service", "update", "--detach", "--replicas", "1", "--env-add", "X=1", "team_api"
    )
    proc = team.inv("services", "--env", "test", "--check", check=False, extra_env=WIDE)
    print(proc.stdout)
    assert proc.returncode == 5
    assert "deploy.replicas" in proc.stdout and "environment" in proc.stdout
    assert plan_of(team) == [("team_api", "update", ["environment", "deploy.replicas"])]
    proc = team.inv("services", "--env", "test", "--update", extra_env=WIDE)
    assert "updated service team_api (environment, deploy.replicas)" in proc.stdout, proc.stdout
    assert team.inv("services", "--env", "test", "--check", check=False).returncode == 0
    assert plan_of(team) == []


GREETINGS = """
import json, sys, time, urllib.request as u
want, seen, end = sys.argv[1], [], time.time() + 60
while time.time() < end:
    try:
        seen = [json.loads(u.urlopen("http://proxy/", timeout=5).read())["greeting"] for _ in range(6)]
    except Exception:
        seen = []
    if seen and set(seen) == {want}:
        break
    time.sleep(1)
print(json.dumps(seen))
"""


def greetings(team, want: str) -> set[str]:
    """What six answers of the API through the proxy greet with, once all say `want` (or
    after 60 s: a proxy still finding the new tasks is not what is tested)."""
    out = on_manager(
        team,
        *("run", "--rm", "--network", "team_front", "cdtasks/python:3.11"),
        *("python3", "-c", GREETINGS, want),
    )
    return set(json.loads(out))


def config_names(team) -> list[str]:
    names = on_manager(team, "config", "ls", "--format", "{{.Name}}").split()
    return sorted(n for n in names if n.startswith("team_greeting"))


def test_a_changed_config_rolls_with_its_service_and_back(team, tmp_path):
    """A changed greeting.txt (in a copy of the team's directory): the plan shows it, `inv
    services --update` creates it under its content's name and updates the API, the old one
    stays for Swarm's rollback, which brings the old greeting back; a third content retires the
    generation that neither the spec nor the previous spec uses (and a config of a key no
    longer in the file, which no service uses); the repository's file again
    converges (the copy's files and the repository's name the same objects)."""
    copy = tmp_path / "team-stack"
    shutil.copytree(TEAM, copy)
    (copy / "env" / "test.env").write_text(
        (TEAM / "env" / "test.env")
        .read_text()
        .replace("STACK_FILE=tests/apps/team-stack/stack.yml", f"STACK_FILE={copy / 'stack.yml'}")
    )
    copied = {**WIDE, "CDTASKS_ENV_DIR": str(copy / "env")}
    first = (TEAM / "config" / "greeting.txt").read_text().strip()
    [old] = config_names(team)

    def change(text: str) -> str:
        data = f"{text}\n".encode()
        (copy / "config" / "greeting.txt").write_bytes(data)
        return f"team_greeting-{hashlib.sha256(data).hexdigest()[:10]}"

    second = f"Hello again {uuid.uuid4().hex[:6]}"
    new = change(second)
    assert plan_of(team, copied) == [(new, "create", []), ("team_api", "update", ["configs"])]
    started = time.monotonic()
    proc = team.inv("services", "--env", "test", "--update", extra_env=copied)
    print(f"--update with a new greeting: {time.monotonic() - started:.1f}s\n{proc.stdout}")
    assert f"created config {new}; updated service team_api (configs)" in proc.stdout
    assert greetings(team, second) == {second}
    assert config_names(team) == sorted([old, new])
    again = team.inv("services", "--env", "test", "--update", extra_env=copied)
    assert "test: nothing to change" in again.stdout.splitlines(), again.stdout
    assert plan_of(team, copied) == []

    on_manager(team, "service", "rollback", "--quiet", "team_api")
    assert greetings(team, first) == {first}

    # A config of a key the file no longer declares (made by an earlier file, no service uses
    # it) is the stack's by its namespace label: retired by the same rule, not kept for good.
    gone = f"team_motd-{uuid.uuid4().hex[:10]}"
    on_manager(
        team,
        *("config", "create", "--label", "com.docker.stack.namespace=team"),
        *("--label", "io.cdtasks.stack.base=team_motd", gone, "/etc/hostname"),
    )
    third = f"Hello once more {uuid.uuid4().hex[:6]}"
    newer = change(third)
    assert plan_of(team, copied) == [
        (newer, "create", []),
        ("team_api", "update", ["configs"]),
        (new, "retire", []),
        (gone, "retire", []),
    ]
    proc = team.inv("services", "--env", "test", "--update", extra_env=copied)
    assert f"retired config {new}" in proc.stdout, proc.stdout
    assert f"retired config {gone}" in proc.stdout, proc.stdout
    assert gone not in on_manager(team, "config", "ls", "--format", "{{.Name}}").split()
    assert greetings(team, third) == {third}
    assert config_names(team) == sorted([old, newer])

    proc = team.inv("services", "--env", "test", "--update", extra_env=WIDE)
    assert "updated service team_api (configs)" in proc.stdout, proc.stdout
    assert greetings(team, first) == {first}
    assert plan_of(team) == []


GOOD = """
networks:
  front: {}
configs:
  cfg:
    file: ./stack.yml
services:
  web:
    image: cdtasks/haproxy:2.6
    ports: ["8071:80"]
    networks: [front]
    configs: [cfg]
  db:
    image: cdtasks/redis:7.0
    networks: [front]
"""
BAD = {
    "misspelled key": (
        GOOD.replace("image: cdtasks/redis", "imgae: cdtasks/redis"),
        "service db: unknown key imgae (did you mean image?)",
    ),
    "unsupported key": (GOOD + "    build: .\n", "service db: key build: Swarm ignores it"),
    "variable without a value": (
        GOOD.replace("8071:80", "${WEB_PORT}:80"),
        "service web: ports[0]: variable WEB_PORT has no value",
    ),
    "two services on one port": (
        GOOD + "    ports: ['8071:6379']\n",
        "host port 8071/tcp is already published by service web",
    ),
    "missing image": (
        GOOD.replace("cdtasks/redis:7.0", "localhost:5000/nobody:1.0"),
        "service db: image localhost:5000/nobody:1.0 is neither",
    ),
    "missing file": (None, "No such file or directory"),
}


def refused(team, tmp_path: Path, case: str) -> str:
    """Run `inv services` on one bad stack file (a namespace of its own); '' when it exited 2
    with one line naming the file and nothing of the namespace exists, else what went wrong."""
    body, message = BAD[case]
    name = f"bad{uuid.uuid4().hex[:6]}"
    stack_file = tmp_path / case.replace(" ", "-") / "stack.yml"
    stack_file.parent.mkdir()
    if body is not None:
        stack_file.write_text(body)
    (stack_file.parent / "test.env").write_text(
        (ROOT / TEAM_ENV_DIR / "test.env").read_text()
        + f"STACK_FILE={stack_file}\nSTACK_NAME={name}\n"
    )
    proc = team.inv(
        "services",
        "--env",
        "test",
        check=False,
        extra_env={"CDTASKS_ENV_DIR": str(stack_file.parent)},
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    print(case, proc.returncode, errors)
    if proc.returncode != 2 or len(errors) != 1:
        return f"{case}: exit {proc.returncode}: {proc.stderr[-500:]}"
    if message not in errors[0] or str(stack_file) not in errors[0]:
        return f"{case}: {errors[0]}"
    for kind in ("service", "network", "config", "secret"):
        label = f"label=com.docker.stack.namespace={name}"
        if on_manager(team, kind, "ls", "-q", "--filter", label).split():
            return f"{case}: a {kind} was created"
    return ""


def test_bad_input_exits_2_with_nothing_created(team, tmp_path):
    """Every case of BAD, side by side (each is a process that mostly waits on imports)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = [f for f in pool.map(lambda case: refused(team, tmp_path, case), BAD) if f]
    assert not failures, failures


def test_a_failed_build_is_one_line_naming_its_compose_service_and_nothing_is_made(team, tmp_path):
    """A stack (a namespace of its own) whose worker image the registry lacks, built from a
    repository whose worker does not build: exit 4, one line, nothing of the stack made."""
    repo = app_repository(TEAM, tmp_path / "repo", "team")
    (repo / "worker" / "Dockerfile").write_text("FROM cdtasks/python:3.11\nRUN exit 3\n")
    git(repo, "commit", "--quiet", "-am", "a worker that does not build")
    name = f"bad{uuid.uuid4().hex[:6]}"
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "test.env").write_text(
        (ROOT / TEAM_ENV_DIR / "test.env").read_text()
        + f"STACK_NAME={name}\nREPO={repo}\nCOMPOSE_FILE=docker-compose-ci.yml\n"
        "STACK_VARIABLES=REGISTRY=localhost:5000 PLACEMENT='node.labels.env == prod-like' "
        "WORKER_VERSION=0.9\n"
    )
    proc = team.inv(
        "services", "--env", "test", check=False, extra_env={"CDTASKS_ENV_DIR": str(env_dir)}
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    print(proc.returncode, proc.stderr[-2000:])
    assert proc.returncode == 4 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(
        "error: compose service worker of docker-compose-ci.yml (localhost:5000/team-worker:0.9): "
    ), errors
    for kind in ("service", "network", "config", "secret"):
        label = f"label=com.docker.stack.namespace={name}"
        assert not on_manager(team, kind, "ls", "-q", "--filter", label).split(), kind


def test_logs_of_a_stack_service_through_a_manager(team):
    proc = team.inv("logs", "migrate", "--env", "test")
    lines = proc.stdout.splitlines()
    print(lines)
    assert any(
        line.startswith("team_migrate.") and line.endswith("| schema migrated to 1")
        for line in lines
    )
    proc = team.inv("logs", "worker", "--env", "test", "--since", "1h")
    assert "worker started" in [line.split(" | ", 1)[1] for line in proc.stdout.splitlines()]
    proc = team.inv("logs", "api", "--env", "test", "--tail", "1")
    tasks = [line.split(" | ")[0] for line in proc.stdout.splitlines()]
    assert len(tasks) == len(set(tasks)) and all(t.startswith("team_api.") for t in tasks)
    proc = team.inv("logs", "nothere", "--env", "test", check=False)
    assert proc.returncode == 2
    assert "no service 'nothere' (the file has api, migrate, worker, store, proxy)" in proc.stderr


def test_status_lists_the_stack_and_the_errors_of_a_service_short_of_replicas(team):
    on_manager(
        team,
        "service",
        "update",
        "--detach",
        "--image",
        "localhost:5000/team-worker:0.0",
        "team_worker",
    )
    deadline = time.monotonic() + 120
    while True:
        proc = team.inv("status", "--env", "test", "--json")
        rows = {r["service"]: r for r in json.loads(proc.stdout)["test"]["services"]}
        if rows["team_worker"]["errors"] or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(rows)
    assert set(SERVICES) <= set(rows)
    assert (
        rows["team_migrate"]["mode"] == "replicated-job"
        and rows["team_migrate"]["replicas"] == "1/1"
    )
    assert rows["team_api"]["replicas"] == "2/2" and rows["team_api"]["errors"] == ""
    worker = rows["team_worker"]
    assert worker["replicas"] == "0/1" and worker["image"] == "localhost:5000/team-worker:0.0"
    assert "team-worker:0.0" in worker["errors"] or "No such image" in worker["errors"], worker
    proc = team.inv("services", "--env", "test", "--update", extra_env=WIDE)
    assert "updated service team_worker (image)" in proc.stdout, proc.stdout
