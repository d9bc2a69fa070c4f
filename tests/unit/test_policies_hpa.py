"""HPA v2 baseline: worked examples from the Kubernetes docs and the replica_calculator/horizontal.go rules."""

from __future__ import annotations

import numpy as np
import pytest

from xds_control.core.model import ServiceSignals, SignalFrame
from xds_control.policies import load_policy_spec
from xds_control.policies.hpa import HpaSpec, decide, metric_replicas


def spec(**over) -> HpaSpec:
    base = {
        "policy": "hpa",
        "min_replicas": 1,
        "max_replicas": 1000,
        "metrics": [{"signal": "rps", "type": "Pods", "target": 100}],
    }
    return load_policy_spec({**base, **over})  # type: ignore[return-value]


def sig(values, now=0.0, current=None, ready=True, col="rps") -> ServiceSignals:
    values = np.asarray(values, dtype=float)
    f = SignalFrame.from_arrays([f"p{i}:1" for i in range(values.size)], ready=ready, taken_at=now, **{col: values})
    return ServiceSignals("svc", f, current_replicas=values.size if current is None else current)


# --- kubernetes.io horizontal-pod-autoscale.md, "Algorithm details" ------------------------------
@pytest.mark.parametrize(
    "per_pod,expected",
    [
        (200.0, 8),  # "200m / 100m == 2.0: the number of replicas will be doubled"
        (50.0, 2),  # "50m / 100m == 0.5: you'll halve the number of replicas"
        (105.0, 4),  # within the 0.1 tolerance: skip scaling
        (91.0, 4),
        (120.0, 5),  # ceil(1.2 * 4)
    ],
)
def test_docs_ratio_examples(per_pod, expected):
    d, _ = decide(sig([per_pod] * 4), None, spec(), 0.0)
    assert d.target_replicas == expected


def test_docs_scale_down_policy_example_80_to_10():
    """Docs 'Scaling Policies': Pods 4 / Percent 10 per 60 s, select Max: 80 -> 72 first, then 72 -> 64."""
    s = spec(behavior={"scale_down": {"policies": [
        {"type": "Pods", "value": 4, "period_s": 60},
        {"type": "Percent", "value": 10, "period_s": 60},
    ]}})
    d, st = decide(sig([12.5] * 80), None, s, 0.0)  # desired ceil(0.125 * 80) = 10
    assert d.target_replicas == 72
    d, st = decide(sig([12.5] * 72, 30.0), st, s, 30.0)  # same period: nothing more may go
    assert d.target_replicas == 72
    d, st = decide(sig([12.5] * 72, 60.0), st, s, 60.0)
    assert d.target_replicas == 64  # "10 % of 72 is 7.2, rounded up to 8"


def test_docs_below_40_replicas_the_pods_policy_wins():
    s = spec(behavior={"scale_down": {"policies": [
        {"type": "Pods", "value": 4, "period_s": 60},
        {"type": "Percent", "value": 10, "period_s": 60},
    ]}})
    d, _ = decide(sig([10.0] * 30), None, s, 0.0)
    assert d.target_replicas == 26


@pytest.mark.parametrize(
    "current,per_pod,expected",
    [
        (1, 1000.0, 5),  # max(100 % -> 2, +4 -> 5)
        (10, 1000.0, 20),  # max(100 % -> 20, +4 -> 14)
        (3, 250.0, 7),  # ceil(2.5 * 3) = 8, limited to max(6, 7) = 7
    ],
)
def test_default_scale_up_limit_is_max_of_100_percent_and_4_pods(current, per_pod, expected):
    d, _ = decide(sig([per_pod] * current), None, spec(), 0.0)
    assert d.target_replicas == expected
    if expected < np.ceil(per_pod / 100 * current):
        assert "scale_up_limit" in {r.code for r in d.reasons}


def test_scale_up_events_within_the_period_count_against_the_limit():
    s = spec(sync_period_s=5)
    d, st = decide(sig([1000.0]), None, s, 0.0)
    assert d.target_replicas == 5
    d, st = decide(sig([1000.0] * 5, 5.0), st, s, 5.0)  # periodStart = 5 - 4 = 1 -> limit max(2, 5) = 5
    assert d.target_replicas == 5
    d, st = decide(sig([1000.0] * 5, 15.0), st, s, 15.0)  # event at t=0 left the 15 s period
    assert d.target_replicas == 10


def test_scale_down_stabilization_takes_the_max_of_the_last_300s():
    s = spec()
    d, st = decide(sig([100.0] * 10), None, s, 0.0)  # recommendation 10 recorded at t=0
    assert d.target_replicas == 10
    for t in range(15, 300, 15):
        d, st = decide(sig([50.0] * 10, float(t)), st, s, float(t))
        assert d.target_replicas == 10, t
        assert "stabilized" in {r.code for r in d.reasons}
    d, st = decide(sig([50.0] * 10, 300.0), st, s, 300.0)
    assert d.target_replicas == 5


def test_between_syncs_the_hpa_holds():
    s = spec()
    d, st = decide(sig([200.0] * 4), None, s, 0.0)
    assert d.target_replicas == 8
    d, st = decide(sig([400.0] * 8, 10.0), st, s, 10.0)
    assert d.target_replicas == 8 and d.mode == "hold"
    d, st = decide(sig([400.0] * 8, 15.0), st, s, 15.0)
    assert d.target_replicas == 16


# --- replica_calculator.go missing / unready / pending rules ------------------------------------
def test_missing_metrics_count_as_target_on_scale_down():
    # 4 pods at 40 (ratio 0.4) + 1 missing: (160 + 100) / 5 = 52 -> ratio 0.52 -> ceil(0.52*5) = 3
    d, _ = decide(sig([40, 40, 40, 40, np.nan]), None, spec(), 0.0)
    assert d.target_replicas == 3
    # without the missing pod rule it would have been ceil(0.4 * 4) = 2


