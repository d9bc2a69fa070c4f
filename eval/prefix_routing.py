"""Prefix-cache routing side by side in the simulator (EVALUATION.md, "Prefix-cache routing").

Every run uses the comprehensive preset's controller (``make_controller("comprehensive")``) and overrides
only the proxy's routing (``SimConfig(lb=...)``): round robin, least request, ``prefix`` (hash of the
first blocks -> the key's replica by rendezvous hashing, which sheds the first attempt past its prefill
bound, retried by least request: ``spill: least_request``, the default), ``prefix_maglev`` (the same key
-> Maglev with bounded loads: ``spill: maglev``), ``gie`` (the Inference Extension picker's default
scorers) and ``oracle`` (exact cache knowledge, Maglev's load bound).

Workloads: Mooncake w0 and w1 (rows before 1,800 s of ``mooncake_conv_prefix_blocks.csv.gz``), GPU
cache only and with a host tier; a generated shared-prefix workload; Azure conv w0 (no ``hash_ids``).

    .venv/bin/python eval/prefix_routing.py [--traces DIR] [--json OUT] [--quick] [--frontier] [--shapes] [--dip]

``--frontier`` also sweeps the comprehensive preset's ``target_utilization`` under each routing
(``run_frontiers`` with ``comprehensive@ROUTING`` entries, the same profile) and prints GPU-hours at 99 % SLO
attainment per routing, or at the highest attainment the best routing reaches when none reaches 99 %.

``--shapes`` instead runs other generated shared-prefix workloads (:data:`SHAPES`: fewer and more groups, shorter
and longer prefixes, flatter and steeper popularity; another seed than the tuning workload's) at the shipped setting
under least request, ``prefix``, ``gie`` and ``oracle``.

``--dip`` instead measures the prefix-cache hit rate around a scale-up: the tuning shared-prefix workload on a fixed
fleet of :data:`DIP_FLEET` replicas that gains one at :data:`DIP_AT_S` (ready a cold start later), hit rate per 30 s
of arrivals, under least request and ``prefix`` (2 key replicas, 1, and Maglev).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import SharedPrefixShape, Trace, load_trace, shared_prefix
from xds_control.sim.cache_metrics import compute_cache_metrics
from xds_control.sim.controller import Action, FixedController
from xds_control.sim.engine import SimConfig, preroll_for, simulate
from xds_control.sim.frontier import gpu_hours_at, run_frontiers
from xds_control.sim.metrics import compute_metrics
from xds_control.sim.policies import make_controller
from xds_control.sim.routing import RoutingParams

LBS = ("round_robin", "least_request", "prefix", "prefix_maglev", "gie", "oracle")
#: Rows of the table with other routing settings: ``prefix_maglev`` = ``prefix`` with ``spill: maglev``.
VARIANTS = {"prefix_maglev": ("prefix", RoutingParams(spill="maglev"))}
#: Routings swept for GPU-hours at SLO (``--frontier``; the frontier runs take only the default settings).
FRONTIER_LBS = ("round_robin", "least_request", "prefix", "gie", "oracle")
#: ``NAME@SUFFIX`` of each routing (``xds-control evaluate --policy``).
SUFFIX = {"round_robin": "rr", "least_request": "lr", "prefix": "prefix", "gie": "gie", "oracle": "oracle"}
#: Host tier of the "+host" runs: 2,048 blocks of 64 MiB = 128 GiB of host memory per GPU.
HOST_BLOCKS = 2048
KEYS = ("prefix_cache_hit_rate", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "hotspot_ratio_p99", "gpu_hours",
        "slo_attainment", "task_loss_rate")


#: ``--shapes``: (groups, prefix blocks, Zipf exponent) of the other shared-prefix workloads, seed 11.
SHAPES = ((64, 8, 1.0), (1024, 8, 1.0), (256, 4, 1.0), (256, 16, 1.0), (256, 8, 0.6), (256, 8, 1.3))
SHAPE_LBS = ("least_request", "prefix", "gie", "oracle")


DIP_FLEET = 6
DIP_AT_S = 300.0
DIP_WINDOW_S = 30.0


class _StepUp(FixedController):
    """A fixed fleet of DIP_FLEET replicas, one more from DIP_AT_S."""

    def __init__(self, lb: str) -> None:
        super().__init__(lb=lb, name="step-up")
        self.scales = True
        self.tick_s = 1.0

    def initial_replicas(self, info: Any) -> int:
        return DIP_FLEET

    def step(self, obs: Any) -> Action:
        return Action(target_replicas=DIP_FLEET + 1) if obs.now >= DIP_AT_S else Action()


def dip() -> None:
    tr = shared_prefix(SharedPrefixShape(groups=256, prefix_blocks=8, zipf_s=1.0, question_tokens=256,
                                         output_tokens=128, rate_rps=10.0, duration_s=600.0), seed=1)
    starts = np.arange(DIP_AT_S - 2 * DIP_WINDOW_S, DIP_AT_S + 5 * DIP_WINDOW_S, DIP_WINDOW_S)
    head = [f"{int(x - DIP_AT_S):+d}..{int(x - DIP_AT_S + DIP_WINDOW_S):+d} s" for x in starts]
    print("| routing | " + " | ".join(head) + " | the new replica's share from +30 s |")
    print("|---|" + "---:|" * (len(head) + 1))
    for name, lb, rp in (("least_request", "least_request", RoutingParams()),
                         ("prefix (2 key replicas)", "prefix", RoutingParams()),
                         ("prefix (1 key replica)", "prefix", RoutingParams(affinity_choices=1)),
                         ("prefix_maglev", "prefix", RoutingParams(spill="maglev"))):
        res = simulate(tr, _StepUp(lb), SimConfig(lb=lb, routing=rp, warmup_s=0.0))
        assert res.cached_tokens is not None and res.host_cached_tokens is not None
        ok = res.cached_tokens >= 0
        hit = (res.cached_tokens + np.maximum(res.host_cached_tokens, 0)).astype(float)
        inp = res.input_tokens.astype(float)
        cells = []
        for x in starts:
            m = ok & (res.arrival >= x) & (res.arrival < x + DIP_WINDOW_S)
            cells.append(f"{100 * hit[m].sum() / max(inp[m].sum(), 1.0):.1f} %")
        new = int(res.replica.max())
        share = float((res.replica[res.arrival >= DIP_AT_S + DIP_WINDOW_S] == new).mean())
        print(f"| {name} | " + " | ".join(cells) + f" | {100 * share:.1f} % |", flush=True)


def shapes() -> list[tuple[str, Trace]]:
    return [(f"g{g} p{pb} z{z:g}", shared_prefix(SharedPrefixShape(
        groups=g, prefix_blocks=pb, zipf_s=z, question_tokens=256, output_tokens=128, rate_rps=10.0,
        duration_s=600.0), seed=11)) for g, pb, z in SHAPES]


def workloads(traces: str, quick: bool, held_out: bool = False) -> list[tuple[str, Trace, cm.ReplicaProfile]]:
    moon = load_trace(os.path.join(traces, "mooncake_conv_prefix_blocks.csv.gz"))
    gpu = cm.DEFAULT_PROFILE
    host = gpu.with_(host_kv_blocks=HOST_BLOCKS)
    out = []
    if held_out:
        # the judged windows: never used to tune anything on this page
        for k in (2, 3):
            w = moon.window(900.0 * k, 900.0 * (k + 1))
            out.append((f"mooncake w{k}", w, gpu))
            out.append((f"mooncake w{k} +host", w, host))
        for k in (2, 3):
            out.append((f"azure conv w{k}", load_trace(os.path.join(traces, f"azure2023_conv_w{k}.csv")), gpu))
        return out
    for k in (0,) if quick else (0, 1):
        w = moon.window(900.0 * k, 900.0 * (k + 1))
        out.append((f"mooncake w{k}", w, gpu))
        out.append((f"mooncake w{k} +host", w, host))
    sp = shared_prefix(SharedPrefixShape(groups=256, prefix_blocks=8, zipf_s=1.0, question_tokens=256,
                                         output_tokens=128, rate_rps=10.0, duration_s=300.0 if quick else 600.0),
                       seed=1)
    out.append(("shared-prefix g256 p8 z1", sp, gpu))
    out.append(("azure conv w0", load_trace(os.path.join(traces, "azure2023_conv_w0.csv")), gpu))
    return out


def run(trace: Trace, profile: cm.ReplicaProfile, lb: str) -> dict[str, Any]:
    lb, routing = VARIANTS.get(lb, (lb, RoutingParams()))
    cfg = SimConfig(lb=lb, profile=profile, preroll_s=preroll_for(trace), routing=routing)
    res = simulate(trace, make_controller("comprehensive"), cfg)
    m = compute_metrics(res)
    m.update(compute_cache_metrics(res))
    return {k: m.get(k) for k in KEYS}


def fmt(v: Any, key: str) -> str:
    if v is None:
        return "–"
    if key.endswith("_ms"):
        return f"{v:,.0f}"
    if key == "prefix_cache_hit_rate" or key == "slo_attainment" or key == "task_loss_rate":
        return f"{100 * v:.1f} %"
    return f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "traces"))
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="w0 only and a shorter generated workload")
    ap.add_argument("--frontier", action="store_true", help="also GPU-hours at SLO per routing (the frontier)")
    ap.add_argument("--shapes", action="store_true", help="other shared-prefix workloads instead (SHAPES)")
    ap.add_argument("--dip", action="store_true", help="the hit rate around a scale-up instead")
    ap.add_argument("--held-out", action="store_true",
                    help="the judged windows instead: Mooncake w2/w3 (GPU cache and +host) and Azure conv w2/w3")
    a = ap.parse_args(argv)
    if a.dip:
        dip()
        return 0
    rows: list[dict[str, Any]] = []
    if a.shapes:
        keys = ("prefix_cache_hit_rate", "ttft_p50_ms", "ttft_p90_ms", "hotspot_ratio_p99", "gpu_hours",
                "slo_attainment")
        print("| workload | routing | hit rate | TTFT p50 ms | p90 ms | hotspot p99 | GPU-h | SLO |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name, tr in shapes():
            for lb in SHAPE_LBS:
                m = run(tr, cm.DEFAULT_PROFILE, lb)
                rows.append({"workload": name, "lb": lb, **m})
                print("| " + " | ".join([name, lb] + [fmt(m[k], k) for k in keys]) + " |", flush=True)
        if a.json:
            with open(a.json, "w", encoding="utf-8") as fh:
                json.dump(rows, fh, indent=1)
        return 0
    head = ("workload", "routing", "hit rate", "TTFT p50 ms", "p90 ms", "p99 ms", "hotspot p99", "GPU-h", "SLO",
            "loss")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
    for name, tr, prof in workloads(a.traces, a.quick, a.held_out):
        for lb in LBS:
            t0 = time.perf_counter()
            m = run(tr, prof, lb)
            rows.append({"workload": name, "lb": lb, "sim_s": round(time.perf_counter() - t0, 2), **m})
            print("| " + " | ".join([name, lb] + [fmt(m[k], k) for k in KEYS]) + " |", flush=True)
    fronts: list[dict[str, Any]] = []
    if a.frontier:
        print()
        print("| workload | " + " | ".join(FRONTIER_LBS) + " | compared at |")
        print("|---|" + "---:|" * (len(FRONTIER_LBS) + 1))
        for name, tr, prof in workloads(a.traces, a.quick, a.held_out):
            entries = [f"comprehensive@{SUFFIX[lb]}" for lb in FRONTIER_LBS]
            run_ = run_frontiers(tr, entries, profile=prof, attainment=0.99)
            pj = run_.policies_json()
            # run_frontiers compares at the best *baseline's* top attainment; here every routing is a peer
            level = 0.99 if any(pj[e]["gpu_hours_at_slo"] is not None for e in entries) else min(
                0.99, max(pj[e]["best_attainment"] or 0.0 for e in entries))
            cells = []
            for e in entries:
                pts = pj[e]["frontier"]
                g = gpu_hours_at(pts, level)
                cells.append("–" if g is None else f"{g:.2f}")
                fronts.append({"workload": name, "routing": e, "level": level, "gpu_hours": g,
                               "best_attainment": pj[e]["best_attainment"], "frontier": pts})
            print(f"| {name} | " + " | ".join(cells) + f" | {100 * level:.1f} % |", flush=True)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"runs": rows, "frontiers": fronts} if a.frontier else rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
