"""The canary's gate without a cluster: steps, weights, a step's figures from two readings of
the proxy's counters (a proxy that restarted counts from 0), and the verdict."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cdtasks import canary, haproxy
from cdtasks.canary import Figures, Gate
from cdtasks.haproxy import Server


def srv(name: str, requests: int, errors: int = 0, rtime: int = 0) -> Server:
    answered = requests - errors
    return Server("go-demo", name, "UP", 1, requests, errors, 0, 0, 0, rtime, rtime, answered)


def test_steps_are_rising_percentages():
    assert canary.parse_steps("5, 25,50%") == (5.0, 25.0, 50.0)
    assert canary.parse_steps("0.5") == (0.5,)


@pytest.mark.parametrize(
    "text, why",
    [("10,5", "must rise"), ("0", "between 0 and 100"), ("100", "between"), ("ten", "not a")],
)
def test_bad_steps_name_the_flag_and_the_value(text, why):
    with pytest.raises(ValueError, match=f"--canary {text}: .*{why}"):
        canary.parse_steps(text)


@pytest.mark.parametrize(
    "gate, flag",
    [
        (Gate((10,), hold=0), "--canary-for"),
        (Gate((10,), max_error_rate=100), "--max-error-rate"),
        (Gate((10,), max_latency=-1), "--max-latency"),
        (Gate((10,), min_requests=0), "--min-requests"),
        (Gate((10,), replicas=0), "--canary-replicas"),
    ],
)
def test_a_gate_that_makes_no_sense_names_its_flag(gate, flag):
    with pytest.raises(ValueError, match=flag):
        canary.check_gate(gate)


@pytest.mark.parametrize("percent", [0.5, 1, 5, 10, 25, 50, 75, 90])
@pytest.mark.parametrize("stable, canaries", [(1, 1), (2, 1), (3, 1), (10, 1), (3, 2), (2, 3)])
def test_weights_give_the_share_asked_within_a_tenth_of_a_point(percent, stable, canaries):
    ws, wc = canary.weights(percent, stable, canaries)
    assert 1 <= ws <= 256 and 1 <= wc <= 256
    share = 100 * canaries * wc / (canaries * wc + stable * ws)
    assert share == pytest.approx(percent, abs=0.1)


def test_a_share_beyond_haproxy_s_weights_gets_the_nearest():
    assert canary.weights(99, 10, 1) == (1, 256)  # 256 / 266: 96.2 %
    assert canary.weights(0.5, 1, 5) == (256, 1)  # 5 / 261: 1.9 %


def test_weights_with_a_side_down():
    assert canary.weights(10, 2, 0) == (1, 0)  # no canary up: nothing to send it
    assert canary.weights(10, 0, 1) == (0, 256)  # nothing else up: the canary serves all


def test_a_step_sums_the_differences_over_the_proxy_replicas():
    before = {
        "p1": {"canary1": srv("canary1", 100, 1, rtime=10)},
        "p2": {"canary1": srv("canary1", 50, rtime=40)},
    }
    after = {
        "p1": {"canary1": srv("canary1", 160, 4, rtime=10)},
        "p2": {"canary1": srv("canary1", 90, 0, rtime=40)},
    }
    got = canary.figures(before, after, {"canary1"})
    assert (got.requests, got.errors) == (100, 3)
    assert got.latency == round((10 * 57 + 40 * 40) / 97)  # weighted by what each answered


def test_the_step_s_own_response_time_is_taken_out_of_haproxy_s_moving_average():
    # Measured on HAProxy 2.6.12: a slot that answered 700 requests in 54 ms reads 47 ms after
    # 100 more that took 10 ms (+ ~4 ms of the path); 31 ms after 300 more.
    assert canary.step_rtime((54, 700), (47, 800)) == pytest.approx(14.5, abs=0.5)
    assert canary.step_rtime((47, 800), (31, 1100)) == pytest.approx(11, abs=1)
    # Within the first 512 answers HAProxy's rtime is their plain mean.
    assert canary.step_rtime((0, 0), (54, 100)) == pytest.approx(54)
    assert canary.step_rtime((54, 100), (34, 200)) == pytest.approx(14)
    # Across the 512th answer: 412 at 20 ms, then 188 at 50 ms (HAProxy's own arithmetic).
    total = 20 * 412 + 50 * 100  # the plain sum up to 512 answers...
    for _ in range(88):  # ...then 1/512 of it goes per answer
        total = total * 511 / 512 + 50
    assert canary.step_rtime((20, 412), (round(total / 512), 600)) == pytest.approx(50, abs=3)
    assert canary.step_rtime((20, 412), (20, 412)) is None  # nothing answered in the step


def test_a_proxy_that_restarted_counts_from_zero():
    before = {"p1": {"canary1": srv("canary1", 500, 10)}, "old": {"canary1": srv("canary1", 9)}}
    after = {
        "p1": {"canary1": srv("canary1", 30, 3)},  # same task, its process restarted
        "p2": {"canary1": srv("canary1", 20, 1)},  # a task that replaced "old"
    }
    got = canary.figures(before, after, {"canary1"})
    assert (got.requests, got.errors) == (50, 4)


def test_figures_of_chosen_servers_or_all():
    before = {"p1": {"app1": srv("app1", 0), "canary1": srv("canary1", 0)}}
    after = {"p1": {"app1": srv("app1", 90), "canary1": srv("canary1", 10, 10)}}
    assert canary.figures(before, after, {"canary1"}) == Figures(10, 10, None)
    assert canary.figures(before, after) == Figures(100, 10, 0)  # app1 answered in 0 ms


def test_the_verdict_names_the_figure_that_failed():
    gate = Gate((10, 50), hold=20, max_error_rate=1, max_latency=300, min_requests=100)
    assert canary.verdict(Figures(412, 96, 5), gate, ended=False) == (
        "23.3 % errors > 1 % over 412 requests"
    )
    assert canary.verdict(Figures(200, 2, 5), gate, ended=True) == ""  # 1 % is within 1 %
    slow = canary.verdict(Figures(150, 0, 812), gate, ended=False)
    assert slow == "response time 812 ms > 300 ms (HAProxy's rtime, over 150 requests)"
    assert canary.verdict(Figures(150, 0, 812), Gate((10,)), ended=True) == ""  # no limit set


def test_too_little_traffic_fails_at_the_end_of_a_step_never_before():
    gate = Gate((10,), hold=20, min_requests=100)
    assert canary.verdict(Figures(37, 30, None), gate, ended=False) == ""  # too early to say
    assert canary.verdict(Figures(37, 0, 3), gate, ended=True) == (
        "too little traffic to judge: 37 requests < 100 (--min-requests) in 20 s"
    )
    assert canary.verdict(Figures(0, 0, None), gate, ended=True).startswith("too little")


def test_a_step_is_described_with_its_share_of_all_requests():
    line = canary.describe(10, Figures(105, 0, 4), Figures(1000, 0, 3))
    assert line == "10 %: 105 requests (10.5 % of 1000), 0 errors (0.0 %), rtime 4 ms"


def test_backend_weights_count_the_servers_up_and_give_back_the_configured_ones():
    def at(name, status):
        return Server("go-demo", name, status, 1, 0, 0, 0, 0, 0, 0, 0, 0)

    backend = [
        at("app1", "UP"),
        at("app2", "UP 1/2"),  # going down, still taking requests
        at("app3", "MAINT (resolution)"),
        at("canary1", "UP"),
        at("canary2", "MAINT (resolution)"),
    ]
    got = canary.backend_weights(backend, {"canary1", "canary2"}, 20)
    ws, wc = canary.weights(20, 2, 1)
    assert got == {
        "go-demo/app1": ws,
        "go-demo/app2": ws,
        "go-demo/app3": ws,
        "go-demo/canary1": wc,
        "go-demo/canary2": wc,
    }
    back = canary.backend_weights(backend, {"canary1", "canary2"}, 0)
    assert back["go-demo/app3"] == "100%" and back["go-demo/canary2"] == 0


def test_the_requests_haproxy_answered_itself_count_in_all_never_the_canary_s():
    """Real `show stat` (data/haproxy-show-stat-errors.cfg): five 503s with no server up."""
    text = (Path(__file__).parent / "data" / "haproxy-show-stat-errors.csv").read_text()
    reading = haproxy.Reading(haproxy.Replica("t1", "n1", "c1"), haproxy.parse_stat(text))
    zero = {
        "t1": {s.name: replace(s, requests=0, responses_5xx=0) for s in reading.counted("nosrv")}
    }
    after = {"t1": {s.name: s for s in reading.counted("nosrv")}}
    assert canary.figures(zero, after) == Figures(5, 5, None)
    assert canary.figures(zero, after, {"app1"}) == Figures(0, 0, None)
    # one of them caught in a reading between HAProxy's two increments: no restart for that
    late = {
        "t1": {
            s.name: replace(s, requests=6) if s.name == haproxy.OWN else s
            for s in reading.counted("nosrv")
        }
    }
    assert canary.figures(late, after) == Figures(0, 0, None)
