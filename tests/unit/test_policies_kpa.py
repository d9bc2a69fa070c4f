"""KPA baseline: Knative autoscaler.go rules (stable/panic windows, panic hysteresis, rate limits, EBC)."""

from __future__ import annotations

import math

import pytest

from xds_control.core.model import ServiceSignals, SignalFrame
from xds_control.policies import load_policy_spec
from xds_control.policies.kpa import KpaSpec, KpaState, decide, window_average


def spec(**over) -> KpaSpec:
    return load_policy_spec({"policy": "kpa", "min_replicas": 1, "max_replicas": 10_000, **over})  # type: ignore[return-value]  # a KpaSpec: policy is "kpa"


def sig(ready: int, per_pod: float, now: float, current: int | None = None) -> ServiceSignals:
    f = SignalFrame.from_arrays([f"p{i}:1" for i in range(ready)], running=per_pod, waiting=0.0, taken_at=now)
    return ServiceSignals("svc", f, current_replicas=ready if current is None else current)


def run(s: KpaSpec, series, state=None):
    """series: iterable of (t, ready, per_pod); returns [(t, decision)] and the final state."""
    out = []
    for t, ready, per_pod in series:
        d, state = decide(sig(ready, per_pod, t), state, s, t)
        out.append((t, d))
    return out, state


def test_steady_concurrency_at_target_utilization_keeps_the_count():
    # 10 pods x 70 in flight = 700; target 100 x 70 % = 70 per pod -> 10
    res, st = run(spec(), [(float(t), 10, 70.0) for t in range(0, 130, 2)])
    assert all(d.target_replicas == 10 for _, d in res)
    assert res[-1][1].mode == "stable"


def test_new_autoscaler_with_several_pods_starts_in_panic():
    d, st = decide(sig(5, 0.0, 0.0), None, spec(), 0.0)
    assert d.mode == "panic" and st.max_panic_pods == 5 and d.target_replicas == 5
    assert "initial_panic" in {r.code for r in d.reasons}
    d, _ = decide(sig(1, 0.0, 0.0), None, spec(), 0.0)
    assert d.mode == "stable"


def test_burst_enters_panic_when_panic_pods_reach_200_percent_of_ready():
    s = spec()
    _, st = run(s, [(float(t), 10, 70.0) for t in range(0, 122, 2)])  # initial panic long gone
    assert st.panic_time is None
    res, st = run(s, [(float(t), 10, 210.0) for t in range(122, 130, 2)], st)
    modes = [d.mode for _, d in res]
    assert "panic" in modes
    t_enter, d_enter = next((t, d) for t, d in res if d.mode == "panic")
    assert "panic_enter" in {r.code for r in d_enter.reasons}
    # panic window average ceil(panic / 70) / 10 >= 2 ; the desired count follows the panic value
    assert d_enter.target_replicas >= 20
    assert res[-1][1].target_replicas == 30  # panic window full of 2100 -> 30 pods


def test_no_scale_down_in_panic_and_exit_after_a_stable_window():
    s = spec()
    _, st = run(s, [(float(t), 10, 70.0) for t in range(0, 122, 2)])
    _, st = run(s, [(float(t), 10, 210.0) for t in range(122, 132, 2)], st)
    last_over = st.panic_time
    # load drops back to the old total (700) spread over 30 pods
    res, st = run(s, [(float(t), 30, 700.0 / 30) for t in range(132, 260, 2)], st)
    for t, d in res:
        if t <= last_over + 60:
            assert d.target_replicas == 30, t  # never down while panicking
    exit_t = next(t for t, d in res if "panic_exit" in {r.code for r in d.reasons})
    assert exit_t > last_over + 60
    after = [d for t, d in res if t >= exit_t]
    assert after[0].target_replicas < 30 and after[0].target_replicas >= 15  # max scale-down rate 2


