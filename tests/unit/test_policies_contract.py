"""Contract shared by all five policies: pure, deterministic, inputs untouched, presets valid, explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xds_control.config.policy import load_policy_file
from xds_control.core.model import Decision, ServiceSignals, SignalFrame
from xds_control.policies import POLICIES, decide, load_policy_spec
from xds_control.policies.kpa import KpaState
from xds_control.policies.kpa import decide as kpa_decide

PRESETS = Path(__file__).resolve().parents[2] / "xds_control" / "config" / "presets"


def signals(now: float, n: int = 6) -> ServiceSignals:
    rng = np.random.default_rng(int(now))
    f = SignalFrame.from_arrays(
        [f"e{i}:1" for i in range(n)],
        gpu_util=rng.uniform(0.2, 1.0, n), cpu_util=rng.uniform(0.1, 0.9, n), latency_s=rng.uniform(0.05, 0.5, n),
        running=rng.uniform(0, 150, n), waiting=rng.uniform(0, 10, n), kv_cache=rng.uniform(0, 1, n),
        rps=rng.uniform(0, 300, n), taken_at=now, ready=[True] * (n - 1) + [False],
    )
    return ServiceSignals("svc", f, current_replicas=n, request_rate=500.0)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_preset_file_is_valid(name):
    spec = load_policy_file(PRESETS / f"{name}.yaml")
    assert spec.policy == name and isinstance(spec, POLICIES[name].spec_cls)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_decide_is_pure_and_deterministic(name):
    spec = load_policy_file(PRESETS / f"{name}.yaml")
    st = None
    for t in range(0, 120, 2):
        sig = signals(float(t))
        snapshot = {c: getattr(sig.frame, c).copy() for c in ("gpu_util", "running", "rps", "taken_at")}
        d1, st1 = decide(sig, st, spec, float(t))
        d2, st2 = decide(sig, st, spec, float(t))  # same inputs again: same answer
        assert (d1.target_replicas, d1.explanation, d1.mode) == (d2.target_replicas, d2.explanation, d2.mode)
        assert st1 == st2 or repr(st1) == repr(st2)
        for c, before in snapshot.items():
            np.testing.assert_array_equal(getattr(sig.frame, c), before)
        assert isinstance(d1, Decision) and d1.policy == name and d1.explanation
        assert spec.min_replicas <= d1.target_replicas <= spec.max_replicas
        st = st1


def test_knative_comment_example_msur_1_1_still_grows_by_one_pod():
    """autoscaler.go: 'MSUR=1.1, OCC=3, RPC=2, TV=1 => ... we definitely need 3 pods' (ceil of 2.2)."""
    spec = load_policy_spec({"policy": "kpa", "target": 1, "target_utilization": 1.0, "max_scale_up_rate": 1.1})
    f = SignalFrame.from_arrays(["a:1", "b:1"], running=1.5, waiting=0.0, taken_at=0.0)
    d, _ = kpa_decide(ServiceSignals("svc", f, 2), KpaState(initialized=True), spec, 0.0)
    assert d.target_replicas == 3


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_reports_stale_samples(name):
    spec = load_policy_file(PRESETS / f"{name}.yaml")
    f = SignalFrame.from_arrays(["a:1", "b:1"], gpu_util=0.5, cpu_util=0.5, latency_s=0.1, running=10.0,
                                rps=5.0, taken_at=[100.0, 0.0])
    d, _ = decide(ServiceSignals("svc", f, 2, request_rate=10.0), None, spec, 100.0)
    assert "b:1" in d.stale
    assert any(r.code.startswith("stale") for r in d.reasons)
    assert "stale" in d.explanation


@pytest.mark.parametrize(
    "source,fragment",
    [
        ("policy: threshold\nl_high: [1,\n", "invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        ({"policy": "hpa", "metrics": [{"signal": "cpu_util", "target": -1}]}, "metrics.0.target = -1"),
        ({"policy": "kpa", "stable_window_s": 1}, "6.0 <= stable_window_s <= 3600.0"),
        ({"policy": "comprehensive", "traffic": {"hotspot_cap": 0.5}}, "traffic.hotspot_cap = 0.5"),
        ({"policy": "comprehensive", "traffic": {"ramp_window_s": 30, "envoy_slow_start_window_s": 10}},
         "would ramp new endpoints twice"),
        ({"policy": "predictive", "history_s": 30}, "60.0 <= history_s <= 3600.0"),
        ("nonexistent/preset.yaml", "cannot read"),
    ],
)
def test_spec_errors_are_clear(source, fragment):
    from xds_control.core.errors import SpecError

    with pytest.raises(SpecError) as e:
        load_policy_file(source)
    assert fragment in str(e.value)
