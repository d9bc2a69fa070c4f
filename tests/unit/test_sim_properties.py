"""Invariants of the simulator over random traces, fleets and actions (hypothesis).

Every request ends in exactly one outcome; served requests have arrival <= first token <= finish
and a first token no later than the timeout; nothing is served by a replica that was not ready;
GPU-seconds equal the billed replica lifetimes; the same seed gives the same run.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import Trace
from xds_control.sim.controller import Action, FleetInfo, FleetObservation
from xds_control.sim.engine import STATUS, SimConfig, simulate

P = cm.ReplicaProfile(
    name="prop", prefill_s_per_token=0.002, decode_base_s=0.02, decode_per_seq_s=0.005, max_batch=4,
    kv_capacity_tokens=2_000, queue_bound=3, cold_start_s=3.0, request_timeout_s=8.0, reference_batch=2,
)


class Random:
    def __init__(self, initial: int, targets: list[int], weights: list[int], lb: str) -> None:
        self.name, self.tick_s, self.target_util, self.lb = "random", 2.0, 0.8, lb
        self.initial, self.targets, self.weights, self.k = initial, targets, weights, 0

    def initial_replicas(self, info: FleetInfo) -> int:
        return self.initial

    def step(self, obs: FleetObservation) -> Action:
        self.k += 1
        t = self.targets[self.k % len(self.targets)]
        w = {e.rid: self.weights[(e.rid + self.k) % len(self.weights)] for e in obs.endpoints}
        return Action(target_replicas=t, weights=w)


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 60))
    gaps = draw(st.lists(st.floats(0.0, 2.0), min_size=n, max_size=n))
    t = np.cumsum(gaps)
    inp = draw(st.lists(st.integers(0, 1200), min_size=n, max_size=n))
    out = draw(st.lists(st.integers(0, 300), min_size=n, max_size=n))
    tr = Trace("prop", t, np.array(inp, dtype=np.int64), np.array(out, dtype=np.int64))
    ctl = Random(
        draw(st.integers(1, 4)),
        draw(st.lists(st.integers(1, 5), min_size=1, max_size=5)),
        draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)),
        draw(st.sampled_from(["least_request", "round_robin"])),
    )
    fail = draw(st.one_of(st.none(), st.floats(0.0, float(t[-1]))))
    return tr, ctl, SimConfig(profile=P, seed=draw(st.integers(0, 3)), failure_at=fail, warmup_s=0,
                              failure_scope=draw(st.sampled_from(["replica", "node"])), gpus_per_node=2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants(sc):
    tr, ctl, cfg = sc
    r = simulate(tr, ctl, cfg)
    assert set(np.unique(r.status).tolist()) <= {STATUS["ok"], STATUS["rejected"], STATUS["timeout"], STATUS["failed"]}
    ok = r.status == STATUS["ok"]
    assert np.all(r.ttft[ok] >= r.arrival[ok] - 1e-9)
    assert np.all(r.finish[ok] >= r.ttft[ok] - 1e-9)
    assert np.all(r.ttft[ok] - r.arrival[ok] <= P.request_timeout_s + 1e-9)
    # at least the prefill of its own prompt
    assert np.all(r.ttft[ok] - r.arrival[ok] >= P.prefill_s_per_token * r.input_tokens[ok] - 1e-9)
    assert np.all(r.replica[ok] >= 0)
    assert r.gpu_seconds >= 0 and r.ts_ready.min() >= 0
    assert np.all(r.ts_ready <= r.ts_provisioned)
    # deterministic
    ctl.k = 0
    r2 = simulate(tr, ctl, cfg)
    assert np.array_equal(r.status, r2.status) and np.array_equal(r.replica, r2.replica)