def test_missing_metrics_count_as_zero_on_scale_up_and_a_flip_holds():
    # 2 pods at 150 (ratio 1.5), 2 missing -> 300/4 = 75 -> ratio 0.75 flips direction -> keep 4
    d, _ = decide(sig([150, 150, np.nan, np.nan]), None, spec(), 0.0)
    assert d.target_replicas == 4


def test_pending_pods_count_as_zero_on_scale_up():
    # spec replicas 4, only 2 pods have endpoints (2 Pending) at 200: 400/4 = 100 -> ratio 1.0 -> hold
    d, _ = decide(sig([200, 200], current=4), None, spec(), 0.0)
    assert d.target_replicas == 4
    # and they are ignored on scale-down
    d, _ = decide(sig([20, 20], current=4), None, spec(), 0.0)
    assert d.target_replicas == 1


def test_cpu_resource_metric_ignores_unready_pods_and_missing_is_100_percent():
    s = spec(metrics=[{"signal": "cpu_util", "type": "Resource", "target": 0.5}])
    # 2 ready at 0.9, 2 unready at 0.0 -> unready ignored -> rebalanced as 0 on scale-up:
    # ratio 1.8 -> new ratio (1.8/4)/0.5 = 0.9 -> within tolerance -> hold
    d, _ = decide(sig([0.9, 0.9, 0.0, 0.0], ready=[True, True, False, False], col="cpu_util"), None, s, 0.0)
    assert d.target_replicas == 4
    # scale-down with a missing pod: Resource counts it at 100 % of request (1.0), not at target
    v, ratio, _ = metric_replicas(np.array([0.1, 0.1, 0.1, np.nan]), np.ones(4, bool), 0, 4, 0.5, 0.1, True)
    assert ratio == pytest.approx(0.2)
    assert v == 3  # (0.3 + 1.0) / 4 / 0.5 = 0.65 -> ceil(2.6)


def test_stale_samples_are_missing_metrics_and_explained():
    f = SignalFrame.from_arrays(["a:1", "b:1"], rps=[40.0, 40.0], taken_at=[100.0, 0.0])
    d, _ = decide(ServiceSignals("svc", f, 2), None, spec(), 100.0)
    # a at 40, b missing -> scale-down branch: (40 + 100) / 2 = 70 -> ceil(0.7 * 2) = 2 -> hold
    assert d.target_replicas == 2
    assert "stale_as_missing" in {r.code for r in d.reasons}


def test_largest_metric_proposal_wins():
    s = spec(metrics=[{"signal": "rps", "type": "Pods", "target": 100},
                      {"signal": "running", "type": "Pods", "target": 10}])
    f = SignalFrame.from_arrays(["a:1", "b:1"], rps=[50.0, 50.0], running=[30.0, 30.0], taken_at=0.0)
    d, _ = decide(ServiceSignals("svc", f, 2), None, s, 0.0)
    assert d.target_replicas == 6


def test_an_invalid_metric_blocks_scale_down():
    s = spec(metrics=[{"signal": "rps", "type": "Pods", "target": 100},
                      {"signal": "running", "type": "Pods", "target": 10}])
    f = SignalFrame.from_arrays(["a:1", "b:1", "c:1"], rps=[10.0] * 3, taken_at=0.0)  # running missing everywhere
    d, _ = decide(ServiceSignals("svc", f, 3), None, s, 0.0)
    assert d.target_replicas == 3 and "no_scale" in {r.code for r in d.reasons}


@pytest.mark.parametrize(
    "current,minr,maxr,expected",
    [(0, 1, 10, 0), (12, 1, 10, 10), (1, 3, 10, 3)],
    ids=["zero-spec-replicas-disables", "above-max", "below-min"],
)
def test_reconcile_bounds(current, minr, maxr, expected):
    values = [100.0] * max(1, min(current, 5))
    d, _ = decide(sig(values, current=current), None, spec(min_replicas=minr, max_replicas=maxr), 0.0)
    assert d.target_replicas == expected


# --- the direction guard applies to Pods metrics too (replica_calculator.go calcPlainMetricReplicas) -----
def test_pods_metric_count_change_against_the_ratio_keeps_the_count():
    """4 endpoints still in the frame (one missing) but spec replicas 2, rps at half the target.

    ratio 0.5 -> missing pod at target: (150 + 100) / 4 = 62.5 -> ratio 0.625 (a scale-down ratio) but
    ceil(0.625 x 4) = 3 > 2 replicas: upstream keeps 2 rather than scale *up* on a scale-down ratio.
    """
    d, _ = decide(sig([50.0, 50.0, 50.0, np.nan], current=2), None, spec(), 0.0)
    assert d.target_replicas == 2
    assert "count change would flip direction" in d.explanation
    v, ratio, why = metric_replicas(np.array([50.0, 50.0, 50.0, np.nan]), np.ones(4, bool), 0, 2, 100.0, 0.1, False)
    assert (v, why) == (2, "count change would flip direction") and ratio == pytest.approx(0.5)


def test_resource_missing_pods_count_at_the_target_when_it_is_above_100_percent():
    """GetResourceReplicas: a missing pod on scale-down counts max(100 %, target utilization) of its request."""
    v, ratio, _ = metric_replicas(np.array([0.3, 0.3, 0.3, np.nan]), np.ones(4, bool), 0, 4, 2.0, 0.1, True)
    assert ratio == pytest.approx(0.15)
    assert v == 2  # (0.9 + 2.0) / 4 / 2.0 = 0.3625 -> ceil(1.45); counting it at 100 % would give 1
