"""Regenerate the tables and figures of EVALUATION.md.

    .venv/bin/python eval/make_evaluation.py [--traces DIR] [--out eval] [--png azure2023_code_w0@x4,...]

For the tuning windows w0 and w1 of the Azure code and conversation traces, at speed-ups 1 and 4,
runs ``--policy all`` plus ``comprehensive@rr`` (the same decisions, routed by plain round robin)
with seed 0, writes ``<trace>.json`` for each, the PNGs named in ``--png``, and prints the Markdown
tables that EVALUATION.md carries. It is the same code path as ``xds-control evaluate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xds_control.fleet import costmodel as cm  # noqa: E402
from xds_control.fleet.trace import load_trace  # noqa: E402
from xds_control.sim.policies import POLICY_NAMES  # noqa: E402
from xds_control.sim.report import ROWS, _fmt, to_json, write_png  # noqa: E402
from xds_control.sim.runner import evaluate  # noqa: E402

TRACES = ("azure2023_code_w0", "azure2023_code_w1", "azure2023_conv_w0", "azure2023_conv_w1")
SPEEDUPS = (1.0, 4.0)
POLICIES = list(POLICY_NAMES) + ["comprehensive@rr"]
DEFAULT_PNG = "azure2023_code_w0@x4,azure2023_conv_w1,azure2023_conv_w0+fail450"


def markdown(title: str, metrics: dict[str, dict]) -> str:
    names = list(metrics)
    lines = [f"#### {title}", "", "| Metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, how in ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(metrics[n].get(key), how) for n in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default=str(ROOT.parent / "shared" / "traces"))
    ap.add_argument("--out", default=str(ROOT / "eval"))
    ap.add_argument("--png", default=DEFAULT_PNG)
    ap.add_argument("--failure", default="azure2023_conv_w0@x1:450",
                    help="TRACE@xS:SECONDS run with --failure-at (empty: none)")
    ap.add_argument("--slow-start", default="azure2023_conv_w1@x1",
                    help="TRACE@xS also run with the slow-start profile (240 s cold start; empty: none)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = set(filter(None, args.png.split(",")))
    runs = [(t, s, None, cm.DEFAULT_PROFILE) for t in TRACES for s in SPEEDUPS]
    if args.failure:
        spec, _, sec = args.failure.partition(":")
        t, _, s = spec.partition("@x")
        runs.append((t, float(s), float(sec), cm.DEFAULT_PROFILE))
    if args.slow_start:
        t, _, s = args.slow_start.partition("@x")
        runs.append((t, float(s), None, cm.get_profile("slow-start")))
    for name, speedup, failure, prof in runs:
        tr = load_trace(Path(args.traces) / f"{name}.csv")
        ev = evaluate(tr, POLICIES, speedup=speedup, seed=0, failure_at=failure, profile=prof)
        tag = ev.trace + (f"+fail{failure:g}" if failure is not None else "")
        if prof is not cm.DEFAULT_PROFILE:
            tag += f"+{prof.name}"
        extra = {"speedup": speedup, "seed": 0, "failure_at": failure, "profile": prof.name}
        (out / f"{tag}.json").write_text(to_json(ev.trace, ev.metrics, extra) + "\n")
        title = f"{name}, speedup {speedup:g}" + (f", one replica killed at {failure:g} s" if failure else "")
        if prof is not cm.DEFAULT_PROFILE:
            title += f", profile {prof.name} (cold start {prof.cold_start_s:g} s)"
        if ev.trace in pngs or tag in pngs:
            write_png(str(out / f"{tag}.png"), title, ev.results)
        print(markdown(title, ev.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
