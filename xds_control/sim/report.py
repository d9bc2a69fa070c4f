"""Output of an evaluation: the Table-2-shaped terminal table, the PNG, and the JSON object."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xds_control.sim.engine import SimResult
from xds_control.sim.metrics import LOAD_WINDOW_S, windowed_p99

__all__ = ["ROWS", "dumps", "to_json", "render_table", "write_png", "render_frontier_table", "write_frontier_png"]

#: (label, metric key, formatter) in the order of the seed paper's Table 2, then ours.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("Trigger delay mean (s)", "trigger_delay_s_mean", "f1"),
    ("Trigger delay max (s)", "trigger_delay_s_max", "f1"),
    ("Peak latency (ms)", "latency_peak_ms", "f0"),
    ("Latency p50 (ms)", "latency_p50_ms", "f0"),
    ("Latency p99 (ms)", "latency_p99_ms", "f0"),
    ("TTFT p99 (ms)", "ttft_p99_ms", "f0"),
    ("GPU util mean (%)", "gpu_util_mean", "pct"),
    ("Node recovery (s)", "recovery_s", "f1"),
    ("Task loss (%)", "task_loss_rate", "pct2"),
    ("Overload time (%)", "overload_time_frac", "pct"),
    ("Hotspot ratio p99", "hotspot_ratio_p99", "f2"),
    ("GPU-hours", "gpu_hours", "f2"),
    ("Energy (kWh)", "energy_kwh", "f2"),
    ("Actions/min max", "scaling_actions_per_min_max", "int"),
    ("Replicas max", "replicas_max", "int"),
    ("SLO attainment (%)", "slo_attainment", "pct2"),
    ("Goodput (req/s)", "goodput_rps", "f2"),
    ("Goodput / GPU-hour", "goodput_per_gpu_hour", "f0"),
    ("TTFT p50 (ms)", "ttft_p50_ms", "f0"),
    ("TTFT p90 (ms)", "ttft_p90_ms", "f0"),
    ("TPOT p50 (ms)", "tpot_p50_ms", "f1"),
    ("TPOT p99 (ms)", "tpot_p99_ms", "f1"),
)
#: Rows shown only when some run has a value (the prefix cache exists only for traces with hash_ids).
OPTIONAL_ROWS: tuple[tuple[str, str, str], ...] = (
    ("Prefix-cache hit rate (%)", "prefix_cache_hit_rate", "pct"),
)


def _fmt(v: Any, how: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isnan(v):
        return "—"
    if how == "pct":
        return f"{100 * v:.1f}"
    if how == "pct2":
        return f"{100 * v:.2f}"
    if how == "int":
        return f"{int(v)}"
    if how.startswith("f"):
        return f"{float(v):.{int(how[1:])}f}"
    return str(v)


def to_json(trace: str, metrics: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> str:
    """The ``--json`` object: ``{"trace": ..., "policies": {NAME: {...}}}`` plus ``extra`` keys."""
    obj: dict[str, Any] = {"trace": trace}
    if extra:
        obj.update(extra)
    obj["policies"] = {k: dict(v) for k, v in metrics.items()}
    return json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False)


def dumps(obj: Any) -> str:
    """``obj`` as indented JSON, NaN and infinities as null."""
    return json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False)


def _finite(x: Any) -> Any:
    """NaN and infinities become null (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def render_table(title: str, metrics: Mapping[str, Mapping[str, Any]], console: Any = None) -> None:
    """Print the comparison table with rich: one row per metric, one column per policy."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("Metric", style="bold", no_wrap=True)
    for name in metrics:
        table.add_column(name, justify="right")
    for label, key, how in ROWS:
        table.add_row(label, *(_fmt(m.get(key), how) for m in metrics.values()))
    for label, key, how in OPTIONAL_ROWS:
        if any(m.get(key) is not None for m in metrics.values()):
            table.add_row(label, *(_fmt(m.get(key), how) for m in metrics.values()))
    console.print(table)


def _series(res: SimResult) -> dict[str, np.ndarray]:
    n_win = max(1, int(math.ceil(res.end_t / LOAD_WINDOW_S)))
    served = np.isfinite(res.finish)
    done_bin = np.minimum((res.finish[served] // LOAD_WINDOW_S).astype(np.int64), n_win - 1)
    lat = res.finish[served] - res.arrival[served]
    p99 = windowed_p99(done_bin, lat, n_win)
    k = max(1, int(round(LOAD_WINDOW_S / res.sample_s)))
    util = np.convolve(res.ts_util, np.ones(k) / k, mode="same") if len(res.ts_util) else res.ts_util
    return {
        "win_t": (np.arange(n_win) + 1) * LOAD_WINDOW_S,
        "p99_s": p99,
        "util": util,
    }


def write_png(path: str, title: str, results: Sequence[SimResult]) -> str:
    """Offered load, ready replicas, p99 latency and GPU utilisation over time, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    if results:
        r0 = results[0]
        n_win = max(1, int(math.ceil(r0.end_t / LOAD_WINDOW_S)))
        counts = np.bincount(np.minimum((r0.arrival // LOAD_WINDOW_S).astype(np.int64), n_win - 1), minlength=n_win)
        axes[0].step((np.arange(n_win) + 1) * LOAD_WINDOW_S, counts / LOAD_WINDOW_S, where="pre", color="black", lw=0.8)
    axes[0].set_ylabel("offered req/s\n(10 s bins)")
    for res in results:
        s = _series(res)
        label = res.policy
        axes[1].plot(res.ts_t, res.ts_ready, lw=1.0, label=label)
        axes[2].plot(s["win_t"], s["p99_s"], lw=1.0, label=label)
        axes[3].plot(res.ts_t, 100 * s["util"], lw=0.8, label=label)
        if res.failure_at is not None:
            for ax in axes:
                ax.axvline(res.failure_at, color="red", ls=":", lw=0.8)
    axes[1].set_ylabel("ready replicas")
    axes[2].set_ylabel("p99 latency (s)\n(10 s windows)")
    axes[2].set_yscale("log")
    axes[3].set_ylabel("GPU util (%)\n(10 s mean)")
    axes[3].set_xlabel("simulated time (s)")
    axes[1].legend(loc="upper left", fontsize=8, ncol=min(len(results), 6))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def render_frontier_table(title: str, policies: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any],
                          console: Any = None) -> None:
    """Print the cost frontiers: per policy its knob, points, best attainment and GPU-hours at the target."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    common = summary.get("common_attainment")
    target = float(summary["attainment_target"])
    table = Table(title=title, title_justify="left")
    for col in ("Policy", "Knob", "Points", "Best attainment (%)", f"GPU-h at {100 * target:g} %"):
        table.add_column(col, justify="left" if col in ("Policy", "Knob") else "right")
    if common is not None:
        table.add_column(f"GPU-h at {100 * common:.2f} %", justify="right")
    for name, f in policies.items():
        at = _fmt(f["gpu_hours_at_slo"], "f3")
        if f.get("gpu_hours_at_slo_is_upper_bound"):
            at = "<= " + at  # the sweep's cheapest point already meets the target
        row = [name, f["knob"], str(len(f["frontier"])), _fmt(f["best_attainment"], "pct2"), at]
        if common is not None:
            row.append(_fmt(f.get("gpu_hours_at_common_attainment"), "f3"))
        table.add_row(*row)
    console.print(table)
    note = str(summary.get("note", ""))
    if summary.get("best_baseline"):
        gh = _fmt(summary.get("best_baseline_gpu_hours"), "f3")
        note += f"; best baseline: {summary['best_baseline']} ({gh} GPU-h)"
    if summary.get("subject_vs_best_baseline") is not None:
        note += f"; {summary['subject']} / best baseline = {summary['subject_vs_best_baseline']:.3f}"
    if note:
        console.print(note)
    for name, f in policies.items():
        pts = ", ".join(f"{p['value']:g} -> {p['gpu_hours']:.2f} GPU-h {100 * p['slo_attainment']:.2f} %"
                        for p in f["frontier"])
        console.print(f"{name} ({f['knob']}): {pts}", highlight=False)
        for sk in f.get("skipped", ()):
            console.print(f"  skipped {f['knob']}={sk['value']}: {sk['reason']}", highlight=False)


def write_frontier_png(path: str, title: str, policies: Mapping[str, Mapping[str, Any]], target: float,
                       common: float | None = None) -> str:
    """GPU-hours (x, log scale) against SLO attainment (y), one line per policy, the target dashed; the right
    panel zooms on the attainments near the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    low = min(target, common if common is not None else target)
    for ax in axes:
        for name, f in policies.items():
            pts = f["frontier"]
            if pts:
                ax.plot([p["gpu_hours"] for p in pts], [100 * p["slo_attainment"] for p in pts], marker="o", ms=3.5,
                        lw=1.2, label=name)
        ax.axhline(100 * target, color="black", ls="--", lw=0.8, label=f"target {100 * target:g} %")
        if common is not None:
            ax.axhline(100 * common, color="grey", ls=":", lw=0.8, label=f"compared at {100 * common:.2f} %")
        ax.set_xscale("log")
        ax.set_xlabel("GPU-hours (log scale)")
        ax.set_ylabel("SLO attainment (%)")
        ax.grid(True, which="both", lw=0.3)
    axes[1].set_ylim(max(0.0, 100 * low - 5.0), 100.3)
    axes[1].set_title("near the target", fontsize=9)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
