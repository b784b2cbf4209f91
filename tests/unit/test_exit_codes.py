"""Library errors -> documented exit codes, one line on stderr, no traceback (tasks/common.py)."""

from __future__ import annotations

import json

import pytest
from invoke import Exit
from paramiko import SSHException

from cdtasks import config, deployment, records
from cdtasks.delivery import STEPS, DeliveryError
from cdtasks.engine import EngineError
from cdtasks.gateway import APIFailure
from cdtasks.images import ImageError
from cdtasks.outcome import Outcome
from cdtasks.providers.base import ProviderError
from cdtasks.services import ServiceError
from cdtasks.swarm import SwarmError
from cdtasks.tasks import common


@pytest.mark.parametrize(
    "error, code",
    [
        (config.ConfigError("env/test.env: NODES: bad"), common.BAD_INPUT),
        (DeliveryError("no checkout of go-demo"), common.BAD_INPUT),
        (deployment.DeploymentError("version 9 never passed prod-like"), common.BAD_INPUT),
        (records.LockHeld("go-demo is being deployed by someone"), common.LOCKED),
        (EngineError("cannot reach Docker at tcp://127.0.0.1:1"), common.UNREACHABLE),
        (ProviderError("machine swarm-1: docker-machine failed"), common.UNREACHABLE),
        (SSHException("host key changed"), common.UNREACHABLE),
        (SwarmError("no manager of test answers"), common.CLUSTER),
        (ServiceError("go-demo: 0/2 running"), common.CLUSTER),
        (ImageError("debian ships 7.1, not 7.0"), common.CLUSTER),
        (
            APIFailure("500 Server Error"),
            common.CLUSTER,
        ),  # an engine answer nobody turned into an error
    ],
)
def test_library_errors_exit_with_their_documented_code(error, code):
    @common.user_errors
    def failing_task(c):
        raise error

    with pytest.raises(Exit) as caught:
        failing_task(None)
    assert caught.value.code == code
    assert caught.value.message == f"error: {error}"  # one line naming the culprit


def test_ctrl_c_exits_130():
    @common.user_errors
    def interrupted(c):
        raise KeyboardInterrupt

    with pytest.raises(Exit) as caught:
        interrupted(None)
    assert caught.value.code == common.INTERRUPTED == 130


def test_other_errors_are_not_hidden():
    @common.user_errors
    def buggy(c):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        buggy(None)


def test_a_failed_step_exits_ten_plus_its_position():
    assert [common.step_failed(i) for i, _ in enumerate(STEPS)] == list(range(11, 18))


@pytest.mark.parametrize(
    "result, code",
    [
        ("deployed", 0),
        ("rolled back", 0),
        ("failed, rolled back", common.ROLLED_BACK),
        ("failed, rollback failed", common.NOT_RECOVERED),
        ("failed", common.NOT_RECOVERED),
        ("stopped, lock lost", common.LOCKED),
        ("interrupted", common.INTERRUPTED),
        ("failed, something newer", common.NOT_RECOVERED),
        ("canary aborted: 23.4 % errors > 1 % over 412 requests", common.ROLLED_BACK),
    ],
)  # a record worded otherwise
def test_deployment_results_exit_as_documented(result, code):
    assert Outcome.of(result).exit_code == code


def test_every_outcome_is_its_record_text():
    """History records hold the text: records of earlier versions load as the same outcomes."""
    for outcome in Outcome:
        assert Outcome.of(str(outcome)) is outcome
        assert json.loads(json.dumps({"result": outcome})) == {"result": outcome.value}


@pytest.mark.parametrize("signum, code", [(2, 130), (15, 143), (1, 129)])
def test_a_signal_exits_128_plus_its_number_in_one_line(signum, code):
    from cdtasks.interrupt import Interrupted

    @common.user_errors
    def interrupted(c):
        raise Interrupted(signum)

    with pytest.raises(Exit) as caught:
        interrupted(None)
    assert caught.value.code == code
    assert caught.value.message.startswith("interrupted (SIG") and "\n" not in caught.value.message


def test_sigterm_inside_a_task_interrupts_it():
    import os
    import signal
    import time

    @common.user_errors
    def long_task(c):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Exit) as caught:
        long_task(None)
    assert caught.value.code == 143
    assert signal.getsignal(signal.SIGTERM) == before