@pytest.mark.parametrize(
    "ready,per_pod,rates,expected",
    [
        (10, 0.0, {}, 5),  # floor(10 / max_scale_down_rate 2)
        (10, 0.0, {"max_scale_down_rate": 10.0}, 1),
        (1, 1000.0, {"max_scale_up_rate": 2.0}, 2),  # ceil(2 * 1)
        (1, 1000.0, {}, 15),  # ceil(1000 / 70)
    ],
)
def test_rate_limits(ready, per_pod, rates, expected):
    s = spec(**rates)
    # start from a state that is not in panic (as after a long stable period)
    st = KpaState(initialized=True)
    d, _ = decide(sig(ready, per_pod, 0.0), st, s, 0.0)
    assert d.target_replicas == expected


def test_excess_burst_capacity_formula():
    st = KpaState(initialized=True)
    d, _ = decide(sig(10, 70.0, 0.0), st, spec(), 0.0)
    ebc = next(r for r in d.reasons if r.code == "excess_burst_capacity").value
    assert ebc == math.floor(10 * 100 - 211 - 700)


def test_window_average_uses_the_partial_window_since_first_write():
    buckets = tuple((s, 10.0) for s in range(0, 6))
    assert window_average(buckets, 0, 5, 60.0) == pytest.approx(10.0)  # 6 s of data, not 60
    buckets = tuple((s, float(s >= 54) * 60.0) for s in range(0, 60))
    assert window_average(buckets, 0, 59, 60.0) == pytest.approx(6.0)
    assert window_average(buckets, 0, 59, 6.0) == pytest.approx(60.0)


def test_calls_between_ticks_hold_and_observations_are_still_recorded():
    s = spec()
    st = KpaState(initialized=True)
    d1, st = decide(sig(1, 70.0, 0.0), st, s, 0.0)
    d2, st = decide(sig(1, 700.0, 1.0), st, s, 1.0)
    assert d2.target_replicas == 1 and "between_ticks" in {r.code for r in d2.reasons}
    assert st.buckets[-1] == (1, 700.0)
    d3, st = decide(sig(1, 700.0, 2.0), st, s, 2.0)
    assert d3.target_replicas > 1


def test_scale_to_zero_waits_for_the_grace_period():
    s = spec(min_replicas=0)
    st = KpaState(initialized=True)
    res, st = run(s, [(float(t), 1, 0.0) for t in range(0, 40, 2)], st)
    targets = {t: d.target_replicas for t, d in res}
    assert targets[0.0] == 1 and targets[28.0] == 1 and targets[30.0] == 0


def test_stale_pods_are_not_scraped():
    f = SignalFrame.from_arrays(["a:1", "b:1"], running=[70.0, 700.0], taken_at=[100.0, 0.0])
    d, _ = decide(ServiceSignals("svc", f, 2), KpaState(initialized=True), spec(), 100.0)
    # only a is scraped: 70 per pod x 2 ready = 140 -> 2 pods
    assert d.target_replicas == 2 and "stale_not_scraped" in {r.code for r in d.reasons}


def test_no_data_holds():
    f = SignalFrame.from_arrays(["a:1"], taken_at=0.0)
    d, _ = decide(ServiceSignals("svc", f, 3), KpaState(initialized=True), spec(), 0.0)
    assert d.target_replicas == 3 and "no_data" in {r.code for r in d.reasons}


def test_state_in_is_not_mutated():
    st0 = KpaState(initialized=True)
    before = (st0.buckets, st0.panic_time, st0.max_panic_pods)
    _, st1 = decide(sig(10, 300.0, 0.0), st0, spec(), 0.0)
    assert (st0.buckets, st0.panic_time, st0.max_panic_pods) == before
    assert st1.panic_time == 0.0


# --- bucketing.go WindowAverage after a trailing gap; collector ErrNoData; target.go for rps -------------
def test_window_average_after_a_trailing_gap_divides_by_the_seconds_covered():
    buckets = tuple((s, 10.0) for s in range(0, 60))
    # last write 11 s ago: 49 buckets still in the 60 s window, all at 10 -> 10 (not 490 / 60)
    assert window_average(buckets, 0, 70, 60.0) == pytest.approx(10.0)
    # the 6 s panic window, last write 3 s ago: 3 covered buckets -> 10 (not 30 / 6)
    assert window_average(buckets, 0, 62, 6.0) == pytest.approx(10.0)
    # a whole panic window without data: 0
    assert window_average(buckets, 0, 65, 6.0) == 0.0
    # partial window since the first write *and* a trailing gap: buckets 0..5 written, now 10 -> 60 / 6
    assert window_average(tuple((s, 10.0) for s in range(6)), 0, 10, 60.0) == pytest.approx(10.0)


