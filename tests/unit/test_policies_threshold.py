"""Threshold policy (seed rule method): hysteresis, triggers, cooldowns, 6-per-minute cap, stale-as-saturated."""

from __future__ import annotations

import pytest

from xds_control.core.errors import SpecError
from xds_control.core.model import ServiceSignals, SignalFrame
from xds_control.policies import POLICIES, decide, load_policy_spec
from xds_control.policies.threshold import ThresholdSpec, ThresholdState

# L = GPU utilization only, no smoothing: the tests set L directly.
BASE = {
    "policy": "threshold",
    "min_replicas": 1,
    "max_replicas": 20,
    "load_index": {"alpha": 1.0, "beta": 0.0, "gamma": 0.0, "ewma_half_life_s": 0},
    "scale_up_percent": 0.0,
}


def spec(**over) -> ThresholdSpec:
    return load_policy_spec({**BASE, **over})  # type: ignore[return-value]


def sig(n: int, gpu: float, now: float, current: int | None = None, **cols) -> ServiceSignals:
    f = SignalFrame.from_arrays([f"e{i}:1" for i in range(n)], gpu_util=gpu, taken_at=now, **cols)
    return ServiceSignals("svc", f, current_replicas=n if current is None else current)


@pytest.mark.parametrize(
    "load,target,code",
    [
        (0.95, 5, "load_above_high"),
        (0.80, 4, "in_band"),  # at l_high: not above
        (0.60, 4, "in_band"),
        (0.41, 4, "in_band"),
        (0.30, 4, "sustain"),  # below l_low but not yet for down_sustain_s
    ],
)
def test_hysteresis_band_first_tick(load, target, code):
    d, _ = decide(sig(4, load, 0.0), None, spec(), 0.0)
    assert d.target_replicas == target
    assert code in {r.code for r in d.reasons}
    assert d.explanation.startswith("L=")


def test_scale_down_only_after_sustained_low_load():
    s = spec(down_sustain_s=30, cooldown_down_s=0)
    state = None
    targets = []
    for t in (0.0, 10.0, 20.0, 29.0, 30.0):
        d, state = decide(sig(4, 0.2, t), state, s, t)
        targets.append(d.target_replicas)
    assert targets == [4, 4, 4, 4, 3]


def test_low_sustain_resets_when_load_returns_to_band():
    s = spec(down_sustain_s=30, cooldown_down_s=0)
    _, st = decide(sig(4, 0.2, 0.0), None, s, 0.0)
    _, st = decide(sig(4, 0.6, 20.0), st, s, 20.0)  # back in band
    d, st = decide(sig(4, 0.2, 40.0), st, s, 40.0)
    assert d.target_replicas == 4 and st.low_since == 40.0


@pytest.mark.parametrize(
    "cols,signal",
    [
        ({"cpu_util": 0.80}, "cpu_util"),
        ({"gpu_mem": 0.90}, "gpu_mem"),
        ({"latency_s": 0.25}, "latency_s"),
    ],
)
def test_table1_triggers_scale_up_on_their_own(cols, signal):
    d, _ = decide(sig(4, 0.5, 0.0, **cols), None, spec(), 0.0)
    assert d.target_replicas == 5
    assert f"{signal}_above_trigger" in {r.code for r in d.reasons}


def test_disabled_trigger_does_not_fire():
    d, _ = decide(sig(4, 0.5, 0.0, cpu_util=0.95), None, spec(cpu_trigger=None), 0.0)
    assert d.target_replicas == 4


def test_up_cooldown_blocks_a_second_action_within_10s():
    s = spec()
    d1, st = decide(sig(4, 0.95, 0.0), None, s, 0.0)
    d2, st = decide(sig(5, 0.95, 5.0), st, s, 5.0)
    d3, st = decide(sig(5, 0.95, 10.0), st, s, 10.0)
    assert (d1.target_replicas, d2.target_replicas, d3.target_replicas) == (5, 5, 6)
    assert "cooldown" in {r.code for r in d2.reasons}


def test_at_most_six_actions_in_any_minute():
    s = spec(cooldown_up_s=0, max_replicas=100)
    st, n, times = None, 2, []
    for k in range(60):  # one call per second for a minute, always overloaded
        t = float(k)
        d, st = decide(sig(n, 0.99, t), st, s, t)
        if d.target_replicas != n:
            times.append(t)
            n = d.target_replicas
    assert len(times) == 6
    d, st = decide(sig(n, 0.99, 60.0), st, s, 60.0)  # the first action left the window
    assert d.target_replicas == n + 1


def test_percent_step_scales_big_fleets_faster():
    d, _ = decide(sig(40, 0.95, 0.0), None, spec(scale_up_percent=0.25, max_replicas=100), 0.0)
    assert d.target_replicas == 50


def test_stale_samples_count_as_saturated_and_are_explained():
    f = SignalFrame.from_arrays(["a:1", "b:1"], gpu_util=0.1, taken_at=[100.0, 0.0])
    d, _ = decide(ServiceSignals("svc", f, 2), None, spec(), 100.0)
    assert d.load_index == pytest.approx(0.55)  # (0.1 + 1.0) / 2: stale never looks idle
    assert "stale_as_saturated" in {r.code for r in d.reasons}
    assert "b:1" in d.explanation and d.stale == ("b:1",)


def test_all_samples_stale_scales_up_not_down():
    d, _ = decide(sig(4, 0.0, 0.0), None, spec(), 1000.0)
    assert d.target_replicas == 5


def test_bounds_are_enforced_before_anything_else():
    d, _ = decide(sig(3, 0.5, 0.0, current=30), None, spec(max_replicas=20), 0.0)
    assert d.target_replicas == 20 and "bounds" in {r.code for r in d.reasons}


def test_no_ready_endpoints_holds():
    f = SignalFrame.from_arrays(["a:1"], gpu_util=0.9, taken_at=0.0, ready=False)
    d, _ = decide(ServiceSignals("svc", f, 1), None, spec(), 0.0)
    assert d.target_replicas == 1 and "no_ready" in {r.code for r in d.reasons}


def test_ewma_smooths_a_single_spike():
    s = spec(load_index={"alpha": 1.0, "beta": 0.0, "gamma": 0.0, "ewma_half_life_s": 10})
    _, st = decide(sig(4, 0.5, 0.0), None, s, 0.0)
    d, _ = decide(sig(4, 1.0, 2.0), st, s, 2.0)
    assert d.load_index < 0.8 and d.target_replicas == 4


def test_state_is_a_new_immutable_value():
    s = spec()
    st0 = ThresholdState()
    _, st1 = decide(sig(4, 0.95, 0.0), st0, s, 0.0)
    assert st0 == ThresholdState() and st1 is not st0
    with pytest.raises(AttributeError):
        st1.smoothed = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "over,fragment",
    [
        ({"l_high": 3.0}, "l_high = 3.0"),
        ({"l_low": 0.9, "l_high": 0.8}, "l_low (0.9) must be < l_high (0.8)"),
        ({"max_actions_per_minute": 0}, "1 <= max_actions_per_minute <= 600"),
        ({"min_replicas": 5, "max_replicas": 2}, "min_replicas (5) must be <= max_replicas (2)"),
        ({"cooldown_up": 3}, "unknown key"),
    ],
)
def test_spec_errors_name_key_value_and_range(over, fragment):
    with pytest.raises(SpecError) as e:
        load_policy_spec({**BASE, **over})
    assert fragment in str(e.value)


def test_registry_lists_every_policy():
    assert set(POLICIES) == {"threshold", "predictive", "comprehensive", "hpa", "kpa", "apa", "sla"}
