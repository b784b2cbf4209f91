"""For every test tree (tests/ and the sample's demo/tests/).

pytest-xdist sends each subtest's report, its parameters included, from the worker to the
controller with execnet, which serializes only plain data: `self.subTest(error=exc)` then fails
with execnet's DumpError on `-n 2` and passes on `-n 0` (demo's test_database_unreachable_is_503
did). Checked here on every run, so such a test fails the same way with or without workers,
naming the parameter."""

from __future__ import annotations

import execnet
import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook tries to send it
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    context = getattr(report, "context", None)  # a subtest's report carries its parameters
    for name, value in getattr(context, "kwargs", {}).items():
        try:
            execnet.dumps(value)
        except execnet.DumpError:
            raise TypeError(
                f"{report.nodeid}: subtest parameter {name}={value!r} is a "
                f"{type(value).__name__}, which pytest-xdist cannot send to its controller: "
                f"pass plain data (a str, e.g. repr() of it)"
            ) from None