def test_window_average_counts_gaps_inside_the_window_as_zeros_and_restarts_after_a_window():
    buckets = tuple((s, 10.0) for s in range(0, 60) if not 20 <= s < 30)  # 10 s hole in the middle
    assert window_average(buckets, 0, 59, 60.0) == pytest.approx(500.0 / 60)
    # the panic window's first write restarts after >= 6 s without data: 30..35 -> 6 buckets, not capped by 0
    assert window_average(tuple((s, 6.0) for s in (*range(0, 10), *range(30, 33))), 0, 32, 6.0) == pytest.approx(6.0)


def test_a_scrape_outage_does_not_scale_down():
    """10 pods x 70 for 2 minutes, then every sample goes stale for 10 s: Knative's averages stay at 700."""
    s = spec()
    _, st = run(s, [(float(t), 10, 70.0) for t in range(0, 122, 2)])
    assert st.panic_time is None
    for t in range(122, 132, 2):
        f = SignalFrame.from_arrays([f"p{i}:1" for i in range(10)], running=70.0, waiting=0.0, taken_at=0.0)
        d, st = decide(ServiceSignals("svc", f, 10), st, s, float(t))
        assert d.target_replicas == 10, t
    assert "data_gap" in {r.code for r in d.reasons}
    # the next good scrape fills only the seconds after the outage, not the outage itself
    d, st = decide(sig(10, 70.0, 132.0), st, s, 132.0)
    assert [b for b, _ in st.buckets if 121 < b < 131] == []  # 131 is after the last failed attempt (130)
    # now the hole (122..130) is inside the window and counts as zeros, as in Knative: 700 x 51/60 -> 9 pods
    assert d.target_replicas == 9


def test_no_data_for_a_stable_window_holds():
    s = spec()
    _, st = run(s, [(float(t), 10, 70.0) for t in range(0, 122, 2)])
    f = SignalFrame.from_arrays([f"p{i}:1" for i in range(10)], running=5.0, waiting=0.0, taken_at=0.0)
    d, _ = decide(ServiceSignals("svc", f, 10), st, s, 200.0)
    assert d.target_replicas == 10 and "no_data" in {r.code for r in d.reasons}


def test_rps_target_ignores_container_concurrency():
    """target.go ResolveMetricTarget: for rps the total is the rps target; containerConcurrency is not used."""
    st = KpaState(initialized=True)
    s = spec(metric="rps", container_concurrency=10)
    f = SignalFrame.from_arrays(["a:1"], rps=280.0, taken_at=0.0)
    d, _ = decide(ServiceSignals("svc", f, 1), st, s, 0.0)
    assert d.target_replicas == 2  # ceil(280 / (200 x 0.7)); with cc as the total it would be ceil(280 / 7) = 40


@pytest.mark.parametrize(
    "over,total",
    [
        ({}, 100.0),  # container-concurrency-target-default
        ({"container_concurrency": 10}, 10.0),  # cc without a target annotation
        ({"container_concurrency": 250}, 250.0),
        ({"target": 50, "container_concurrency": 10}, 10.0),  # an explicit target is capped at cc
        ({"target": 50, "container_concurrency": 80}, 50.0),
        ({"metric": "rps"}, 200.0),  # requests-per-second-target-default
        ({"metric": "rps", "target": 30, "container_concurrency": 5}, 30.0),
    ],
)
def test_resolve_metric_target(over, total):
    from xds_control.policies.kpa import total_and_target

    got_total, got_target = total_and_target(spec(**over))
    assert got_total == total and got_target == pytest.approx(total * 0.7)
