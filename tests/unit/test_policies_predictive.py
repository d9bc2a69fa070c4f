"""Predictive and comprehensive policies: forecast on ramps, pending credit, stabilization, burst mode."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xds_control.core.errors import SpecError
from xds_control.core.model import ServiceSignals, SignalFrame
from xds_control.policies import decide, load_policy_spec
from xds_control.policies.forecast import bucketize, forecast_peak, holt_damped

RPS = {"policy": "predictive", "demand_signal": "rps", "rps_per_replica": 10.0, "max_replicas": 500}


def pspec(**over):
    return load_policy_spec({**RPS, **over})


def cspec(**over):
    return load_policy_spec({**RPS, "policy": "comprehensive", **over})


def sig(ready: int, t: float, rate: float | None = None, gpu: float = 0.5, current: int | None = None):
    f = SignalFrame.from_arrays([f"e{i}:1" for i in range(ready)], gpu_util=gpu, cpu_util=gpu, latency_s=0.05,
                                taken_at=t)
    return ServiceSignals("svc", f, current_replicas=ready if current is None else current, request_rate=rate)


def drive(spec, rates, start=0.0, step=2.0, replicas=5, state=None, apply=False):
    """Call the policy every ``step`` s with the given request rates; optionally apply targets at once."""
    out = []
    t = start
    for r in rates:
        d, state = decide(sig(replicas, t, r), state, spec, t)
        out.append(d)
        if apply:
            replicas = d.target_replicas
        t += step
    return out, state, t


# --- forecasting primitives ---------------------------------------------------------------------
def test_holt_recovers_a_linear_trend():
    y = 2.0 + 0.5 * np.arange(40)
    fit = holt_damped(y, alpha=0.5, beta=0.3, phi=1.0)
    assert fit.trend == pytest.approx(0.5, abs=1e-6)
    assert fit.level == pytest.approx(y[-1], abs=1e-6)
    assert fit.rmse == pytest.approx(0.0, abs=1e-9)
    assert forecast_peak(fit, 10) == pytest.approx(y[-1] + 5.0)


def test_damping_shrinks_long_extrapolation():
    y = 2.0 + 0.5 * np.arange(40)
    undamped = holt_damped(y, 0.5, 0.3, 1.0).at(12)
    damped = holt_damped(y, 0.5, 0.3, 0.9).at(12)
    assert y[-1] < damped < undamped


def test_bucketize_means_and_forward_fills_gaps():
    times = np.array([0.0, 1.0, 25.0, 29.0])
    vals = np.array([1.0, 3.0, 5.0, 7.0])
    y = bucketize(times, vals, now=30.0, bucket_s=10.0, history_s=900.0)
    # ages 30, 29, 5, 1 -> buckets (oldest first) [30,40): 1.0 ; [20,30): 3.0 ; [10,20): empty, forward
    # filled ; [0,10): mean(5, 7) = 6.0
    assert y.tolist() == [1.0, 3.0, 3.0, 6.0]


# --- predictive ---------------------------------------------------------------------------------
def test_flat_demand_provisions_for_90_percent():
    res, _, _ = drive(pspec(), [45.0] * 60, replicas=5)
    assert res[-1].target_replicas == 5  # ceil(4.5 / 0.9)
    assert "forecast" in {r.code for r in res[-1].reasons}


def test_ramp_is_provisioned_ahead_of_demand():
    rates = [10.0 + 0.5 * k * 2 for k in range(200)]  # +0.5 rps per second
    res, _, _ = drive(pspec(), rates, replicas=30)
    d = res[-1]
    demand_now = rates[-1] / 10.0
    reactive = math.ceil(demand_now / 0.9)
    assert d.forecast > demand_now + 3.0  # ~2 min of trend ahead
    assert d.target_replicas > reactive
    assert "trend" in d.explanation


def test_before_min_history_it_acts_on_demand_now():
    d, _ = decide(sig(5, 0.0, 90.0), None, pspec(), 0.0)
    assert d.target_replicas == 10 and "reactive" in {r.code for r in d.reasons}


@pytest.mark.parametrize(
    "ready,current,rate,expected,code",
    [
        (4, 8, 63.0, 8, "pending_credit"),  # ready fleet at 158 %, but want 7 <= 4 ready + 4 starting: ask nothing
        (4, 8, 90.0, 10, "pending_credit"),  # want 10: the 4 starting count, ask 2 more (not 6)
        (4, 4, 90.0, 8, "up_rate"),  # no pending: want 10, limited to x2
    ],
)
def test_pending_replicas_are_credited(ready, current, rate, expected, code):
    d, _ = decide(sig(ready, 0.0, rate, current=current), None, pspec(), 0.0)
    assert d.target_replicas == expected
    assert code in {r.code for r in d.reasons}


def test_no_scale_down_while_replicas_are_starting():
    _, st, t = drive(pspec(), [45.0] * 100, replicas=5)
    d, _ = decide(sig(5, t, 10.0, current=8), st, pspec(), t)
    assert d.target_replicas == 8 and "pending_hold" in {r.code for r in d.reasons}


def test_scale_down_waits_for_the_window_and_at_most_halves():
    s = pspec(scale_down_window_s=120)
    _, st, t = drive(s, [90.0] * 100, replicas=10)  # 200 s at 10 replicas
    res, st, t = drive(s, [9.0] * 90, start=t, replicas=10, state=st, apply=True)
    first_down = next(i for i, d in enumerate(res) if d.target_replicas < 10)
    assert first_down * 2.0 >= 120.0  # every recommendation in the window was still 10
    assert res[first_down].target_replicas >= 5  # at most halves per step
    assert res[-1].target_replicas < 5


def test_actions_are_spread_at_least_10s_apart():
    res, _, _ = drive(pspec(), [10.0 * 1.2**k for k in range(40)], replicas=1, apply=True, step=2.0)
    changes = [d.now for d in res if d.target_replicas != d.current_replicas]
    assert len(changes) >= 3
    assert all(b - a >= 10.0 for a, b in zip(changes, changes[1:], strict=False))
    blocked = [d for d in res if "interval" in {r.code for r in d.reasons}]
    assert blocked and "min 10s" in blocked[0].explanation


def test_actions_are_capped_at_six_per_minute():
    s = pspec(min_action_interval_s=0)
    res, _, _ = drive(s, [10.0 * 2**k for k in range(30)], replicas=1, apply=True, step=1.0)
    changes = [d.now for d in res if d.target_replicas != d.current_replicas]
    for t0 in changes:
        assert sum(1 for t in changes if t0 <= t < t0 + 60) <= 6


def test_load_demand_counts_stale_endpoints_as_saturated():
    s = load_policy_spec({"policy": "predictive", "load_index": {"alpha": 1.0, "beta": 0.0, "gamma": 0.0}})
    f = SignalFrame.from_arrays(["a:1", "b:1", "c:1"], gpu_util=0.3, taken_at=[100.0, 100.0, 0.0])
    d, _ = decide(ServiceSignals("svc", f, 3), None, s, 100.0)
    assert "demand 1.60" in d.explanation  # 0.3 + 0.3 + 1.0
    assert d.stale == ("c:1",)


def test_concurrency_demand_keeps_counting_the_backlog():
    s = load_policy_spec({"policy": "predictive", "demand_signal": "concurrency", "concurrency_per_replica": 32})
    f = SignalFrame.from_arrays(["a:1", "b:1", "c:1"], running=32.0, waiting=[64.0, 64.0, np.nan], taken_at=0.0)
    d, _ = decide(ServiceSignals("svc", f, 3), None, s, 0.0)
    assert "demand 7.00" in d.explanation  # (96 + 96 + 32) / 32
    assert d.target_replicas == 6  # ceil(7 / 0.9) = 8, limited to x2 per step
    with pytest.raises(SpecError) as e:
        load_policy_spec({"policy": "predictive", "demand_signal": "concurrency"})
    assert "concurrency_per_replica" in str(e.value)


def test_rps_demand_needs_rps_per_replica():
    with pytest.raises(SpecError) as e:
        load_policy_spec({"policy": "predictive", "demand_signal": "rps"})
    assert "rps_per_replica" in str(e.value)


# --- comprehensive ------------------------------------------------------------------------------
def test_forecast_miss_enters_burst_mode_and_scales_for_demand_now():
    s = cspec()
    _, st, t = drive(s, [45.0] * 100, replicas=5)
    d, st = decide(sig(5, t, 90.0), st, s, t)
    assert d.mode == "panic" and "panic_enter" in {r.code for r in d.reasons}
    assert d.target_replicas == math.ceil(d.forecast / 0.9 - 1e-9) >= 10  # at least ceil(9 / 0.9), not x2-limited
    assert "up_rate" not in {r.code for r in d.reasons}


def test_burst_mode_never_scales_down_and_exits_after_a_stable_window():
    s = cspec(stable_window_s=60)
    _, st, t = drive(s, [45.0] * 100, replicas=5)
    d, st = decide(sig(5, t, 90.0), st, s, t)
    entered, top = t, d.target_replicas
    res, st, t = drive(s, [45.0] * 120, start=t + 2, replicas=top, state=st, apply=True)
    in_panic = [d for d in res if d.now - entered <= 60]
    assert all(d.target_replicas == top and d.mode == "panic" for d in in_panic)
    exit_d = next(d for d in res if "panic_exit" in {r.code for r in d.reasons})
    assert exit_d.now - entered > 60 and exit_d.mode == "stable"
    assert res[-1].target_replicas < top  # back to normal stabilization afterwards


def test_saturated_fleet_in_burst_grows_by_burst_factor():
    s = cspec(load_index={"alpha": 1.0, "beta": 0.0, "gamma": 0.0}, demand_signal="load")
    f = SignalFrame.from_arrays([f"e{i}:1" for i in range(4)], gpu_util=1.0, taken_at=0.0)
    d, _ = decide(ServiceSignals("svc", f, 4), None, s, 0.0)
    # demand 4.0 -> ceil(4/0.9)=5, ratio 5/4 < 1.3 so no panic on the first tick ...
    assert d.mode == "stable" and d.target_replicas == 5
    f2 = SignalFrame.from_arrays([f"e{i}:1" for i in range(4)], gpu_util=1.5, taken_at=0.0)
    d, _ = decide(ServiceSignals("svc", f2, 4), None, s, 0.0)
    # ... but over-saturated (L 1.5): ceil(6/0.9)=7, ratio 7/4 >= 1.3 -> panic, at least ceil(4*1.5)=6
    assert d.mode == "panic" and d.target_replicas == 7
    assert "saturated" in {r.code for r in d.reasons}


def test_busy_gpus_count_as_saturated_when_the_mean_load_index_cannot_say_it():
    """A busy prefilling replica with no queue reads L ~0.9 once a CPU term is measured, and a replica that has just
    started reads 0: the mean index misses the saturation that the serving replicas' GPUs show."""
    from xds_control.policies.comprehensive import ComprehensiveState

    li = {"alpha": 0.5, "beta": 0.5, "gamma": 0.0}
    keys = [f"e{i}:1" for i in range(4)]
    # three replicas serving at full GPU (L = 0.5 x 1 + 0.5 x 0.2 = 0.6), one just ready and empty (L 0)
    f = SignalFrame.from_arrays(keys, gpu_util=[1.0, 1.0, 1.0, 0.0], cpu_util=[0.2, 0.2, 0.2, 0.0],
                                running=[30.0, 30.0, 30.0, 0.0], waiting=0.0, taken_at=0.0)
    in_burst = ComprehensiveState(panic_since=0.0, last_over_at=0.0)
    d, _ = decide(ServiceSignals("svc", f, 4), in_burst, cspec(load_index=li, demand_signal="load"), 1.0)
    assert d.mode == "panic" and d.target_replicas == 6  # ceil(4 x burst_factor 1.5)
    why = [r for r in d.reasons if r.code == "saturated"]
    assert why and why[0].signal == "gpu" and why[0].value == pytest.approx(1.0)
    # the idle replica is left out of the mean: with it the mean GPU would be 0.75
    d, _ = decide(ServiceSignals("svc", f, 4), in_burst,
                  cspec(load_index=li, demand_signal="load", saturation_gpu=0.8), 1.0)
    assert d.target_replicas == 6
    # switched off, or below the bound: burst mode holds, no saturation growth
    for s in (cspec(load_index=li, demand_signal="load", saturation_gpu=0.0),
              cspec(load_index=li, demand_signal="load", saturation_gpu=1.0)):
        f2 = SignalFrame.from_arrays(keys, gpu_util=[0.99, 0.99, 0.99, 0.0], cpu_util=0.2, running=[30, 30, 30, 0],
                                     taken_at=0.0)
        d, _ = decide(ServiceSignals("svc", f2, 4), in_burst, s, 1.0)
        assert d.target_replicas == 4 and "saturated" not in {r.code for r in d.reasons}


