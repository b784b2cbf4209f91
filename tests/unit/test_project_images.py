"""The images a project needs: the Dockerfile's FROM lines, what the services use, and where
each missing one comes from (pure logic; the models come from real `docker compose config`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdtasks import images
from cdtasks.compose import (
    ComposeError,
    check_contract,
    compose_command,
    compose_environment,
    model_of,
    read_model,
)
from cdtasks.project_images import (
    OFFLINE,
    PRESENT,
    REGISTRY,
    MissingImage,
    dockerfile_bases,
    needed,
    plan,
    read_dockerfiles,
    registry_ref,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]  # this checkout
OFFLINE_REFS = {i.ref for i in images.IMAGES.values()}


# -- FROM lines ---------------------------------------------------------------------------------
def test_literal_from():
    assert dockerfile_bases('FROM cdtasks/python:3.11\nCMD ["x"]\n') == ["cdtasks/python:3.11"]


def test_arg_default_and_build_arg_override():
    text = "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\nCOPY . /app\n"
    assert dockerfile_bases(text) == ["python:3.11-slim"]
    assert dockerfile_bases(text, {"BASE_IMAGE": "cdtasks/python:3.11"}) == ["cdtasks/python:3.11"]


def test_untagged_base_is_latest_and_docker_io_prefix_dropped():
    assert dockerfile_bases("FROM alpine\nFROM docker.io/library/debian:12\n") == [
        "alpine:latest",
        "debian:12",
    ]


def test_stages_platform_scratch_copy_from_and_continuations():
    text = """\
# syntax=docker/dockerfile:1
ARG GO=1.6 \\
    REG=localhost:5000
ARG TAG
FROM --platform=$BUILDPLATFORM golang:${GO} AS Build
ARG STAGE_ONLY=ignored
RUN go build \\
    # a comment inside a continued line
    -o /app
