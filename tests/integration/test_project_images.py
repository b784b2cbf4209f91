"""The images a project needs, made present on a real engine (this machine's, standing in for
the CD node): taken from a registry (a registry container on 127.0.0.1), or refused with the
image and the service named. Everything made here is uniquely named and removed."""

from __future__ import annotations

import secrets
import time
import urllib.request

import pytest

from cdtasks.compose import (
    ComposeError,
    check_contract,
    compose_command,
    compose_environment,
    read_model,
)
from cdtasks.images import IMAGES
from cdtasks.project_images import MissingImage, ensure

docker = pytest.importorskip("docker")

BASE, REGISTRY_IMAGE = IMAGES["python"].ref, IMAGES["registry"].ref
_client = None  # the engine, set by the fixture below


@pytest.fixture(autouse=True, scope="module")
def _engine_with_images():
    """Checked when the tests run, not when they are collected: on a new machine the images
    are built by the lab tests that run before these."""
    global _client
    try:
        _client = docker.from_env()
        _client.ping()
        for ref in (BASE, REGISTRY_IMAGE):
            _client.images.get(ref)
        compose_command()
    except (docker.errors.DockerException, ComposeError) as exc:
        pytest.skip(f"needs a Docker engine with {BASE}, {REGISTRY_IMAGE} and compose: {exc}")


COMPOSE = """\
version: '2'
services:
  app:
    build: .
    image: {name}/app
  unit:
    image: {base}
  staging-dep:
    image: {name}/app
    depends_on: [db]
  staging:
    extends: unit
  production:
    extends: unit
  db:
    image: {db}
"""


@pytest.fixture
def registry():
    """A registry on a free 127.0.0.1 port: `localhost:PORT`, as the engine trusts it."""
    container = _client.containers.run(
        REGISTRY_IMAGE,
        detach=True,
        auto_remove=False,
        ports={"5000/tcp": ("127.0.0.1", None)},
        labels={"io.cdtasks.test": "project-images"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # until the port is bound and the registry answers on it
            container.reload()
            bound = (container.ports.get("5000/tcp") or [{}])[0].get("HostPort")
            try:
                if bound:
                    urllib.request.urlopen(f"http://127.0.0.1:{bound}/v2/", timeout=2).close()
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the registry container does not answer"
            time.sleep(0.2)
        yield f"localhost:{bound}"
    finally:
        container.remove(force=True, v=True)


@pytest.fixture
def name():
    prefix = f"cdt-needs-{secrets.token_hex(4)}"
    yield prefix
    for image in _client.images.list():
        for tag in image.tags:
            if f"{prefix}/" in tag:
                _client.images.remove(tag, noprune=False)


def project(tmp_path, name: str, db: str):
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE}\n")
    f = tmp_path / "docker-compose-ci.yml"
    f.write_text(COMPOSE.format(name=name, base=BASE, db=db))
    return check_contract(read_model(f, compose_environment({}, {})))


def push(ref: str) -> None:
    repository, _, tag = ref.rpartition(":")
    _client.images.get(BASE).tag(repository, tag)
    for line in _client.images.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    _client.images.remove(ref)


def test_an_image_only_the_registry_has_is_pulled_and_named_as_the_project_names_it(
    tmp_path, registry, name
):
    db = f"{name}/db:3.2.10"
    push(f"{registry}/{db}")
    with pytest.raises(docker.errors.ImageNotFound):
        _client.images.get(db)
    logged: list[str] = []
    done = ensure(project(tmp_path, name, db), _client, "host", registry, _client, logged.append)
    assert done == [f"pulled {db} from {registry} into host"]
    assert _client.images.get(db).id == _client.images.get(BASE).id
    assert logged == [f"host: pulling {registry}/{db}"]
    # Everything is there now: nothing more to do.
    assert ensure(project(tmp_path, name, db), _client, "host", registry, _client, print) == []


def test_an_image_nowhere_is_refused_naming_image_and_service(tmp_path, registry, name):
    db = f"{name}/nowhere:1"
    with pytest.raises(MissingImage) as err:
        ensure(project(tmp_path, name, db), _client, "host", registry, _client, print)
    assert str(err.value) == (
        f"image {db} needed by service db is not on CD node host, not one the tool builds, and "
        f"not in the registry {registry}; Docker Hub is not reachable from here"
    )
