"""Thin Invoke task modules: resolve config and flags, call one library function, print.

`ns` is every task in one flat collection (`inv provision`, `inv deliver`, ...), with the
modules' Invoke configuration defaults; each module's own `ns` can be added alone instead.
`program` is the `cdtasks` command: the same tasks without a tasks.py."""

from importlib.metadata import version

from invoke import Collection, Program

from . import cluster, delivery, deployment, images, lock, services, watch

ns = Collection()
for module in (cluster, images, services, delivery, deployment, lock, watch):
    for name, t in module.ns.tasks.items():
        ns.add_task(t, name=name)
    ns.configure(module.ns.configuration())

DESCRIPTION = (
    "cdtasks: continuous delivery and deployment to Docker Swarm (the book chapter's "
    "process) as tasks.\nRun in a project with env/test.env and env/prod.env; "
    "`cdtasks --help TASK` describes a task's flags."
)


class _Program(Program):
    def print_help(self) -> None:
        print(DESCRIPTION + "\n")
        super().print_help()


# No tasks.py is loaded, so no invoke.yaml is read either: the current directory is the project.
program = _Program(namespace=ns, name="cdtasks", binary="cdtasks", version=version("cdtasks"))
