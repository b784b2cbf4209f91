"""cdtasks installed as a package and used from another project: a venv with this checkout
`pip install`ed into it, and a throwaway project (its own tasks.py, env directory and
repository) that provisions, delivers and deploys on the session's lab with the venv's `inv`,
and reads the machine-readable output (`--json`) a shell script would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = "8.1"  # a version no other test delivers
GIT_ID = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], text=True, capture_output=True, **kw)
    assert proc.returncode == 0, (
        f"{argv} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def python(tmp_path_factory) -> Path:
    """The python of a venv that has cdtasks installed from a copy of this checkout (its
    dependencies are the machine's: --system-site-packages, so no download of them)."""
    tmp = tmp_path_factory.mktemp("installed")
    # A clean copy: setuptools builds in the source tree, where stale build/ files would linger.
    src = shutil.copytree(
        ROOT,
        tmp / "src",
        ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", "__pycache__", "reports", ".venv"
        ),
    )
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    py = venv / "bin" / "python"
    # Building a wheel needs bdist_wheel: in setuptools since 70.1, else the `wheel` package.
    if subprocess.run(
        [py, "-c", "import setuptools.command.bdist_wheel"], capture_output=True
    ).returncode:
        _run([py, "-m", "pip", "install", "-q", "setuptools>=70.1"])
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", src])
    return py


