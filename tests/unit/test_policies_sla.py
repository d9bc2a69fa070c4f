"""Dynamo-SLA-planner-style baseline: per-interval rates, the predictor's rules, capacity at the SLO, the preset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xds_control.config.policy import PRESET_DIR, load_policy_file
from xds_control.core.errors import SpecError
from xds_control.core.model import ServiceSignals, SignalFrame
from xds_control.fleet import costmodel as cm
from xds_control.policies import load_policy_spec
from xds_control.policies.sla import SlaSpec, SlaState, decide, engine_rps, predict_next


def spec(**over) -> SlaSpec:
    base = {"policy": "sla", "min_replicas": 1, "max_replicas": 1000, "rps_per_replica": 2.0}
    return load_policy_spec({**base, **over})  # type: ignore[return-value]  # an SlaSpec: policy is "sla"


def sig(rate: float | None, now: float, current: int = 4, n: int = 4) -> ServiceSignals:
    f = SignalFrame.from_arrays([f"p{i}:1" for i in range(n)], rps=(rate or 0.0) / n, running=1.0, taken_at=now)
    return ServiceSignals("svc", f, current_replicas=current, request_rate=rate)


def run(s: SlaSpec, rates, state=None, current: int = 4, step: float = 1.0, t0: float = 0.0):
    out = []
    t = t0
    for r in rates:
        d, state = decide(sig(r, t, current), state, s, t)
        out.append((t, d))
        t += step
    return out, state


def test_acts_once_per_adjustment_interval_on_the_interval_mean():
    s = spec(adjustment_interval_s=60)
    res, st = run(s, [10.0] * 30 + [14.0] * 30 + [12.0])  # t = 0..60
    assert all(d.mode == "hold" and d.target_replicas == 4 for _, d in res[:-1])
    t, d = res[-1]
    # interval mean = (30 x 10 + 30 x 14 + 12) / 61 -> under 5 intervals of history: the last value
    mean = (30 * 10 + 30 * 14 + 12) / 61
    assert st.series == pytest.approx((mean,))
    assert d.target_replicas == math.ceil(mean / 2.0) == 6
    assert d.forecast == pytest.approx(mean / 2.0)
    assert {"forecast", "capacity"} <= {r.code for r in d.reasons}


def test_predictor_rules_warm_up_constant_and_clipping():
    s = spec()
    assert predict_next((), s)[0] == 0.0
    assert predict_next((3.0, 9.0), s)[0] == 9.0  # fewer than 5 points: the last value
    assert predict_next((4.0,) * 7, s)[0] == 4.0  # constant data predicts the constant
    up = predict_next((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), s)[0]
    assert up > 6.0  # a ramp is extrapolated (damped Holt)
    assert predict_next((60.0, 50.0, 40.0, 30.0, 20.0, 1.0), s)[0] == 0.0  # clipped at 0


def test_a_ramp_is_provisioned_ahead_once_the_predictor_has_five_intervals():
    s = spec(adjustment_interval_s=10)
    rates = [float(2 + i // 10) for i in range(70)] + [9.0]
    res, st = run(s, rates)
    adjust = [(t, d) for t, d in res if d.mode == "stable"]
    assert len(st.series) == 7
    last = adjust[-1][1]
    assert last.forecast is not None and last.forecast * 2.0 > st.series[-1]  # forecast above the last interval
    assert last.target_replicas >= math.ceil(st.series[-1] / 2.0)


def test_no_traffic_skips_the_adjustment_and_leading_idle_intervals_are_not_data():
    s = spec(adjustment_interval_s=10)
    res, st = run(s, [0.0] * 11)
    assert res[-1][1].target_replicas == 4 and "no_traffic" in {r.code for r in res[-1][1].reasons}
    assert st.series == () and not st.seen_traffic
    res, st = run(s, [6.0] * 10, st, t0=11.0)
    assert st.series == pytest.approx((6.0,))
    res, st = run(s, [0.0] * 10, st, t0=21.0)
    assert st.series[-1] == 0.0  # a zero after traffic is data
    assert res[-1][1].target_replicas == 4  # but no traffic still skips the adjustment


def test_bounds_are_min_endpoint_and_the_budget():
    s = spec(adjustment_interval_s=1, max_replicas=5)
    res, _ = run(s, [100.0, 100.0])
    assert res[-1][1].target_replicas == 5 and "bounds" in {r.code for r in res[-1][1].reasons}
    s = spec(adjustment_interval_s=1, min_replicas=2)
    res, _ = run(s, [0.1, 0.1])
    assert res[-1][1].target_replicas == 2


def test_token_capacity_profile_converts_with_the_profiled_mix():
    s = spec(rps_per_replica=None, prefill_tokens_per_s=5000.0, decode_tokens_per_s=1000.0, isl=1000.0, osl=100.0)
    assert engine_rps(s) == pytest.approx(1.0 / (1000 / 5000 + 100 / 1000))  # 3.33 req/s
    s = spec(target_utilization=0.5)
    res, _ = run(replace_interval(s), [8.0, 8.0])
    assert res[-1][1].target_replicas == 8  # 8 req/s over 2 x 0.5


def replace_interval(s: SlaSpec) -> SlaSpec:
    return s.model_copy(update={"adjustment_interval_s": 1.0})


def test_without_a_gateway_rate_demand_is_the_endpoints_rps_and_stale_ones_are_reported():
    f = SignalFrame.from_arrays(["a:1", "b:1"], rps=[3.0, 50.0], taken_at=[100.0, 0.0])
    s = spec(adjustment_interval_s=1)
    _, st = decide(ServiceSignals("svc", f, 2), None, s, 100.0)
    d, st = decide(ServiceSignals("svc", f, 2), st, s, 101.0)
    assert st.series == pytest.approx((6.0,))  # a's 3 req/s extrapolated over 2 ready endpoints; b is stale
    assert d.target_replicas == 3 and "b:1" in d.stale and "stale_not_scraped" in {r.code for r in d.reasons}


def test_state_in_is_not_mutated():
    st0 = SlaState(interval_start=0.0, acc_sum=10.0, acc_n=1, series=(5.0,), seen_traffic=True)
    before = (st0.interval_start, st0.acc_sum, st0.acc_n, st0.series)
    _, st1 = decide(sig(7.0, 200.0), st0, spec(), 200.0)
    assert (st0.interval_start, st0.acc_sum, st0.acc_n, st0.series) == before
    assert st1.series == pytest.approx((5.0, 8.5))


def test_shipped_preset_capacity_is_the_cost_model_rate_at_the_tpot_slo():
    """sla.yaml's rps_per_replica: the request rate at which the default profile's mean TPOT reaches 100 ms."""
    p = cm.DEFAULT_PROFILE
    isl, osl, tpot = 1243.0, 217.0, 0.100
    rate = (tpot - p.decode_base_s) / (tpot * (isl * p.prefill_s_per_token + p.decode_per_seq_s * (osl - 1)))
    batch = rate * (osl - 1) * tpot
    assert batch <= min(p.max_batch, p.kv_capacity_tokens / (isl + osl))
    s = load_policy_file(PRESET_DIR / "sla.yaml")
    assert isinstance(s, SlaSpec) and s.rps_per_replica == pytest.approx(rate, abs=0.005)


@pytest.mark.parametrize(
    "over,fragment",
    [
        ({"rps_per_replica": None}, "a capacity profile is required"),
        ({"prefill_tokens_per_s": 5000.0}, "not both"),
        ({"rps_per_replica": -1}, "rps_per_replica = -1"),
        ({"adjustment_interval_s": 0}, "adjustment_interval_s = 0"),
        ({"target_utilization": 0}, "target_utilization = 0"),
    ],
)
def test_spec_errors_name_the_key_and_value(over, fragment):
    with pytest.raises(SpecError) as e:
        spec(**over)
    assert fragment in str(e.value)


def test_a_surge_scales_up_at_the_next_adjustment():
    s = spec(adjustment_interval_s=10)
    rates = [4.0] * 60 + [20.0] * 25
    res, _ = run(s, rates)
    adjusted = {t: d.target_replicas for t, d in res if d.mode == "stable"}
    assert sorted(adjusted) == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    assert adjusted[50.0] == 2  # 4 req/s over 2 req/s per replica
    # the first interval full of the surge is smoothed by the predictor (14.9 req/s -> 8), the next one catches up
    assert adjusted[60.0] < adjusted[70.0] < adjusted[80.0] and adjusted[80.0] >= 10
    assert np.all([d.target_replicas == 4 for t, d in res if t not in adjusted])  # holds in between
