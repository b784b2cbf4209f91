"""cdtasks: continuous delivery and deployment to Docker Swarm as Invoke tasks (`inv --list`)."""
from cdtasks import ns  # noqa: F401 (the collection Invoke loads)
