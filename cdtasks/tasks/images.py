"""images: build the offline images the lab and the sample need."""

from __future__ import annotations

from invoke import Collection

from .common import out, user_errors
from .flags import task


@task(name="images", notes={"force": "rebuild even when the cached images match their recipes"})
@user_errors
def build_images(c, force=False):
    """Build (or reuse) the offline images from Debian packages: node, registry, python, haproxy, redis."""
    from .. import engine, images, report

    host = engine.host_client()
    wanted = list(images.IMAGES.values())
    built = images.build(host, wanted, report.make_logger("images"), force=force)
    report.print_table(
        "images",
        ["image", "upstream it stands in for", "state"],
        [[i.ref, i.upstream, "built" if i.ref in built else "cached"] for i in wanted],
    )
    out(f"{len(built)} built, {len(wanted) - len(built)} cached")


ns = Collection("images")
ns.add_task(build_images, default=True)
