"""Regenerate the tables and figures of EVALUATION.md.

    .venv/bin/python eval/make_evaluation.py [--traces DIR] [--out eval] [--png azure2023_code_w0@x4,...]
                                             [--frontiers azure2023_conv_w0,...|none]

For the tuning windows w0 and w1 of the Azure code and conversation traces, at speed-ups 1 and 4,
runs ``--policy all`` plus ``comprehensive@rr`` (the same decisions, routed by plain round robin)
with seed 0, writes ``<trace>.json`` for each, the PNGs named in ``--png``, and prints the Markdown
tables that EVALUATION.md carries. It is the same code path as ``xds-control evaluate``.

Then the cost frontiers (``xds-control evaluate --frontier``: every policy's knob swept on the shipped presets)
on the w0/w1 windows of all three traces, plus the fixed fleet once more with prefill-backlog shedding
(``fixed + shed``: the comprehensive preset's ``shed_prefill_backlog_s``/``shed_attempts`` given to the fixed
fleet's pool), written to ``frontiers.json`` and printed as the GPU-hours-at-99 %-SLO table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import json  # noqa: E402

from xds_control.config.policy import resolve_policy  # noqa: E402
from xds_control.fleet import costmodel as cm  # noqa: E402
from xds_control.fleet.trace import load_trace  # noqa: E402
from xds_control.sim.engine import PREROLL_S  # noqa: E402
from xds_control.sim.frontier import run_frontiers  # noqa: E402
from xds_control.sim.policies import POLICY_NAMES  # noqa: E402
from xds_control.sim.report import ROWS, _fmt, to_json, write_png  # noqa: E402
from xds_control.sim.runner import evaluate  # noqa: E402

TRACES = ("azure2023_code_w0", "azure2023_code_w1", "azure2023_conv_w0", "azure2023_conv_w1")
SPEEDUPS = (1.0, 4.0)
POLICIES = list(POLICY_NAMES) + ["comprehensive@rr"]
DEFAULT_PNG = "azure2023_code_w0@x4,azure2023_conv_w1,azure2023_conv_w0+fail450"
FRONTIER_TRACES = ("azure2023_conv_w0", "azure2023_conv_w1", "azure2023_code_w0", "azure2023_code_w1",
                   "mooncake_conv_w0", "mooncake_conv_w1")
FRONTIER_POLICIES = ("comprehensive", "threshold", "predictive", "hpa", "kpa", "apa", "sla", "fixed")
SHED_COLUMN = "fixed + shed"


def _cell(f: dict) -> str:
    g = f.get("gpu_hours_at_slo")
    if g is None:
        a = f.get("best_attainment")
        return "—" if a is None else f"({100 * a:.1f} %)"
    return ("<= " if f.get("gpu_hours_at_slo_is_upper_bound") else "") + f"{g:.2f}"


def frontier_table(rows: dict[str, dict[str, dict]], attainment: float) -> str:
    """GPU-hours at ``attainment`` per window and policy; the ratio of comprehensive to the best other column."""
    cols = [*FRONTIER_POLICIES, SHED_COLUMN]
    lines = ["| window | " + " | ".join(cols) + " | comprehensive / best baseline | ... / best fixed (+ shed) |",
             "|---|" + "---:|" * (len(cols) + 2)]
    for name, fr in rows.items():
        at = {k: float(f["gpu_hours_at_slo"]) for k, f in fr.items() if f.get("gpu_hours_at_slo") is not None}
        mine = at.get("comprehensive")
        base = [g for k, g in at.items() if k in FRONTIER_POLICIES and k != "comprehensive"]
        fixed = [g for k, g in at.items() if k in ("fixed", SHED_COLUMN)]
        ratio = f"{mine / min(base):.2f}" if mine is not None and base else "—"
        fratio = f"{mine / min(fixed):.2f}" if mine is not None and fixed else "—"
        lines.append(f"| {name} | " + " | ".join(_cell(fr[k]) for k in cols) + f" | {ratio} | {fratio} |")
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--frontiers", default=",".join(FRONTIER_TRACES),
                    help="windows whose cost frontiers to sweep (comma-separated; 'none': skip)")
    ap.add_argument("--attainment", type=float, default=0.99)
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
        extra = {"speedup": speedup, "seed": 0, "failure_at": failure, "preroll_s": PREROLL_S, "profile": prof.name}
        (out / f"{tag}.json").write_text(to_json(ev.trace, ev.metrics, extra) + "\n")
        title = f"{name}, speedup {speedup:g}" + (f", one replica killed at {failure:g} s" if failure else "")
        if prof is not cm.DEFAULT_PROFILE:
            title += f", profile {prof.name} (cold start {prof.cold_start_s:g} s)"
        if ev.trace in pngs or tag in pngs:
            write_png(str(out / f"{tag}.png"), title, ev.results)
        print(markdown(title, ev.metrics))
    names = [] if args.frontiers == "none" else list(filter(None, args.frontiers.split(",")))
    if names:
        traffic = resolve_policy("comprehensive").traffic
        shed = (traffic.shed_prefill_backlog_s, traffic.shed_attempts) if traffic.shed_prefill_backlog_s else None
        rows: dict[str, dict[str, dict]] = {}
        for name in names:
            tr = load_trace(Path(args.traces) / f"{name}.csv")
            run = run_frontiers(tr, FRONTIER_POLICIES, attainment=args.attainment, seed=0)
            fr = run.policies_json()
            if shed is not None:
                fr[SHED_COLUMN] = run_frontiers(tr, ["fixed"], attainment=args.attainment, seed=0,
                                                shed=shed).policies_json()["fixed"]
            rows[name] = fr
            print(f"frontiers of {name}: {run.runs} simulations", file=sys.stderr)
        (out / "frontiers.json").write_text(json.dumps(
            {"attainment": args.attainment, "seed": 0, "shed": shed, "windows": rows}, indent=1) + "\n")
        print(f"#### Cost frontiers: GPU-hours at {100 * args.attainment:g} % SLO attainment\n")
        print(frontier_table(rows, args.attainment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