def test_saturated_burst_sizes_by_arrivals_over_completions():
    """The load index is censored at saturation; the gateway's arrivals over the replicas' completions are not."""
    s = cspec(load_index={"alpha": 1.0, "beta": 0.0, "gamma": 0.0}, demand_signal="load")

    def over(rate: float, done_per_replica: float) -> ServiceSignals:
        f = SignalFrame.from_arrays([f"e{i}:1" for i in range(4)], gpu_util=1.5, rps=done_per_replica, taken_at=0.0)
        return ServiceSignals("svc", f, 4, request_rate=rate)

    d, st = decide(over(20.0, 1.0), None, s, 0.0)
    # 20 arrivals/s against 4 completions/s: the fleet is 5x short -> 4 x 5 = 20 (the load index alone asked 7)
    assert d.mode == "panic" and d.target_replicas == 20
    assert "arrivals" in {r.code for r in d.reasons}
    assert st.served == pytest.approx(4.0)
    # smoothed: a tick later completions double, the EWMA (half-life 5 s) moves part of the way
    _, st2 = decide(over(20.0, 2.0), st, s, 1.0)
    assert 4.0 < st2.served < 8.0
    # arrivals at or below completions add nothing; nor does the switch turned off
    d, _ = decide(over(4.0, 1.0), None, s, 0.0)
    assert d.target_replicas == 7 and "arrivals" not in {r.code for r in d.reasons}
    d, _ = decide(over(20.0, 1.0), None, cspec(load_index={"alpha": 1.0, "beta": 0.0, "gamma": 0.0},
                                               demand_signal="load", burst_rate_sizing=False), 0.0)
    assert d.target_replicas == 7
    # the up-rate cap bounds the ratio: 400 arrivals/s over 4 completions/s is x10 at most
    d, _ = decide(over(400.0, 1.0), None, s, 0.0)
    assert d.target_replicas == 40


