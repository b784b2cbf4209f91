"""The layers, read from the source (AST, every import, also those inside functions): the library
never imports the task layer or Invoke's tasks; the tasks never import the Docker SDK; only the
gateway (and engine.py, which builds the clients) imports it, and only the gateway reads the
Engine API's dictionaries (the stack planner, which writes specs, excepted: SPEC_WRITERS)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cdtasks

PACKAGE = Path(cdtasks.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
SDK_USERS = {"cdtasks.gateway", "cdtasks.engine"}
# The stack planner writes Engine API ServiceSpecs from a stack file (the SDK's `types`), as
# `docker stack deploy` does, and compares them spec to spec; it calls nothing itself (its
# reads and writes are the gateway's methods). The one exception, until the stack file maps to
# the gateway's models.
SPEC_WRITERS = {"cdtasks.stackplan"}
# Invoke's Context runs a local command with Fabric's run interface (engine.CommandShell, for
# providers that own SSH themselves; its Local runner, to read timeouts right); no task layer.
INVOKE_RUNNERS = {"cdtasks.engine": {"Context", "Config", "Local"}}
# The package itself hands a project's tasks.py the collection (`from cdtasks import ns`),
# lazily: the entry point, above the task layer, not a library module.
ENTRY = {"cdtasks"}
ENGINE_KEYS = {"TaskTemplate", "ContainerSpec", "UpdateStatus", "ManagerStatus", "PreviousSpec"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, set[str]]]:
    """(module imported, names taken from it) for every import statement, relative ones
    resolved against the module's package."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, set()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            names = {a.name for a in node.names}
            out.append((target, names))
            # `from . import tasks` names a module too
            out += [(f"{target}.{n}", set()) for n in names] if node.level else []
    return out


def under(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


def is_task_module(name: str) -> bool:
    return under(name, "cdtasks.tasks")


def test_the_package_is_found():
    names = {module_name(p) for p in MODULES}
    assert {"cdtasks.gateway", "cdtasks.services", "cdtasks.tasks.common"} <= names


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_the_library_never_imports_invoke_or_the_task_layer(path):
    me = module_name(path)
    if is_task_module(me) or me in ENTRY:
        return
    for target, names in imports(path):
        assert not is_task_module(target), f"{me} imports {target} (the task layer)"
        if under(target, "invoke"):
            allowed = INVOKE_RUNNERS.get(me, set())
            assert names and names <= allowed, f"{me} imports {target} {sorted(names)}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_only_the_gateway_and_engine_import_the_docker_sdk(path):
    me = module_name(path)
    sdk = [t for t, _ in imports(path) if under(t, "docker")]
    if me not in SDK_USERS | SPEC_WRITERS:
        assert not sdk, f"{me} imports {', '.join(sdk)}: the gateway translates the SDK"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_only_the_gateway_reads_engine_api_dictionaries(path):
    me = module_name(path)
    if me == "cdtasks.gateway" or me in SPEC_WRITERS:
        return
    found = {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and n.value in ENGINE_KEYS
    }
    assert not found, f"{me} reads {sorted(found)} of the Engine API: use the gateway's models"


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks themselves: a task module importing docker and a library module importing
    the task layer are both seen (relative imports resolved)."""
    fake = tmp_path / "cdtasks"
    (fake / "tasks").mkdir(parents=True)
    (fake / "tasks" / "x.py").write_text("def f():\n    import docker.errors\n")
    (fake / "y.py").write_text("from .tasks import common\nfrom . import tasks\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, fake
    try:
        assert ("docker.errors", set()) in imports(fake / "tasks" / "x.py")
        found = [t for t, _ in imports(fake / "y.py")]
        assert "cdtasks.tasks" in found and is_task_module(found[0])
    finally:
        PACKAGE = saved
