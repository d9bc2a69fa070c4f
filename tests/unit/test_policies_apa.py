"""AIBrix APA baseline: apa.go computeTargetReplicas, the metric window, reconcile cadence and stabilization."""

from __future__ import annotations

import numpy as np
import pytest

from xds_control.core.errors import SpecError
from xds_control.core.model import ServiceSignals, SignalFrame
from xds_control.policies import load_policy_spec
from xds_control.policies.apa import ApaSpec, ApaState, apa_replicas, decide


def spec(**over) -> ApaSpec:
    base = {"policy": "apa", "min_replicas": 1, "max_replicas": 1000}
    return load_policy_spec({**base, **over})  # type: ignore[return-value]  # an ApaSpec: policy is "apa"


def sig(values, now=0.0, current=None, col="kv_cache", taken_at=None) -> ServiceSignals:
    values = np.asarray(values, dtype=float)
    f = SignalFrame.from_arrays([f"p{i}:1" for i in range(values.size)],
                                taken_at=now if taken_at is None else taken_at, **{col: values})
    return ServiceSignals("svc", f, current_replicas=values.size if current is None else current)


# --- worked examples of upstream's apa_test.go (target 30, tolerances 0.1) -----------------------------
@pytest.mark.parametrize(
    "current,use,up_rate,down_rate,expected",
    [
        (2, 45.0, 2.0, 2.0, 3),  # basic scale up: ceil(2 x 1.5)
        (2, 35.0, 2.0, 2.0, 3),  # ceil(2 x 1.167)
        (2, 90.0, 2.0, 2.0, 4),  # ceil(2 x 3) = 6, capped at ceil(2 x 2)
        (2, 90.0, 2.5, 2.0, 5),  # capped at ceil(2.5 x 2)
        (6, 20.0, 2.0, 2.0, 4),  # basic scale down: ceil(6 x 0.667)
        (6, 18.0, 2.0, 2.0, 4),  # ceil(3.6)
        (6, 10.0, 2.0, 2.0, 3),  # ceil(2) = 2, floored at floor(6 / 2)
        (6, 5.0, 2.0, 2.5, 2),  # floored at floor(6 / 2.5)
        (2, 33.0, 2.0, 2.0, 2),  # ratio 1.1 is not above 1 + 0.1
        (2, 27.0, 2.0, 2.0, 2),  # ratio 0.9 is not below 1 - 0.1
    ],
)
def test_upstream_apa_examples(current, use, up_rate, down_rate, expected):
    s = spec(metric="running", target=30.0, max_scale_up_rate=up_rate, max_scale_down_rate=down_rate)
    assert apa_replicas(current, use, s)[0] == expected


def test_defaults_are_aibrix_defaults():
    s = spec()
    assert (s.metric, s.target) == ("kv_cache", 0.5)
    assert (s.up_fluctuation_tolerance, s.down_fluctuation_tolerance) == (0.1, 0.1)
    assert (s.max_scale_up_rate, s.max_scale_down_rate) == (2.0, 2.0)
    assert (s.scale_up_cooldown_window_s, s.scale_down_cooldown_window_s) == (0.0, 300.0)
    assert (s.observe_window_s, s.sync_period_s) == (180.0, 10.0)


def test_kv_cache_above_target_doubles_at_most():
    d, _ = decide(sig([0.7] * 4), None, spec(), 0.0)
    assert d.target_replicas == 6  # ceil(4 x 1.4)
    d, _ = decide(sig([1.2] * 4), None, spec(), 0.0)
    assert d.target_replicas == 8 and "scale_up_limit" in {r.code for r in d.reasons}  # ceil(9.6), capped at 2 x 4


def test_use_per_pod_is_the_mean_over_the_window_of_reconciles():
    s = spec()
    _, st = decide(sig([0.5] * 4, 0.0), None, s, 0.0)
    _, st = decide(sig([0.5] * 4, 10.0), st, s, 10.0)
    d, st = decide(sig([1.1] * 4, 20.0), st, s, 20.0)
    # (0.5 + 0.5 + 1.1) / 3 = 0.7 -> ratio 1.4 -> ceil(5.6)
    assert d.target_replicas == 6
    assert [v for _, v in st.window] == pytest.approx([0.5, 0.5, 1.1])
    # samples older than the 180 s window are dropped
    _, st = decide(sig([0.5] * 4, 210.0), st, s, 210.0)
    assert [t for t, _ in st.window] == [210]


