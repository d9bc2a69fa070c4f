"""The fleet simulator against hand-computed cases.

Aspects: one replica with known arrivals gives known TTFTs and completions (prefill priority,
decode steps that slow down with the batch); queue overflow and TTFT timeouts are counted as lost
tasks; the KV cache blocks admission; cold start delays capacity; a failure is replaced after
detection + cold start; Envoy routing (P2C, EDF over unequal weights, weight 0 = out of rotation,
round robin); determinism for a seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import Trace, synthetic
from xds_control.sim.controller import Action, FixedController, FleetInfo, FleetObservation
from xds_control.sim.engine import STATUS, SimConfig, simulate
from xds_control.sim.metrics import compute_metrics

OK, REJ, TMO, FAIL = STATUS["ok"], STATUS["rejected"], STATUS["timeout"], STATUS["failed"]

# 1 ms per prompt token; decode step 10 ms + 10 ms per sequence.
P = cm.ReplicaProfile(
    name="test",
    prefill_s_per_token=0.001,
    decode_base_s=0.01,
    decode_per_seq_s=0.01,
    max_batch=8,
    kv_capacity_tokens=10_000,
    queue_bound=8,
    cold_start_s=5.0,
    request_timeout_s=60.0,
    reference_batch=2,
)


def trace(rows: list[tuple[float, int, int]]) -> Trace:
    a = np.array(rows, dtype=float)
    return Trace("t", a[:, 0], a[:, 1].astype(np.int64), a[:, 2].astype(np.int64))


class Scripted:
    """A controller with a fixed initial size and a script of (time, Action)."""

    def __init__(self, initial: int, script: list[tuple[float, Action]] = (), *, lb: str = "round_robin",
                 tick_s: float = 1.0) -> None:
        self.name = "scripted"
        self.tick_s = tick_s
        self.target_util = 0.8
        self.lb = lb
        self.initial = initial
        self.script = list(script)
        self.seen: list[FleetObservation] = []

    def initial_replicas(self, info: FleetInfo) -> int:
        return self.initial

    def step(self, obs: FleetObservation) -> Action:
        self.seen.append(obs)
        for t, act in self.script:
            if abs(obs.now - t) < 1e-9:
                return act
        return Action()


def test_one_replica_known_latencies():
    tr = trace([(0.0, 100, 3), (0.0, 100, 5), (10.0, 200, 5), (10.05, 100, 1)])
    r = simulate(tr, Scripted(1), SimConfig(profile=P, warmup_s=0))
    # r0 prefill 0-0.1, r1 prefill 0.1-0.2 (decode paused); both decode at batch 2 (30 ms/step):
    # r0 needs 2 steps -> 0.26; r1 2 more steps at batch 1 (20 ms) -> 0.30.
    assert r.ttft[:2] == pytest.approx([0.1, 0.2])
    assert r.finish[:2] == pytest.approx([0.26, 0.30])
    # r2 prefill 10.0-10.2; r3 (one output token) arrives during it, prefills 10.2-10.3 and is done;
    # r2 then decodes 4 steps at batch 1: 10.3 + 0.08.
    assert r.ttft[2:] == pytest.approx([10.2, 10.3])
    assert r.finish[2:] == pytest.approx([10.38, 10.3])
    assert list(r.status) == [OK] * 4
    assert list(r.replica) == [0, 0, 0, 0]


def test_queue_overflow_counts_losses():
    p = P.with_(max_batch=1, queue_bound=2)
    tr = trace([(0.0, 10, 2)] * 5)
    r = simulate(tr, Scripted(1), SimConfig(profile=p, warmup_s=0))
    # one runs, two wait, two find the queue full
    assert list(r.status) == [OK, OK, OK, REJ, REJ]
    m = compute_metrics(r)
    assert m["task_loss_rate"] == pytest.approx(0.4)
    assert m["tasks_lost"] == 2


def test_timeout_without_first_token_is_lost():
    p = P.with_(max_batch=1, queue_bound=10, request_timeout_s=1.0, decode_per_seq_s=0.0)
    # each request: 0.1 s prefill + 40 decode steps of 10 ms = 0.5 s, one at a time
    tr = trace([(0.0, 100, 41)] * 5)
    r = simulate(tr, Scripted(1), SimConfig(profile=p, warmup_s=0))
    assert r.finish[:2] == pytest.approx([0.5, 1.0])
    # the third would get its first token at 1.1 s > 1 s timeout: the client gave up
    assert list(r.status) == [OK, OK, TMO, TMO, TMO]
    m = compute_metrics(r)
    assert m["task_loss_rate"] == pytest.approx(0.6)
    # a request too big for the KV cache can never be served
    r2 = simulate(trace([(0.0, 9_000, 2_000)]), Scripted(1), SimConfig(profile=P, warmup_s=0))
    assert list(r2.status) == [REJ]


def test_kv_cache_blocks_admission():
    p = P.with_(kv_capacity_tokens=300, decode_per_seq_s=0.0)
    tr = trace([(0.0, 100, 101), (0.0, 100, 2)])
    r = simulate(tr, Scripted(1), SimConfig(profile=p, warmup_s=0))
    # r0 reserves 201 tokens; r1 needs 102 -> waits until r0 is done at 0.1 + 100 * 0.01 = 1.1
    assert r.finish[0] == pytest.approx(1.1)
    assert r.ttft[1] == pytest.approx(1.1 + 0.1)
    assert r.finish[1] == pytest.approx(1.2 + 0.01)


def test_cold_start_delays_capacity():
    ctl = Scripted(1, [(1.0, Action(target_replicas=2))])
    rows = [(1.5 + 0.25 * k, 10, 2) for k in range(40)]  # 1.5 .. 11.25 s
    r = simulate(trace(rows), ctl, SimConfig(profile=P, warmup_s=0))
    t = list(r.ts_t)
    assert r.ts_provisioned[t.index(2.0)] == 2
    assert r.ts_ready[t.index(5.0)] == 1  # started at 1.0, cold start 5 s
    assert r.ts_ready[t.index(6.0)] == 2
    before = r.arrival < 6.0
    assert set(r.replica[before]) == {0}
    assert set(r.replica[~before]) == {0, 1}
    assert r.actions == [(1.0, 1, 2)]
    # billed from the start of the cold start
    assert r.gpu_seconds == pytest.approx(r.end_t + (r.end_t - 1.0))


def test_failure_is_replaced_and_recovery_measured():
    rows = [(0.5 * k, 50, 3) for k in range(80)]  # 0 .. 39.5 s, light load
    r = simulate(trace(rows), Scripted(2), SimConfig(profile=P, warmup_s=0, failure_at=10.0, detect_s=2.0, seed=3))
    assert r.failure_at == 10.0 and r.pre_failure_ready == 2
    t = list(r.ts_t)
    assert r.ts_ready[t.index(11.0)] == 1
    assert r.ts_ready[t.index(16.0)] == 1  # replacement started at 12, ready at 17
    assert r.ts_ready[t.index(17.0)] == 2
    m = compute_metrics(r)
    assert m["recovery_s"] == pytest.approx(7.0)
    assert m["recovered"] is True
    assert compute_metrics(simulate(trace(rows), Scripted(2), SimConfig(profile=P, warmup_s=0)))["recovery_s"] is None


def test_failure_retries_queued_and_loses_streaming():
    p = P.with_(max_batch=1, decode_per_seq_s=0.0)
    # both on replica 0 of 1: r0 streaming when it dies, r1 queued -> retried (no replica ready: lost)
    tr = trace([(0.0, 10, 500), (0.0, 10, 5)])
    r = simulate(tr, Scripted(1), SimConfig(profile=p, warmup_s=0, failure_at=1.0))
    assert r.status[0] == FAIL
    assert r.status[1] == REJ  # retried at once, but nothing is ready for 7 s


def test_round_robin_and_p2c():
    rows = [(0.01 * k, 10, 2) for k in range(400)]
    rr = simulate(trace(rows), Scripted(4, lb="round_robin"), SimConfig(profile=P, warmup_s=0))
    assert list(rr.replica[:8]) == [0, 1, 2, 3, 0, 1, 2, 3]
    lr = simulate(trace(rows), Scripted(4, lb="least_request"), SimConfig(profile=P, warmup_s=0, seed=1))
    counts = np.bincount(lr.replica, minlength=4)
    assert counts.min() > 60  # P2C spreads the load


def test_edf_follows_unequal_weights_and_zero_weight_removes():
    rows = [(2.0 + 0.05 * k, 1, 1) for k in range(400)]  # tiny requests: active stays ~0
    ctl = Scripted(3, [(1.0, Action(weights={0: 300, 1: 100, 2: 0}))], lb="least_request")
    r = simulate(trace(rows), ctl, SimConfig(profile=P, warmup_s=0))
    counts = np.bincount(r.replica, minlength=3)
    assert counts[2] == 0
    assert counts[0] / counts[1] == pytest.approx(3.0, rel=0.05)


def test_deterministic_for_a_seed():
    tr = synthetic(lambda t: 5.0, 120, seed=2, input_tokens=(100, 500), output_tokens=(5, 50))
    cfg = SimConfig(profile=P, warmup_s=0, seed=7, failure_at=60.0)
    a = simulate(tr, Scripted(3, lb="least_request"), cfg)
    b = simulate(tr, Scripted(3, lb="least_request"), cfg)
    assert np.array_equal(a.replica, b.replica)
    assert np.array_equal(a.finish, b.finish, equal_nan=True)
    assert compute_metrics(a) == compute_metrics(b)


def test_fixed_fleet_is_sized_for_mean_load():
    tr = synthetic(lambda t: 4.0, 300, seed=0, input_tokens=500, output_tokens=11)
    # work per request: 0.5 s prefill + 10 tokens at (0.01 + 0.02) / 2 = 0.65 s; 4 rps -> 2.6
    r = simulate(tr, FixedController(target_util=0.8), SimConfig(profile=P, warmup_s=0))
    assert r.ts_ready[0] == math.ceil(float(np.mean(r.work)) * len(tr) / r.end_t / 0.8)
    assert r.actions == []


def test_observation_contents():
    ctl = Scripted(2, tick_s=2.0)
    simulate(trace([(0.1 * k, 100, 5) for k in range(50)]), ctl, SimConfig(profile=P, warmup_s=0))
    obs = ctl.seen[0]
    assert obs.now == 2.0 and obs.window_s == 2.0
    assert obs.arrival_rps == pytest.approx(20 / 2.0, abs=0.6)
    assert {e.zone for e in obs.endpoints} == {"zone-a", "zone-b"}
    assert all(e.state == "ready" and 0.0 <= e.gpu_util <= 1.0 for e in obs.endpoints)
    assert obs.ready == 2 and obs.starting == 0


def test_ttft_is_observed_when_the_first_token_comes_out():
    """As vLLM's TTFT histogram (the live signal): a request whose 3 s prefill is scheduled at 0.5 s shows its TTFT
    in the tick after its first token (3.5 s), not in the tick where it was admitted."""
    ctl = Scripted(1, tick_s=1.0)
    simulate(trace([(0.5, 3000, 2)]), ctl, SimConfig(profile=P, warmup_s=0, tail_s=5.0))
    seen = {round(o.now): o.endpoints[0].ttft_mean_s for o in ctl.seen}
    assert seen[1] is None and seen[2] is None and seen[3] is None
    assert seen[4] == pytest.approx(3.0)
    assert seen[5] is None  # observed once


def test_requests_whose_prefill_has_not_started_are_observed_waiting():
    """Prefills run one after another; a request admitted behind others is waiting until its own starts, as vLLM
    counts ``num_requests_waiting`` (and the emulated replica, whose steps take at most max_num_batched_tokens)."""
    ctl = Scripted(1, tick_s=1.0)
    simulate(trace([(0.2, 2000, 5), (0.2, 2000, 5), (0.2, 2000, 5)]), ctl, SimConfig(profile=P, warmup_s=0,
                                                                                        tail_s=8.0))
    seen = {round(o.now): (o.endpoints[0].running, o.endpoints[0].waiting) for o in ctl.seen}
    assert seen[1] == (1, 2)  # the first prefills (0.2-2.2 s), two wait
    assert seen[3] == (2, 1)  # the second started at 2.2 s
    assert seen[5] == (3, 0)


def test_node_failure_kills_every_replica_on_the_node():
    rows = [(0.5 * k, 50, 3) for k in range(80)]
    r = simulate(trace(rows), Scripted(4), SimConfig(profile=P, failure_at=10.0, failure_scope="node",
                                                     warmup_s=0))
    t = list(r.ts_t)
    # zones alternate, so each of the two nodes holds two of the four replicas
    assert r.pre_failure_ready == 4
    assert r.ts_ready[t.index(11.0)] == 2
    assert r.ts_ready[t.index(17.0)] == 4


def test_failure_after_the_end_is_ignored():
    r = simulate(trace([(0.0, 10, 2), (5.0, 10, 2)]), Scripted(1), SimConfig(profile=P, failure_at=100.0))
    assert r.failure_at is None
    assert compute_metrics(r)["recovery_s"] is None


@pytest.mark.parametrize("inp,out", [(1, 1), (2048, 28), (1155, 211), (12_000, 2)])
def test_lone_request_takes_the_cost_models_isolated_latency(inp, out):
    # the same contract the emulated replica keeps, so the simulator and the live demo agree
    p = cm.DEFAULT_PROFILE
    r = simulate(trace([(0.0, inp, out)]), Scripted(1), SimConfig(profile=p, warmup_s=0))
    ttft, total = cm.isolated_latency_s(p, inp, out)
    assert r.ttft[0] == pytest.approx(ttft)
    assert r.finish[0] == pytest.approx(total)


def test_shedding_sends_a_long_prompt_past_a_busy_replica():
    # round robin over 2 replicas: the third request would queue 2 s behind the first one's prefill on replica 0
    rows = [(0.0, 2000, 2), (0.01, 100, 2), (0.02, 2000, 2)]
    plain = simulate(trace(rows), Scripted(2), SimConfig(profile=P, warmup_s=0))
    assert list(plain.replica) == [0, 1, 0]
    assert plain.ttft[2] - 0.02 == pytest.approx(2.0 + 2.0 - 0.02, abs=1e-6)
    assert plain.shed_retries == 0
    shed = simulate(trace(rows), Scripted(2), SimConfig(profile=P, warmup_s=0, shed=(0.5, 3)))
    assert list(shed.replica) == [0, 1, 1]  # replica 0 sheds it (2 s > 0.5 s), replica 1 has 0.09 s queued
    assert shed.ttft[2] - 0.02 == pytest.approx(0.11 + 2.0 - 0.02, abs=1e-6)
    assert shed.shed_retries == 1
    assert (shed.status == OK).all()


def test_the_last_attempt_is_never_shed():
    rows = [(0.0, 2000, 2), (0.01, 2000, 2), (0.02, 2000, 2)]
    r = simulate(trace(rows), Scripted(2), SimConfig(profile=P, warmup_s=0, shed=(0.5, 2)))
    assert list(r.replica) == [0, 1, 1]  # shed by 0, retried on 1 (also busy): the last attempt is accepted
    assert r.shed_retries == 1 and (r.status == OK).all()
    # a controller turns it on and off through its Action, as the plan's PoolPlan.shed does
    ctl = Scripted(2, [(1.0, Action(shed_backlog_s=0.5, shed_attempts=3)), (20.0, Action(shed_backlog_s=0.0))])
    rows2 = [(1.5, 2000, 2), (1.51, 100, 2), (1.52, 2000, 2), (30.0, 2000, 2), (30.01, 100, 2), (30.02, 2000, 2)]
    r2 = simulate(trace(rows2), ctl, SimConfig(profile=P, warmup_s=0))
    assert list(r2.replica) == [0, 1, 1, 0, 1, 0] and r2.shed_retries == 1


def test_preroll_replays_the_start_and_measures_the_trace_alone():
    rows = [(0.5, 100, 3), (2.0, 100, 5), (7.0, 200, 5)]
    plain = simulate(trace(rows), Scripted(2), SimConfig(profile=P, warmup_s=0))
    ctl = Scripted(2, [(2.0, Action(target_replicas=2))])
    pre = simulate(trace(rows), ctl, SimConfig(profile=P, warmup_s=0, preroll_s=5.0))
    # the trace's own requests, on its own clock, served as in a plain run (the pre-roll's two requests are gone)
    assert len(pre.arrival) == 3 and list(pre.arrival) == [0.5, 2.0, 7.0]
    assert np.allclose(pre.ttft - pre.arrival, plain.ttft - plain.arrival)
    assert (pre.status == OK).all()
    # the controller saw the pre-roll (ticks at 1..5 s) before the trace's first second
    assert [o.now for o in ctl.seen][:6] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # samples, GPU time and the end are the trace's only: 2 replicas x its duration
    assert pre.ts_t[0] == 1.0 and pre.end_t == plain.end_t and len(pre.ts_t) == len(plain.ts_t)
    assert pre.gpu_seconds == pytest.approx(2 * plain.end_t) == pytest.approx(plain.gpu_seconds)
    assert pre.actions == []  # the scripted action at 2.0 s fell in the pre-roll
    # a failure time is on the trace's clock
    f = simulate(trace(rows), Scripted(2), SimConfig(profile=P, warmup_s=0, preroll_s=5.0, failure_at=3.0))
    assert f.failure_at == 3.0