@dataclass
class Project:
    dir: Path
    python: Path
    env: dict

    def inv(
        self,
        *args: str,
        check: bool = True,
        cwd: Path | None = None,
        extra_env: dict | None = None,
        timeout: float = 900,
    ) -> subprocess.CompletedProcess:
        """`inv ARGS` in the project with the venv's Invoke and cdtasks."""
        proc = subprocess.run(
            [str(self.python), "-m", "invoke", *args],
            cwd=cwd or self.dir,
            text=True,
            capture_output=True,
            timeout=timeout,
            env={**self.env, **(extra_env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"inv {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
            )
        return proc


def _env_file(name: str) -> str:
    """This checkout's env file; in base.env (where they are set), the sample's paths moved to
    the project's `app/`: its stack file (whose proxy configuration, ./proxy/haproxy.cfg, is
    relative to it: app/proxy/haproxy.cfg) and the delivery compose file (what builds the
    stack's first image when the registry lacks it)."""
    text = (ROOT / "env" / f"{name}.env").read_text()
    if name != "base":
        return text
    for key, value in (
        ("STACK_FILE", "app/stack.yml"),
        ("COMPOSE_FILE", "app/docker-compose-test-local.yml"),
    ):
        assert f"\n{key}=" in text, key
        text = (
            "\n".join(
                f"{key}={value}" if line.startswith(f"{key}=") else line
                for line in text.splitlines()
            )
            + "\n"
        )
    return text


def _project(directory: Path, python: Path, lab, env_dir: str) -> Project:
    """A project of its own: tasks.py importing the collection, env files, and the sample as
    `app/` (its stack file app/stack.yml beside app/proxy/haproxy.cfg), all in one git
    repository (the default repository is the project)."""
    shutil.copytree(ROOT / "demo", directory / "app")
    assert (directory / "app" / "stack.yml").is_file() and (
        directory / "app" / "proxy" / "haproxy.cfg"
    ).is_file()
    (directory / env_dir).mkdir()
    for name in ("base", "test", "prod"):
        (directory / env_dir / f"{name}.env").write_text(_env_file(name))
    (directory / "tasks.py").write_text("from cdtasks import ns  # every cdtasks task\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "a project using cdtasks"]):
        _run(["git", *args], cwd=directory, env={**os.environ, **GIT_ID})
    # The lab's names and state only; nothing points back at this checkout, and the reports
    # land in the project's own reports/.
    env = {k: v for k, v in lab.env.items() if k not in ("PYTHONPATH", "CDTASKS_REPORTS_DIR")}
    return Project(directory, python, env)


@pytest.fixture(scope="module")
def project(stack, python, tmp_path_factory) -> Project:
    return _project(tmp_path_factory.mktemp("project"), python, stack, "env")


def test_the_package_is_installed_with_its_data(python):
    proc = _run(
        [
            python,
            "-c",
            "import cdtasks.config, cdtasks.images as i, sys; "
            "print(cdtasks.config.__file__); print(i.HERE); print('invoke' in sys.modules)",
        ],
        cwd="/",
    )
    module, images, invoke_loaded = proc.stdout.split()
    assert "site-packages" in module and not module.startswith(str(ROOT)), module
    for name in ("node-entrypoint.sh", "registry.yml"):
        assert (Path(images) / name).is_file(), name
    assert invoke_loaded == "False"  # the library alone does not load the task layer


def test_another_project_provisions_delivers_and_deploys(project):
    # Provisioning the session's lab again changes nothing, with the project's own env files.
    proc = project.inv("provision")
    assert proc.stdout.count("none (up to date)") == 2, proc.stdout
    # STACK_FILE (and the proxy configuration beside it) is read from the project's app/: the
    # stack the session made from this checkout's demo/ matches it.
    proc = project.inv("services", "--env", "test", "--check")
    assert "test: services match stack.yml" in proc.stdout

    proc = project.inv("deliver", "--version", VERSION, "--json")
    report = json.loads(proc.stdout)  # one JSON document, nothing else on stdout
    assert report["suite"] == "deliver" and report["ok"] is True
    assert [s["name"] for s in report["steps"]] == [
        "checkout",
        "unit",
        "build",
        "staging",
        "publish",
        "prodlike",
        "prodtest",
    ]
    meta = report["meta"]
    assert meta["version"] == VERSION and meta["env"] == "test"
    assert Path(meta["repo"]) == project.dir  # the default repository is the project
    assert meta["digest"].startswith("sha256:")
    # The reports directory is the project's, and holds the same report.
    assert json.loads((project.dir / "reports" / "deliver.json").read_text()) == report

    proc = project.inv("deploy", "--env", "prod", "--json")
    deployed = json.loads(proc.stdout)
    assert deployed["suite"] == "deploy" and deployed["ok"] is True
    assert deployed["meta"]["version"] == VERSION and deployed["meta"]["result"] == "deployed"
    assert deployed["meta"]["digest"] == meta["digest"]

    proc = project.inv("history", "--env", "prod", "--json")
    history = json.loads(proc.stdout)
    assert history["env"] == "prod" and history["service"] == "go-demo"
    assert history["source"] == "cluster"
    last = history["deployments"][-1]
    assert (last["version"], last["result"], last["digest"]) == (
        VERSION,
        "deployed",
        meta["digest"],
    )


def test_a_project_configured_through_invoke_yaml(stack, python, tmp_path):
    project = _project(tmp_path / "other", python, stack, "environments")
    (project.dir / "environments" / "prod.env").unlink()
    (project.dir / "invoke.yaml").write_text("cdtasks:\n  env_dir: environments\n")
    (project.dir / "sub").mkdir()
    # From a subdirectory too: the project is where tasks.py (and invoke.yaml) are.
    for cwd in (project.dir, project.dir / "sub"):
        status = json.loads(project.inv("status", "--json", cwd=cwd).stdout)
        assert list(status) == ["test"]  # every environment of environments/, and only those
        nodes = status["test"]["nodes"]
        assert sorted(n["node"] for n in nodes) == ["swarm-test-1", "swarm-test-2", "swarm-test-3"]
        assert all(n["status"] == "ready" and n["role"] == "manager" for n in nodes)
        assert sum(n["leader"] for n in nodes) == 1
        assert status["test"]["missing"] == []
        services = {s["service"]: s for s in status["test"]["services"]}
        assert {"go-demo_main", "go-demo_db", "go-demo_proxy", "registry"} <= set(services)
        assert services["go-demo_main"]["mode"] == "replicated"
    # The process environment goes over invoke.yaml: env/ has no env files here.
    (project.dir / "env").mkdir()
    proc = project.inv("status", "--json", check=False, extra_env={"CDTASKS_ENV_DIR": "env"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"no environments (*.env files) in {project.dir / 'env'}" in proc.stderr
