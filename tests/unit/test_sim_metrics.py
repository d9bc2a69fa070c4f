"""Evaluation metrics on constructed runs, and the trace loader.

Aspects: trigger delay per surge episode (late, pre-emptive, censored, never scaling); scaling
actions per minute; windowed p99; hotspot ratio; trace loading errors name the problem; synthetic
traces are deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest

from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import HEADER, Trace, TraceError, load_trace, surge, synthetic
from xds_control.sim.controller import Action, FleetInfo, FleetObservation
from xds_control.sim.engine import SimConfig, simulate
from xds_control.sim.metrics import compute_metrics, windowed_p99

# work per request = 0.1 s prefill (+ nothing: one output token) -> 10 rps = 1 replica-equivalent
P = cm.ReplicaProfile(name="m", prefill_s_per_token=0.001, decode_base_s=0.01, decode_per_seq_s=0.0,
                      cold_start_s=5.0, reference_batch=1)


def step_trace(low_rps: float, high_rps: float, t_step: float, end: float) -> Trace:
    t1 = np.arange(0.0, t_step, 1.0 / low_rps)
    t2 = np.arange(t_step, end, 1.0 / high_rps)
    t = np.concatenate([t1, t2])
    return Trace("step", t, np.full(len(t), 100, dtype=np.int64), np.ones(len(t), dtype=np.int64))


class At:
    def __init__(self, initial: int, script: dict[float, int]) -> None:
        self.name, self.tick_s, self.target_util, self.lb = "at", 1.0, 0.8, "round_robin"
        self.initial, self.script = initial, script

    def initial_replicas(self, info: FleetInfo) -> int:
        return self.initial

    def step(self, obs: FleetObservation) -> Action:
        n = self.script.get(obs.now)
        return Action(target_replicas=n) if n is not None else Action()


def test_trigger_delay_from_episode_start_to_first_scale_up():
    # load 0.2 -> 2.0 replica-equivalents at t=100 on 1 replica (target 0.8): the 10 s window
    # crosses 0.8 at t = 100 + 10/3, i.e. the sample at 104 (episode start 103).
    tr = step_trace(2.0, 20.0, 100.0, 300.0)
    m = compute_metrics(simulate(tr, At(1, {130.0: 3}), SimConfig(profile=P, warmup_s=0)))
    assert m["surge_episodes"] == 1
    assert m["trigger_delay_s_mean"] == pytest.approx(27.0)
    assert m["trigger_delay_s_max"] == pytest.approx(27.0)
    assert m["untriggered_episodes"] == 0


def test_trigger_delay_zero_when_capacity_was_already_coming():
    tr = step_trace(2.0, 20.0, 100.0, 300.0)
    m = compute_metrics(simulate(tr, At(1, {99.0: 3}), SimConfig(profile=P, warmup_s=0)))
    assert m["trigger_delay_s_mean"] == 0.0


def test_trigger_delay_censored_and_never():
    tr = step_trace(2.0, 20.0, 100.0, 300.0)
    # scales up only after the run: the episode counts its whole length, flagged untriggered
    m = compute_metrics(simulate(tr, At(1, {10.0: 2, 20.0: 1}), SimConfig(profile=P, warmup_s=0)))
    assert m["untriggered_episodes"] == 1
    assert m["trigger_delay_s_max"] == pytest.approx(300.0 - 103.0)
    # a policy that never scales up through the surge: censored at the end of the run
    m = compute_metrics(simulate(tr, At(1, {}), SimConfig(profile=P, warmup_s=0)))
    assert m["trigger_delay_s_mean"] == pytest.approx(300.0 - 103.0)
    assert m["scaling_actions_per_min_max"] == 0
    # a fleet that cannot scale has none
    fixed = At(1, {})
    fixed.scales = False
    assert compute_metrics(simulate(tr, fixed, SimConfig(profile=P, warmup_s=0)))["trigger_delay_s_mean"] is None


def test_actions_per_minute_and_replicas_max():
    tr = step_trace(2.0, 2.0, 100.0, 200.0)
    ctl = At(1, {10.0: 2, 30.0: 3, 65.0: 4, 71.0: 2, 150.0: 1})
    m = compute_metrics(simulate(tr, ctl, SimConfig(profile=P, warmup_s=0)))
    assert m["scaling_actions_per_min_max"] == 3  # 30, 65, 71 (or 10, 30, 65)
    assert m["replicas_max"] == 4
    assert m["recovery_s"] is None


def test_windowed_p99_and_hotspot():
    keys = np.array([0, 0, 0, 2, 2])
    vals = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    out = windowed_p99(keys, vals, 3)
    assert out[0] == 3.0 and np.isnan(out[1]) and out[2] == 5.0
    tr = step_trace(20.0, 20.0, 10.0, 60.0)
    m = compute_metrics(simulate(tr, At(4, {}), SimConfig(profile=P, warmup_s=0)))
    assert m["hotspot_ratio_p99"] >= 1.0
    assert 0.0 < m["gpu_util_mean"] <= 1.0
    assert m["gpu_hours"] == pytest.approx(4 * 60.0 / 3600.0, abs=1e-4)


def test_load_trace_errors(tmp_path):
    with pytest.raises(TraceError, match="does not exist"):
        load_trace(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("time,in,out\n0,1,2\n")
    with pytest.raises(TraceError, match="header"):
        load_trace(bad)
    neg = tmp_path / "neg.csv"
    neg.write_text(",".join(HEADER) + "\n0,-1,2\n")
    with pytest.raises(TraceError, match=">= 0"):
        load_trace(neg)
    ok = tmp_path / "ok.csv"
    ok.write_text(",".join(HEADER) + "\n1.5,10,2\n0.5,20,3\n")
    tr = load_trace(ok)
    assert list(tr.t) == [0.5, 1.5] and list(tr.input_tokens) == [20, 10]
    assert tr.sped_up(2).t.tolist() == [0.25, 0.75]
    with pytest.raises(TraceError):
        tr.sped_up(0)


def test_synthetic_traces_are_deterministic():
    a = surge(1, 10, duration_s=300, ramp_start_s=100, ramp_s=30, hold_s=60, seed=4)
    b = surge(1, 10, duration_s=300, ramp_start_s=100, ramp_s=30, hold_s=60, seed=4)
    assert np.array_equal(a.t, b.t)
    # the hold runs at ~10 rps, the base at ~1 rps
    hold = np.count_nonzero((a.t >= 130) & (a.t < 190)) / 60
    base = np.count_nonzero(a.t < 100) / 100
    assert 7 < hold < 13 and 0.4 < base < 1.8
    c = synthetic(lambda t: 2.0, 50, seed=1, input_tokens=(10, 20))
    assert c.input_tokens.min() >= 10 and c.input_tokens.max() <= 20
