"""The project's model as compose reads it (`docker compose config`, no engine needed): the
demo's file, the book-style sample, the book's own go-demo file; and the contract check."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdtasks import compose as mod
from cdtasks.compose import (
    ComposeError,
    ContractError,
    check_contract,
    compose_environment,
    image_ref,
    model_of,
    read_model,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]  # this checkout
DEMO = PROJECT_DIR / "demo"
HELLO = PROJECT_DIR / "tests" / "apps" / "hello-book"
# go-demo's docker-compose-test-local.yml as the book prints it.
BOOK = """\
version: '2'

services:

  app:
    build: .
    image: go-demo

  unit:
    image: golang:1.6
    volumes:
      - .:/usr/src/myapp
      - /tmp/go:/go
    working_dir: /usr/src/myapp
    command: bash -c "go get -d -v -t && go test --cover -v ./... && go build -v -o go-demo"

  staging-dep:
    image: go-demo
    ports:
      - 8080:8080
    depends_on:
      - db

  staging:
    extends:
      service: unit
    environment:
      - HOST_IP=localhost:8080
    network_mode: host
    command: bash -c "go get -d -v -t && go test --tags integration -v"

  production:
    extends:
      service: unit
    environment:
      - HOST_IP=${HOST_IP}
    network_mode: host
    command: bash -c "go get -d -v -t && go test --tags integration -v"

  db:
    image: mongo:3.2.10
