"""cdtasks: continuous delivery and deployment to Docker Swarm as Invoke tasks (`inv --list`)."""
from invoke import Collection

from cdtasks.tasks import cluster, delivery, deployment, images, lock, services, watch

ns = Collection()
for module in (cluster, images, services, delivery, deployment, lock, watch):
    for name, t in module.ns.tasks.items():
        ns.add_task(t, name=name)
    ns.configure(module.ns.configuration())
