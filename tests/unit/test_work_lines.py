"""The progress lines a delivery says when each piece of a step's work begins: said right before
that work (a signal after the line lands inside it; the fault tests wait for them), and never
in a dry run, which lists the commands instead. Compose and the CD node's engine are fakes that
note what they were asked in the same list as the lines."""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import pytest

from cdtasks import delivery, rollout
from cdtasks.compose import Build, ComposeModel
from cdtasks.config import load
from cdtasks.delivery import Delivery

VERSION = "1.0"


class FakeCompose:
    def __init__(self, said: list[str]):
        self.said = said

    def run(self, service: str) -> None:
        self.said.append(f"compose run {service}")

    def up(self, service: str) -> None:
        self.said.append(f"compose up {service}")

    def build(self, *services: str) -> None:
        self.said.append(f"compose build {' '.join(services)}")


class FakeImages:
    def __init__(self, said: list[str]):
        self.said = said

    def list(self, filters):
        return [SimpleNamespace(id="sha256:built", tag=lambda repository, tag: None)]

    def push(self, repository, tag, stream, decode):
        self.said.append(f"engine push {repository}:{tag}")
        return iter([{"status": "Pushing"}, {"aux": {"Digest": "sha256:" + "0" * 64}}])


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "test.env").write_text(f"STATE_DIR={tmp_path / 'state'}\nAPP_IMAGE=hello-book\n")
    return load("test", environ={}, env_dir=tmp_path)


def _delivery(settings, monkeypatch, said: list[str], dry_run: bool) -> Delivery:
    d = Delivery(settings, "", version=VERSION, dry_run=dry_run, log=said.append, project="p-1")
    d.images_ready = True
    built = {"app": d.ref_tag, "staging-dep": d.ref_tag}  # `${IMAGE}:${VERSION}`: no staging lock
    d.model = ComposeModel(
        "f.yml",
        ("app", "unit", "staging-dep", "staging", "production"),
        MappingProxyType(built),
        MappingProxyType({"app": Build("/src", "Dockerfile")}),
        MappingProxyType({}),
    )
    node = settings.cluster.cd_node
    d._cluster = SimpleNamespace(
        endpoints={node: SimpleNamespace(docker_host="tcp://cd:2376")},
        client=lambda name: SimpleNamespace(images=FakeImages(said)),
    )
    monkeypatch.setattr(
        d, "compose_step", lambda action, host_ip="", defer=False: action(FakeCompose(said))
    )
    return d


def _prodtest(d: Delivery, monkeypatch) -> None:
    for name in ("runs", "settle"):
        monkeypatch.setattr(rollout, name, lambda *args: None)
    monkeypatch.setattr(rollout, "host_ip", lambda *args: "10.0.0.1")
    target = SimpleNamespace(
        settings=SimpleNamespace(env="test", services=d.settings.services),
        routing_in_use=lambda: "dnsrr",
    )
    rollout.production_tests(d, target, {"go-demo_main": d.ref_tag}, 0.0)


WORK = {
    "unit": ["unit tests running", "compose run unit"],
    "build": ["building {ref}", "compose build app"],
    "staging": [
        "starting staging-dep",
        "compose up staging-dep",
        "staging tests running",
        "compose run staging",
    ],
    "publish": ["pushing {ref}", "engine push {image}:1.0"],
    "prodtest": ["production tests running against test", "compose run production"],
}


def _run(step: str, d: Delivery, monkeypatch) -> None:
    if step == "prodtest":
        _prodtest(d, monkeypatch)
    else:
        delivery.STEP_FUNCS[step](d)


@pytest.mark.parametrize("step", WORK)
def test_each_piece_of_work_is_said_right_before_it_begins(settings, monkeypatch, step):
    said: list[str] = []
    d = _delivery(settings, monkeypatch, said, dry_run=False)
    _run(step, d, monkeypatch)
    assert said == [line.format(ref=d.ref_tag, image=d.image) for line in WORK[step]]


@pytest.mark.parametrize("step", WORK)
def test_a_dry_run_says_none_of_them(settings, monkeypatch, step):
    said: list[str] = []
    d = _delivery(settings, monkeypatch, said, dry_run=True)
    _run(step, d, monkeypatch)
    lines = {line.format(ref=d.ref_tag, image=d.image) for line in WORK[step]}
    assert not lines & {x for x in said if not x.startswith(("compose ", "engine "))}