FROM build AS test
FROM scratch
COPY --from=build /app /app
COPY --from=0 /x /x
COPY --from=$REG/tools:${TAG:-2} /bin/tool /bin/tool
FROM ${STAGE_ONLY:-alpine:3.4}
"""
    assert dockerfile_bases(text) == ["golang:1.6", "localhost:5000/tools:2", "alpine:3.4"]
    assert dockerfile_bases(text, {"GO": "1.21", "TAG": "3"}) == [
        "golang:1.21",
        "localhost:5000/tools:3",
        "alpine:3.4",
    ]


def test_alternative_value_and_lowercase_instructions():
    assert dockerfile_bases("arg V=1\nfrom img${V:+-v}:x as a\n") == ["img-v:x"]
    assert dockerfile_bases("ARG V\nFROM img${V:+-v}:x\n") == ["img:x"]


def test_the_samples_dockerfiles():
    assert dockerfile_bases((PROJECT_DIR / "tests/apps/hello-book/Dockerfile").read_text()) == [
        "cdtasks/python:3.11"
    ]
    assert dockerfile_bases(
        (PROJECT_DIR / "demo/Dockerfile").read_text(), {"BASE_IMAGE": "cdtasks/python:3.11"}
    ) == ["cdtasks/python:3.11"]


# -- what a project needs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli():
    try:
        return compose_command()
    except ComposeError as exc:
        pytest.skip(str(exc))


def test_the_demo_needs_its_base_and_database_not_what_it_builds(cli):
    model = read_model(
        PROJECT_DIR / "demo/docker-compose-test-local.yml",
        compose_environment(
            {},
            {
                "IMAGE": "localhost:5000/go-demo",
                "VERSION": "1.1",
                "BASE_IMAGE": "cdtasks/python:3.11",
                "DB_IMAGE": "cdtasks/redis:7.0",
            },
        ),
        cli,
    )
    assert needed(model, read_dockerfiles(model)) == {
        "cdtasks/python:3.11": "app",
        "cdtasks/redis:7.0": "db",
    }


def test_the_book_style_sample_needs_its_literal_images(cli):
    model = check_contract(
        read_model(
            PROJECT_DIR / "tests/apps/hello-book/docker-compose-ci.yml",
            compose_environment({}, {"HOST_IP": "x"}),
            cli,
        )
    )
    needs = needed(model, read_dockerfiles(model))
    assert needs == {"cdtasks/python:3.11": "app", "cdtasks/redis:7.0": "db"}
    assert "hello-book:latest" not in needs  # staging-dep runs what app builds


def test_services_images_and_every_build_base(tmp_path):
    model = model_of(
        tmp_path / "c.yml",
        {
            "services": {
                "app": {"build": {"context": str(tmp_path)}, "image": "go-demo"},
                "unit": {"image": "golang:1.6"},
                "staging-dep": {"image": "go-demo"},
                "db": {"image": "mongo:3.2.10"},
                "tool": {"build": {"context": str(tmp_path / "tool"), "args": {"V": "2"}}},
            }
        },
    )
    dockerfiles = {"app": "FROM alpine:3.4\n", "tool": "ARG V=1\nFROM busybox:${V}\n"}
    assert needed(model, dockerfiles) == {
        "alpine:3.4": "app",
        "golang:1.6": "unit",
        "mongo:3.2.10": "db",
        "busybox:2": "tool",
    }


def test_read_dockerfiles_of_local_contexts(tmp_path):
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "app.Dockerfile").write_text("FROM x:1\n")
    model = model_of(
        "c.yml",
        {
            "services": {
                "app": {
                    "build": {"context": str(tmp_path / "build"), "dockerfile": "app.Dockerfile"}
                },
                "gone": {"build": {"context": str(tmp_path / "none")}},
                "remote": {"build": {"context": "https://example.com/x.git"}},
            }
        },
    )
    assert read_dockerfiles(model) == {"app": "FROM x:1\n"}


# -- where each comes from ----------------------------------------------------------------------
NEEDS = {
    "cdtasks/python:3.11": "app",
    "cdtasks/redis:7.0": "db",
    "mongo:3.2.10": "db",
    "golang:1.6": "unit",
}


def test_plan_prefers_the_node_then_the_tools_images_then_the_registry():
    steps = plan(
        NEEDS,
        present=["golang:1.6", "docker.io/library/other:1"],
        offline=OFFLINE_REFS,
        in_registry={"mongo:3.2.10"},
        node="swarm-test-1",
        registry="localhost:5000",
    )
    assert steps == {
        "cdtasks/python:3.11": OFFLINE,
        "cdtasks/redis:7.0": OFFLINE,
        "mongo:3.2.10": REGISTRY,
        "golang:1.6": PRESENT,
    }
    assert plan(NEEDS, NEEDS, (), (), "n", "r") == dict.fromkeys(NEEDS, PRESENT)


def test_plan_names_the_missing_image_and_its_service():
    with pytest.raises(MissingImage) as err:
        plan(
            NEEDS,
            present=["golang:1.6"],
            offline=OFFLINE_REFS,
            in_registry=(),
            node="swarm-test-1",
            registry="localhost:5000",
        )
    assert str(err.value) == (
        "image mongo:3.2.10 needed by service db is not on CD node swarm-test-1, not one the "
        "tool builds, and not in the registry localhost:5000; Docker Hub is not reachable "
        "from here"
    )


def test_without_a_source_of_offline_images_they_count_as_missing():
    with pytest.raises(MissingImage, match="image cdtasks/python:3.11 needed by service app"):
        plan(
            NEEDS,
            present=(),
            offline=(),
            in_registry={"mongo:3.2.10"},
            node="n",
            registry="localhost:5000",
        )


@pytest.mark.parametrize(
    "image, ref",
    [
        ("mongo:3.2.10", "localhost:5000/mongo:3.2.10"),
        ("vfarcic/go-demo:1.0", "localhost:5000/vfarcic/go-demo:1.0"),
        ("localhost:5000/go-demo:1.1", "localhost:5000/go-demo:1.1"),
    ],
)
def test_registry_ref(image, ref):
    assert registry_ref(image, "localhost:5000") == ref
