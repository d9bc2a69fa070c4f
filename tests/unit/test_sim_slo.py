"""SLO metrics on a hand-computed run: one replica, known costs, every request's TTFT / TPOT worked out by hand.

Profile: prefill 1 ms per prompt token, decode step 10 ms at any batch, timeout 2.5 s, KV cache 10,000 tokens.
Requests (arrival s, prompt, output) and what happens to them on one replica:

==  =======  ======  ======  ================================================  ======  ======  =========
id  arrival  prompt  output  what happens                                      TTFT s  TPOT s  default
==  =======  ======  ======  ================================================  ======  ======  =========
A   0        100     11      prefill 0.1, 10 steps of 0.01                     0.1     0.01    met
B   10       200     1       prefill only                                      0.2     --      met
D   20       1500    1       prefill 1.5                                       1.5     --      met
E   20.0001  100     1       prefill after D's: first token at 21.6            1.5999  --      miss (TTFT > 1.1)
F   30       100     3       0.5 steps, stalled 1 s by G's prefill, 1.5 steps  0.1     0.51    miss (TPOT)
G   30.105   1000    1       prefill 1.0                                       1.0     --      met
H   40       3000    1       prefill 3 s > the 2.5 s timeout: timed out        lost    --      miss
I   50       9000    2000    larger than the KV cache: rejected                lost    --      miss
==  =======  ======  ======  ================================================  ======  ======  =========
"""

from __future__ import annotations

import numpy as np
import pytest

from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import Trace
from xds_control.sim.engine import STATUS, SimConfig, simulate
from xds_control.sim.frontier import SizedFixed
from xds_control.sim.metrics import DEFAULT_SLO, Slo, compute_metrics, request_slo

P = cm.ReplicaProfile(name="hand", prefill_s_per_token=0.001, decode_base_s=0.01, decode_per_seq_s=0.0,
                      request_timeout_s=2.5, kv_capacity_tokens=10_000, cold_start_s=5.0, reference_batch=1)
ROWS = [(0.0, 100, 11), (10.0, 200, 1), (20.0, 1500, 1), (20.0001, 100, 1), (30.0, 100, 3), (30.105, 1000, 1),
        (40.0, 3000, 1), (50.0, 9000, 2000)]


@pytest.fixture(scope="module")
def run():
    t, i, o = (np.array(c) for c in zip(*ROWS, strict=True))
    tr = Trace("hand", t.astype(float), i.astype(np.int64), o.astype(np.int64))
    return simulate(tr, SizedFixed(1), SimConfig(profile=P))


def test_per_request_ttft_tpot_and_met(run):
    rs = request_slo(run)
    assert rs.ttft_s[:6] == pytest.approx([0.1, 0.2, 1.5, 1.5999, 0.1, 1.0], abs=1e-6)
    assert np.isnan(rs.ttft_s[6:]).all()  # lost: no first token
    assert rs.tpot_s[0] == pytest.approx(0.01) and rs.tpot_s[4] == pytest.approx(0.51)
    assert np.isnan(rs.tpot_s[[1, 2, 3, 5, 6, 7]]).all()  # 1-token outputs and lost requests
    assert rs.ttft_bound_s[:6] == pytest.approx([1.1, 1.2, 2.5, 1.1, 1.1, 2.0])
    assert rs.met.tolist() == [True, True, True, False, False, True, False, False]
    assert run.status[6] == STATUS["timeout"] and run.status[7] == STATUS["rejected"]


def test_per_run_slo_metrics(run):
    m = compute_metrics(run)
    assert m["slo_met"] == 4 and m["slo_attainment"] == 0.5  # the two lost requests count as misses
    assert run.end_t == 50.0
    assert m["goodput_rps"] == pytest.approx(4 / 50)
    assert m["goodput_per_gpu_hour"] == pytest.approx(4 / (50 / 3600), rel=1e-6)  # one GPU for 50 s
    # TTFT over served requests, the timed-out one counting as the 2.5 s timeout:
    # sorted [0.1, 0.1, 0.2, 1.0, 1.5, 1.5999, 2.5]
    assert m["ttft_p50_ms"] == pytest.approx(1000.0)
    assert m["ttft_p90_ms"] == pytest.approx(1000 * (1.5999 + 0.4 * (2.5 - 1.5999)), abs=1e-3)
    # TPOT over served multi-token requests: [0.01, 0.51]
    assert m["tpot_p50_ms"] == pytest.approx(260.0)
    assert m["tpot_p99_ms"] == pytest.approx(505.0)
    assert (m["slo_ttft_s"], m["slo_ttft_slack_s"], m["slo_tpot_ms"]) == (None, 1.0, 100.0)
    for k in ("latency_p99_ms", "ttft_p99_ms", "task_loss_rate", "gpu_hours", "wait_slo_ms"):  # kept
        assert k in m
    assert m["task_loss_rate"] == 0.25


@pytest.mark.parametrize(
    "slo,met",
    [
        (Slo(ttft_s=2.0), 5),  # E (1.6 s) now meets; F still misses TPOT
        (Slo(ttft_s=0.15), 1),  # only A (0.1 s, TPOT 10 ms); F has TTFT 0.1 but misses TPOT
        (Slo(tpot_ms=600), 5),  # F's 510 ms TPOT now meets
        (Slo(ttft_slack_s=0.0), 4),  # TTFT = own prefill exactly meets; E (queued) misses
        (Slo(ttft_slack_s=0.0, tpot_ms=5), 3),  # ... and A's 10 ms TPOT misses
    ],
)
def test_slo_settings(run, slo, met):
    m = compute_metrics(run, slo)
    assert m["slo_met"] == met and m["slo_attainment"] == met / 8
    assert m["slo_ttft_s"] == slo.ttft_s and m["slo_tpot_ms"] == slo.tpot_ms


@pytest.mark.parametrize(
    "kw,field",
    [({"ttft_s": 0.0}, "ttft_s"), ({"ttft_s": float("nan")}, "ttft_s"), ({"ttft_slack_s": -1.0}, "ttft_slack_s"),
     ({"tpot_ms": 0.0}, "tpot_ms"), ({"tpot_ms": float("inf")}, "tpot_ms")],
)
def test_bad_slo_names_the_field(kw, field):
    with pytest.raises(ValueError, match=f"Slo.{field}"):
        Slo(**kw)


def test_default_slo_description():
    assert DEFAULT_SLO.describe() == "TTFT <= own prefill + 1 s, TPOT <= 100 ms"
    assert Slo(ttft_s=2).describe() == "TTFT <= 2 s, TPOT <= 100 ms"
