"""The runtime API's answers as the module reads them; `show stat` as HAProxy 2.6.12 (the
proxy image's) printed it during a canary whose 500s `retry-on` retried elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdtasks import haproxy

STAT = (Path(__file__).parent / "data" / "haproxy-show-stat.csv").read_text()


def _reading(text: str = STAT) -> haproxy.Reading:
    return haproxy.Reading(haproxy.Replica("t1", "node-1", "c1"), haproxy.parse_stat(text))


def test_show_stat_gives_the_server_lines_only():
    servers = haproxy.parse_stat(STAT)
    assert [s.full_name for s in servers] == ["go-demo/app1", "go-demo/app3", "go-demo/canary1"]
    app1 = servers[0]
    assert (app1.status, app1.weight, app1.requests, app1.errors) == ("UP", 1, 500, 0)
    assert app1.resolved and not servers[1].resolved  # MAINT (resolution): an empty slot


def test_a_500_retried_elsewhere_counts_as_an_error_of_the_server_that_answered_it():
    canary = haproxy.parse_stat(STAT)[2]
    # retry-on all-retryable-errors: never a 5xx of the canary, but one retry each
    assert (canary.responses_5xx, canary.retries, canary.requests) == (0, 109, 109)
    assert canary.errors == 109


def test_errors_never_exceed_the_requests():
    s = haproxy.Server("b", "s1", "UP", 1, 10, 4, 6, 0, 6, 0, 0)  # a failure counted twice
    assert s.errors == 10


def test_a_template_s_slots_are_found_by_prefix_and_number():
    reading = _reading()
    assert [s.name for s in haproxy.servers_named(reading, "go-demo", "canary")] == ["canary1"]
    assert [s.name for s in haproxy.servers_named(reading, "go-demo", "app")] == ["app1", "app3"]
    assert haproxy.servers_named(reading, "other", "app") == ()
    assert haproxy.totals(haproxy.servers_named(reading, "go-demo", "app")) == (500, 0)


def test_an_answer_that_is_not_show_stat_is_refused():
    with pytest.raises(ValueError, match="Permission denied"):
        haproxy.parse_stat("Permission denied\n")


def test_the_enabling_lines_are_those_of_the_sample_configuration():
    cfg = (Path(__file__).parents[2] / "demo" / "proxy" / "haproxy.cfg").read_text()
    assert f"stats socket {haproxy.SOCKET} mode 600 level admin" in cfg
    assert 'server-template canary 5 "${BACKEND_HOST}-canary:${BACKEND_PORT}"' in cfg