"""
CONTRACT = {"app", "unit", "staging-dep", "staging", "production"}

try:
    CLI = mod.compose_command()
except ComposeError as exc:
    pytest.skip(str(exc), allow_module_level=True)


def environment(**contract: str) -> dict[str, str]:
    return compose_environment({}, contract)


def test_demo_file_names_the_image_from_the_delivery_environment():
    model = read_model(
        DEMO / "docker-compose-test-local.yml",
        environment(
            IMAGE="localhost:5000/go-demo",
            VERSION="1.1",
            BASE_IMAGE="cdtasks/python:3.11",
            DB_IMAGE="cdtasks/redis:7.0",
            HOST_IP="10.0.0.2",
        ),
        CLI,
    )
    assert set(model.services) == CONTRACT | {"db"}
    assert model.built_image() == "localhost:5000/go-demo:1.1"
    assert model.images["staging-dep"] == "localhost:5000/go-demo:1.1"
    assert model.images["unit"] == model.images["production"] == "cdtasks/python:3.11"
    assert model.images["db"] == "cdtasks/redis:7.0"
    assert model.app_build.context == str(DEMO)
    assert model.app_build.dockerfile == "Dockerfile"
    assert dict(model.app_build.args) == {"BASE_IMAGE": "cdtasks/python:3.11"}
    assert dict(model.ports) == {}
    assert check_contract(model) is model


def test_demo_file_without_the_variables_takes_its_defaults():
    model = read_model(DEMO / "docker-compose-test-local.yml", environment(), CLI)
    assert model.built_image() == "go-demo:dev"
    assert model.images["db"] == "cdtasks/redis:7.0"


def test_book_style_sample_plain_name_extends_and_published_port():
    model = read_model(HELLO / "docker-compose-ci.yml", environment(HOST_IP="10.0.0.2"), CLI)
    check_contract(model)
    assert set(model.services) == CONTRACT | {"db"}
    assert model.built_image() == "hello-book:latest"  # what compose tags for `image: hello-book`
    assert model.images["staging-dep"] == "hello-book:latest"
    # `extends: unit` gives staging and production unit's image
    assert model.images["staging"] == model.images["production"] == "cdtasks/python:3.11"
    assert model.images["db"] == "cdtasks/redis:7.0"
    assert dict(model.ports) == {"staging-dep": (8080,)}
    # its build arguments, interpolated: the delivery's VERSION (unset: the default) and a
    # PREFIX from HELLO_PREFIX, which compose sees only when PASS_ENV names it
    assert model.app_build.context == str(HELLO)
    assert dict(model.app_build.args) == {"VERSION": "dev", "PREFIX": "/hello"}


def test_the_books_go_demo_file_reads_and_its_warnings_are_not_errors(tmp_path):
    f = tmp_path / "docker-compose-test-local.yml"
    f.write_text(BOOK)
    # HOST_IP unset and `version: '2'`: compose warns on stderr, and that is no failure
    model = read_model(f, environment(), CLI)
    check_contract(model, f)
    assert model.built_image() == "go-demo:latest"
    assert model.images["db"] == "mongo:3.2.10"
    assert model.images["staging"] == "golang:1.6"
    assert dict(model.ports) == {"staging-dep": (8080,)}
    assert model.app_build.context == str(tmp_path)


def test_a_file_that_does_not_parse_is_one_line_naming_it(tmp_path):
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  app:\n    build: .\n   image: x\n")
    with pytest.raises(ContractError) as err:
        read_model(f, environment(), CLI)
    message = str(err.value)
    assert message.startswith(f"{f}: ") and "\n" not in message
    assert "yaml" in message


def test_a_required_variable_missing_is_compose_own_message(tmp_path):
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  app:\n    image: ${APP_TAG:?give APP_TAG}\n")
    with pytest.raises(ContractError, match="give APP_TAG") as err:
        read_model(f, environment(), CLI)
    assert "\n" not in str(err.value)
    assert read_model(f, environment(APP_TAG="x:1"), CLI).images == {"app": "x:1"}


def test_the_operator_environment_does_not_reach_the_model(tmp_path, monkeypatch):
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  app:\n    image: ${SOMETHING:-unset}:1\n")
    monkeypatch.setenv("SOMETHING", "leaked")
    assert read_model(f, compose_environment({}, {}), CLI).images["app"] == "unset:1"
    assert (
        read_model(f, compose_environment({}, {}, ["SOMETHING"]), CLI).images["app"] == "leaked:1"
    )


def test_compose_object_reads_its_own_model(tmp_path):
    f = tmp_path / "docker-compose.yml"
    f.write_text("services:\n  app:\n    build: .\n    image: ${IMAGE}:${VERSION}\n")
    c = mod.Compose(f, "proj", env={"IMAGE": "localhost:5000/x", "VERSION": "2.0"}, command=CLI)
    assert c.model().built_image() == "localhost:5000/x:2.0"


def test_an_app_without_image_is_named_by_compose_after_project_and_service():
    model = model_of("f.yml", {"services": {"app": {"build": {"context": "/src"}}}})
    assert model.built_image(project="go-demo-1-1-ab12") == "go-demo-1-1-ab12-app:latest"
    assert model.app_build.dockerfile == "Dockerfile"


@pytest.mark.parametrize(
    "services, missing",
    [
        ({"app": {"build": {}}, "unit": {}, "staging": {}, "production": {}}, "staging-dep"),
        ({"app": {"build": {}}, "unit": {}}, "staging-dep, staging, production"),
        ({"unit": {}, "staging-dep": {}, "staging": {}, "production": {}}, "app"),
    ],
)
def test_missing_contract_services_are_named(services, missing):
    model = model_of(
        "ci.yml", {"services": {k: {"image": "x:1", **v} for k, v in services.items()}}
    )
    with pytest.raises(ContractError) as err:
        check_contract(model, "repo/ci.yml")
    assert str(err.value).startswith(f"repo/ci.yml: no service {missing}:")


def test_app_must_build():
    model = model_of("ci.yml", {"services": {s: {"image": "x:1"} for s in CONTRACT}})
    with pytest.raises(ContractError, match=r"^ci.yml: service app has no `build`"):
        check_contract(model)


@pytest.mark.parametrize(
    "ref, tagged",
    [
        ("go-demo", "go-demo:latest"),
        ("go-demo:1.1", "go-demo:1.1"),
        ("localhost:5000/go-demo", "localhost:5000/go-demo:latest"),
        ("localhost:5000/go-demo:1.1", "localhost:5000/go-demo:1.1"),
        ("docker.io/library/mongo:3.2.10", "mongo:3.2.10"),
        ("docker.io/vfarcic/go-demo", "vfarcic/go-demo:latest"),
        ("x@sha256:" + "a" * 64, "x@sha256:" + "a" * 64),
    ],
)
def test_image_ref_is_what_the_engine_tags(ref, tagged):
    assert image_ref(ref) == tagged


def test_published_ports_ranges_and_ephemeral():
    model = model_of(
        "f.yml",
        {
            "services": {
                "a": {
                    "image": "x:1",
                    "ports": [
                        {"target": 80, "published": "8080-8081"},
                        {"target": 90},
                        {"target": 91, "published": ""},
                        {"target": 92, "published": "9000"},
                    ],
                }
            }
        },
    )
    assert dict(model.ports) == {"a": (8080, 8081, 9000)}