def test_reconciles_every_10_s_and_holds_between():
    s = spec()
    d, st = decide(sig([0.5] * 4, 0.0), None, s, 0.0)
    d, st = decide(sig([1.0] * 4, 5.0), st, s, 5.0)
    assert d.target_replicas == 4 and d.mode == "hold" and "between_syncs" in {r.code for r in d.reasons}
    assert len(st.window) == 1  # nothing collected between reconciles
    d, st = decide(sig([1.0] * 4, 10.0), st, s, 10.0)
    assert d.target_replicas == 6  # (0.5 + 1.0) / 2 = 0.75 -> ceil(6)


def test_scale_down_takes_the_smallest_recommendation_of_the_cooldown_window():
    """stabilizeRecommendation (podautoscaler_controller.go): down -> min over the 300 s window."""
    s = spec(max_scale_down_rate=10.0, observe_window_s=1.0)
    d, st = decide(sig([0.2] * 10, 0.0), None, s, 0.0)  # ratio 0.4 -> 4
    assert d.target_replicas == 4
    d, st = decide(sig([0.4] * 10, 10.0), st, s, 10.0)  # ratio 0.8 -> 8, but 4 is in the window
    assert d.target_replicas == 4 and "stabilized" in {r.code for r in d.reasons}
    d, st = decide(sig([0.4] * 10, 310.0), st, s, 310.0)  # the 4 (t = 0) left the window; 8 (t = 10) is in it
    assert d.target_replicas == 8


def test_documented_cooldown_variant_delays_the_scale_down():
    s = spec(max_scale_down_rate=10.0, observe_window_s=1.0, scale_down_stabilization="max")
    d, st = decide(sig([0.5] * 10, 0.0), None, s, 0.0)  # within tolerance: recommendation 10
    d, st = decide(sig([0.2] * 10, 10.0), st, s, 10.0)  # 4 wanted, but 10 is in the 300 s window
    assert d.target_replicas == 10 and "stabilized" in {r.code for r in d.reasons}
    d, st = decide(sig([0.2] * 10, 300.0), st, s, 300.0)  # t = 0 and t = 10 left the window
    assert d.target_replicas == 4


def test_boundaries_are_corrected_before_metrics():
    d, _ = decide(sig([0.5] * 3, current=0), None, spec(min_replicas=1), 0.0)
    assert d.target_replicas == 0 and "disabled" in {r.code for r in d.reasons}
    d, _ = decide(sig([0.5] * 5, current=5), None, spec(max_replicas=3), 0.0)
    assert d.target_replicas == 3 and "bounds" in {r.code for r in d.reasons}


def test_stale_pods_are_skipped_and_no_metric_means_no_scaling():
    f = SignalFrame.from_arrays(["a:1", "b:1"], kv_cache=[0.9, 0.1], taken_at=[100.0, 0.0])
    d, _ = decide(ServiceSignals("svc", f, 2), None, spec(), 100.0)
    # only a is fetched: 0.9 / 0.5 = 1.8 -> ceil(3.6) = 4
    assert d.target_replicas == 4 and "stale_skipped" in {r.code for r in d.reasons} and "b:1" in d.stale
    f = SignalFrame.from_arrays(["a:1", "b:1"], kv_cache=[0.9, 0.9], taken_at=0.0)
    d, _ = decide(ServiceSignals("svc", f, 2), None, spec(), 100.0)
    assert d.target_replicas == 2 and "no_metrics" in {r.code for r in d.reasons}


def test_state_in_is_not_mutated():
    st0 = ApaState(window=((0, 0.5),), recommendations=((0.0, 4),))
    before = (st0.window, st0.recommendations, st0.next_sync_at)
    _, st1 = decide(sig([0.9] * 4, 10.0), st0, spec(), 10.0)
    assert (st0.window, st0.recommendations, st0.next_sync_at) == before
    assert st1.window != st0.window


@pytest.mark.parametrize(
    "over,fragment",
    [
        ({"target": 0}, "target = 0"),
        ({"observe_window_s": 4000}, "observe_window_s = 4000"),
        ({"max_scale_up_rate": 1.0}, "max_scale_up_rate = 1.0"),
        ({"metric": "tokens"}, "metric = 'tokens'"),
        ({"down_fluctuation_tolerance": 1.5}, "down_fluctuation_tolerance = 1.5"),
    ],
)
def test_spec_errors_name_the_key_and_value(over, fragment):
    with pytest.raises(SpecError) as e:
        spec(**over)
    assert fragment in str(e.value)