def test_comprehensive_defaults_turn_on_traffic_shaping():
    s = load_policy_spec({"policy": "comprehensive"})
    assert s.traffic.weighting == "headroom" and s.traffic.ramp_window_s == 60
    assert s.load_index.queue_weight > 0 and s.load_index.kv_weight > 0


def test_holt_winters_learns_a_short_cycle():
    from xds_control.policies.forecast import holt_winters

    m = 6
    cycle = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 5.0])
    y = np.tile(cycle, 5)  # 5 seasons, ends at the end of a cycle
    fit = holt_winters(y, 0.3, 0.1, 0.3, 1.0, m)
    assert fit.season is not None
    assert fit.at(1) == pytest.approx(1.0, abs=0.3) and fit.at(5) == pytest.approx(5.0, abs=0.3)
    assert forecast_peak(fit, 6) == pytest.approx(5.0, abs=0.3)
    assert holt_winters(y[:8], 0.3, 0.1, 0.3, 1.0, m).season is None  # < 2 seasons: plain Holt


def test_seasonal_forecast_provisions_before_a_recurring_burst():
    # a burst of 90 rps every 300 s (60 s long), 10 rps otherwise; ask at t=800, 40 s before the 3rd
    def rate(t):
        return 90.0 if (t % 300) >= 240 else 10.0

    times = np.arange(0.0, 802.0, 2.0)
    plain = pspec(history_s=900, startup_s=60)
    seasonal = pspec(history_s=900, startup_s=60, season_s=300)
    out = {}
    for name, s in (("plain", plain), ("seasonal", seasonal)):
        st = None
        for t in times:
            d, st = decide(sig(5, t, rate(t)), st, s, t)
        out[name] = d
    assert rate(times[-1]) == 10.0  # quiet right now
    assert out["seasonal"].forecast > 2 * out["plain"].forecast
    assert "seasonal" in out["seasonal"].explanation
    with pytest.raises(SpecError) as e:
        pspec(history_s=900, season_s=600)
    assert "history_s >= 2 x season_s" in str(e.value)


