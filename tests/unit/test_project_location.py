"""Where a project's files are: Invoke configuration (ns.configure, invoke.yaml, INVOKE_CDTASKS_*)
under the process environment (CDTASKS_PROJECT_DIR, CDTASKS_ENV_DIR), the env file under both
for the settings; and every task that lists environments lists those of the chosen directory.
Real Invoke configuration objects; the library calls behind the tasks are replaced (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Config, Context, Exit

from cdtasks import cluster, config, ns, stack
from cdtasks.gateway import Node
from cdtasks.tasks import cluster as cluster_tasks
from cdtasks.tasks import common
from cdtasks.tasks import services as services_tasks

NODES = {"alpha": "a-1,a-2", "beta": "b-1", "gamma": "g-1"}


def project(root: Path, env_dir: str = "env", envs=("alpha", "beta")) -> Path:
    """A project directory with env files naming their own nodes and a relative STACK_FILE."""
    (root / env_dir).mkdir(parents=True, exist_ok=True)
    for name in envs:
        (root / env_dir / f"{name}.env").write_text(
            f"NODES={NODES[name]}\nCD_NODE={NODES[name].split(',')[0]}\nSTACK_FILE=src\n"
        )
    return root


def context(location: Path | None, yaml: str | None = None) -> Context:
    """A task's Context as `inv` builds it: the collection's defaults, then the project's
    invoke.yaml (found beside tasks.py at `location`), then INVOKE_* variables."""
    if yaml is not None:
        (location / "invoke.yaml").write_text(yaml)
    cfg = Config(project_location=str(location) if location else None)
    cfg.load_collection(ns.configuration())
    cfg.load_project()
    cfg.load_shell_env()
    return Context(cfg)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for key in (
        "CDTASKS_ENV_DIR",
        "CDTASKS_PROJECT_DIR",
        "INVOKE_CDTASKS_ENV_DIR",
        "INVOKE_CDTASKS_PROJECT_DIR",
        "CDTASKS_STACK_FILE",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)


# -- config.locate / load: the library takes the places as arguments --------------------------
def test_locate_defaults_to_the_current_directory_and_its_env(tmp_path):
    where = config.locate({})
    assert (where.project_dir, where.env_dir) == (tmp_path, tmp_path / "env")


def test_locate_env_dir_is_relative_to_the_project(tmp_path):
    where = config.locate({}, project_dir=tmp_path / "p", env_dir="environments")
    assert where.env_dir == tmp_path / "p" / "environments"
    assert config.locate({}, project_dir="p").project_dir == tmp_path / "p"
    assert config.locate({}, env_dir=tmp_path / "abs").env_dir == tmp_path / "abs"


def test_locate_process_environment_wins_over_the_arguments(tmp_path):
    environ = {"CDTASKS_PROJECT_DIR": str(tmp_path / "from-env"), "CDTASKS_ENV_DIR": "e"}
    where = config.locate(environ, project_dir=tmp_path / "arg", env_dir="arg-env")
    assert (where.project_dir, where.env_dir) == (
        tmp_path / "from-env",
        tmp_path / "from-env" / "e",
    )


def test_relative_settings_paths_and_the_default_repository_are_the_projects(tmp_path):
    root = project(tmp_path / "proj")
    s = config.load("alpha", environ={}, project_dir=root)
    assert s.stack.stack_file == root / "src"
    assert s.delivery.reports_dir == root / "reports"
    assert s.delivery.repo == str(root)
    s = config.load(
        "alpha",
        {"REPORTS_DIR": "/abs/reports", "REPO": "https://example/r.git"},
        environ={},
        project_dir=root,
    )
    assert (
        s.delivery.reports_dir == Path("/abs/reports")
        and s.delivery.repo == "https://example/r.git"
    )


# -- the task layer: Invoke configuration -> config.load's arguments ----------------------------
def test_the_project_is_where_tasks_py_was_found_not_the_package(tmp_path):
    root = project(tmp_path / "proj")
    (tmp_path / "proj" / "sub").mkdir()
    s = common.settings(context(root), "alpha")
    assert s.stack.stack_file == root / "src" and s.source == str(root / "env" / "alpha.env")
    assert (
        "site-packages" not in str(s.stack.stack_file)
        and Path(config.__file__).parent not in s.stack.stack_file.parents
    )


def test_without_a_loaded_tasks_py_the_project_is_the_current_directory(tmp_path):
    project(tmp_path)
    assert common.settings(context(None), "beta").stack.stack_file == tmp_path / "src"


def test_invoke_yaml_chooses_the_env_dir(tmp_path):
    root = project(tmp_path / "proj", "environments", envs=("gamma",))
    c = context(root, "cdtasks:\n  env_dir: environments\n")
    assert common.envs(c, None) == ["gamma"]
    assert common.settings(c, "gamma").cluster.nodes == ("g-1",)


def test_invoke_yaml_project_dir_is_relative_to_tasks_py(tmp_path):
    root = project(tmp_path / "proj" / "deploy")
    c = context(tmp_path / "proj", "cdtasks:\n  project_dir: deploy\n")
    assert common.settings(c, "alpha").stack.stack_file == root / "src"


def test_precedence_flag_process_env_invoke_config_env_file(tmp_path, monkeypatch):
    project(tmp_path / "proj", "from-yaml", envs=("alpha",))
    project(tmp_path / "proj", "from-invoke-env", envs=("beta",))
    project(tmp_path / "proj", "from-process-env", envs=("gamma",))
    yaml = "cdtasks:\n  env_dir: from-yaml\n"
    assert common.envs(context(tmp_path / "proj", yaml), None) == ["alpha"]
    monkeypatch.setenv("INVOKE_CDTASKS_ENV_DIR", "from-invoke-env")  # Invoke's own over its file
    assert common.envs(context(tmp_path / "proj", yaml), None) == ["beta"]
    monkeypatch.setenv("CDTASKS_ENV_DIR", "from-process-env")  # ours over Invoke's
    c = context(tmp_path / "proj", yaml)
    assert common.envs(c, None) == ["gamma"]
    # For a key: the flag over CDTASKS_<KEY> over the env file (STACK_FILE=src) of that directory.
    assert common.settings(c, "gamma").stack.stack_file == tmp_path / "proj" / "src"
    monkeypatch.setenv("CDTASKS_STACK_FILE", "from-variable")
    assert common.settings(c, "gamma").stack.stack_file == tmp_path / "proj" / "from-variable"
    assert common.settings(c, "gamma", stack_file="/flag").stack.stack_file == Path("/flag")


def test_an_env_dir_without_env_files_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exit) as exc:
        common.envs(context(tmp_path, "cdtasks:\n  env_dir: empty\n"), None)
    assert exc.value.code == common.BAD_INPUT
    assert str(tmp_path / "empty") in str(exc.value.message)


# -- every task that lists environments lists the chosen directory's ---------------------------
def _seen(monkeypatch) -> list:
    seen = []

    class Status:
        env, missing, services = "x", (), ()
        members = (Node("id1", "g-1", "manager", "ready", labels={}),)

    monkeypatch.setattr(cluster, "provision_many", lambda ss, log: seen.extend(ss) or [])
    monkeypatch.setattr(cluster, "status", lambda s: seen.append(s) or Status())
    monkeypatch.setattr(cluster, "destroy", lambda s, log, purge: seen.append(s) or [])
    monkeypatch.setattr(cluster, "env_lines", lambda s, node: seen.append(s) or [])

    class Result:
        drift, done = (), ()

    monkeypatch.setattr(stack, "ensure", lambda s, log, check, update: seen.append(s) or Result())
    return seen


@pytest.mark.parametrize(
    "task, kwargs",
    [
        (cluster_tasks.provision, {}),
        (cluster_tasks.status, {}),
        (cluster_tasks.status, {"json": True}),
        (cluster_tasks.destroy, {}),
        (services_tasks.services, {"check": True}),
        (cluster_tasks.env, {"node": "g-1"}),
    ],
)
def test_every_listing_task_uses_the_chosen_env_dir(task, kwargs, tmp_path, monkeypatch, capsys):
    project(tmp_path / "proj", envs=("alpha", "beta"))  # the default env/ must not be used
    project(tmp_path / "proj", "chosen", envs=("gamma",))
    seen = _seen(monkeypatch)
    task(context(tmp_path / "proj", "cdtasks:\n  env_dir: chosen\n"), **kwargs)
    assert [s.env for s in seen] == ["gamma"]
    assert seen[0].source == str(tmp_path / "proj" / "chosen" / "gamma.env")
