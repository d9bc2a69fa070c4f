"""Simulator benchmark: the full 1-hour Azure code trace through every policy of ``--policy all`` (or --policies).

    .venv/bin/python bench/bench_sim.py [--trace ../shared/traces/azure2023_code_full.csv]
                                       [--repeat 3] [--speedup 1] [--budget 10] [--json]

Times what ``xds-control evaluate --policy all`` does after start-up: load the CSV, then for each
policy simulate the fleet (the shipped preset through the control step every simulated second) and compute the
metrics. Reports the per-policy and total wall time of each repeat (median and best), the number of
requests per second of wall time, and whether the median total fits the budget (the issue's 10 s
on this 2-core machine). Exits 1 when over budget, 2 when the trace is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xds_control.fleet.trace import load_trace  # noqa: E402
from xds_control.sim.engine import SimConfig, simulate  # noqa: E402
from xds_control.sim.metrics import compute_metrics  # noqa: E402
from xds_control.sim.policies import POLICY_NAMES, make_controller  # noqa: E402

DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "azure2023_code_full.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--speedup", type=float, default=1.0)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds allowed for all policies (median)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--policies", default="", help="comma list (default: every policy of --policy all)")
    args = ap.parse_args()
    if not os.path.isfile(args.trace):
        print(f"trace {args.trace} not found (see ../shared/traces/README.md)", file=sys.stderr)
        return 2
    names = [n for n in args.policies.split(",") if n] or list(POLICY_NAMES)
    t0 = time.perf_counter()
    trace = load_trace(args.trace).sped_up(args.speedup)
    load_s = time.perf_counter() - t0
    per: dict[str, list[float]] = {n: [] for n in names}
    totals: list[float] = []
    metrics: dict[str, dict] = {}
    for _ in range(args.repeat):
        t_all = time.perf_counter()
        for n in names:
            t1 = time.perf_counter()
            res = simulate(trace, make_controller(n), SimConfig(seed=0))
            metrics[n] = compute_metrics(res)
            per[n].append(time.perf_counter() - t1)
        totals.append(time.perf_counter() - t_all + load_s)
    med = statistics.median(totals)
    out = {
        "trace": trace.name,
        "requests": len(trace),
        "simulated_s": trace.duration_s,
        "policies": names,
        "repeat": args.repeat,
        "load_csv_s": round(load_s, 3),
        "total_s_median": round(med, 3),
        "total_s_best": round(min(totals), 3),
        "per_policy_s_median": {n: round(statistics.median(v), 3) for n, v in per.items()},
        "requests_per_wall_s": round(len(trace) * len(names) / med),
        "budget_s": args.budget,
        "within_budget": med <= args.budget,
        "task_loss_rate": {n: m["task_loss_rate"] for n, m in metrics.items()},
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['trace']}: {out['requests']} requests, {out['simulated_s']:.0f} simulated s, "
              f"{len(names)} policies, {args.repeat} repeats")
        for n in names:
            print(f"  {n:<14} {out['per_policy_s_median'][n]:6.3f} s (median)")
        print(f"  total          {med:6.3f} s median, {min(totals):.3f} s best "
              f"(CSV load {load_s:.3f} s); {out['requests_per_wall_s']} simulated requests per wall second")
        print(f"  budget {args.budget:g} s: {'OK' if out['within_budget'] else 'OVER'}")
    return 0 if out["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
