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
