"""cdtasks: continuous delivery and deployment to Docker Swarm as Invoke tasks.

`from cdtasks import ns` in a project's tasks.py gives every task; the collection is built on
first use, so `import cdtasks.config` (and the rest of the library) loads no Invoke tasks."""


def __getattr__(name: str):
    if name == "ns":
        from .tasks import ns

        return ns
    raise AttributeError(f"module 'cdtasks' has no attribute {name!r}")