# --- demand_signal rate: request rate over a capacity calibrated online ---------------------------
RATE = {"policy": "predictive", "demand_signal": "rate", "max_replicas": 500,
        "load_index": {"alpha": 1.0, "beta": 0.0, "gamma": 0.0}}


def rate_sig(t: float, rate: float, gpu: float, rps: float, waiting: float = 0.0, ready: int = 4):
    f = SignalFrame.from_arrays([f"e{i}:1" for i in range(ready)], gpu_util=gpu, rps=rps, waiting=waiting, taken_at=t)
    return ServiceSignals("svc", f, current_replicas=ready, request_rate=rate)


def test_rate_demand_is_utilisation_until_calibrated_then_rate_over_capacity():
    s = load_policy_spec(RATE)
    state = None
    # 4 replicas at utilisation 0.6, 3 req/s each: 5 req/s per unit of utilisation
    for i in range(29):
        d, state = decide(rate_sig(float(i), 12.0, 0.6, 3.0), state, s, float(i))
    assert "uncalibrated" in {r.code for r in d.reasons}
    assert "demand 2.40" in d.explanation  # summed utilisation before 30 calibration ticks
    d, state = decide(rate_sig(29.0, 12.0, 0.6, 3.0), state, s, 29.0)
    assert "5.00 req/s per replica" in d.explanation
    # saturated: utilisation is censored at 1.0 (no calibration), arrivals double: demand follows the rate
    d, state = decide(rate_sig(30.0, 40.0, 1.0, 10.0), state, s, 30.0)
    assert "demand 8.00" in d.explanation  # 40 / 5, not the censored 4 x 1.0
    assert "5.00 req/s per replica" in d.explanation


def test_rate_calibration_skips_idle_saturated_and_backlogged_ticks():
    s = load_policy_spec(RATE)
    state = None
    t = 0.0
    for gpu, rps, waiting in ((0.3, 0.5, 0.0), (0.9, 9.0, 0.0), (0.6, 1.0, 5.0)):  # idle, saturated, backlog
        for _ in range(40):
            d, state = decide(rate_sig(t, 4 * rps, gpu, rps, waiting), state, s, t)
            t += 1.0
    assert state.cal_n == 0 and "uncalibrated" in {r.code for r in d.reasons}


def test_rate_demand_is_floored_by_the_load_index():
    s = load_policy_spec({**RATE, "load_index": {"alpha": 0.5, "beta": 0.0, "gamma": 0.5, "latency_target_s": 0.2}})
    state = None
    for i in range(31):
        f = SignalFrame.from_arrays([f"e{j}:1" for j in range(4)], gpu_util=0.6, rps=3.0, waiting=0.0,
                                    latency_s=0.4, taken_at=float(i))
        d, state = decide(ServiceSignals("svc", f, 4, request_rate=12.0), state, s, float(i))
    # rate / capacity = 12 / 5 = 2.4; the load index (0.5 x 0.6 + 0.5 x min(2, 0.4 / 0.2)) x 4 = 5.2 is larger
    assert "demand 5.20" in d.explanation
