"""``xds-control evaluate``: replay a request trace through every policy in the fleet simulator.

Three modes:

* default: prints the seed paper's Table 2 plus the SLO metrics (one column per policy) with rich, or with
  ``--json`` one JSON object ``{"trace": ..., "policies": {NAME: {metric: value}}}``; ``--out DIR`` also writes
  ``<trace>.json`` and ``<trace>.png`` there.
* ``--frontier``: sweeps each policy's main knob and reports its cost frontier (GPU-hours against SLO
  attainment) and the GPU-hours it needs to reach ``--attainment`` (:mod:`xds_control.sim.frontier`);
  ``--out DIR`` writes ``<trace>.frontier.json`` and ``<trace>.frontier.png``.
* ``--config FILE``: what-if before enabling: every autoscaled pool of a serve config replayed with its resolved
  policy (preset or file + overrides) at the config's ``controller.tick_s``, next to the ``--policy``
  alternatives (:func:`xds_control.sim.runner.evaluate_config`); ``--out DIR`` writes ``<trace>.whatif.json``
  and one ``<trace>.<service>-<pool>.png`` per pool.

The request SLO (TTFT <= own prefill + 1 s, TPOT <= 100 ms by default) is set with ``--slo-ttft-s``,
``--slo-ttft-slack-s`` and ``--slo-tpot-ms``. Metric definitions: :mod:`xds_control.sim.metrics` and
EVALUATION.md. Invalid input exits with status 2 and a message naming the option and value.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import typer

__all__ = ["register", "evaluate_cmd"]


def _fail(option: str, value: object, why: str) -> typer.Exit:
    typer.echo(f"Error: invalid value for {option}: {value!r}: {why}", err=True)
    return typer.Exit(code=2)


def evaluate_cmd(
    trace: str = typer.Option(..., "--trace", metavar="FILE", help="CSV with header timestamp_s,input_tokens,output_tokens."),
    policy: str = typer.Option(
        "all", "--policy", metavar="NAME,...|all",
        help="threshold, predictive, comprehensive, hpa, kpa, apa, sla, fixed, or all; NAME@rr / NAME@lr / NAME@prefix / NAME@gie / NAME@oracle choose the routing (round robin, least request, prefix affinity, the GIE picker, an oracle). "
        "With --config: the alternatives compared with each pool's own policy.",
    ),
    speedup: float = typer.Option(1.0, "--speedup", metavar="X", help="Divide the time axis by X (X > 1 turns the trace into a surge)."),
    failure_at: float | None = typer.Option(
        None, "--failure-at", metavar="SECONDS", help="Kill one replica at this simulated second (after speed-up)."
    ),
    failure_scope: str = typer.Option("replica", "--failure-scope", metavar="replica|node", help="What --failure-at kills."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the simulator's random choices (routing, failure victim)."),
    out: str | None = typer.Option(None, "--out", metavar="DIR", help="Also write the JSON and the PNG here."),
    profile: str | None = typer.Option(
        None, "--profile", metavar="NAME",
        help="Replica cost-model profile (default llama3-8b-48gb; with --config, each pool's replica.profile).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    slo_ttft_s: float | None = typer.Option(
        None, "--slo-ttft-s", metavar="SECONDS", help="A fixed TTFT bound for every request (default: own prefill + slack)."
    ),
    slo_ttft_slack_s: float | None = typer.Option(
        None, "--slo-ttft-slack-s", metavar="SECONDS", help="TTFT bound = the request's own prefill time + this (default 1)."
    ),
    slo_tpot_ms: float = typer.Option(100.0, "--slo-tpot-ms", metavar="MS", help="Bound on the time per output token after the first."),
    frontier: bool = typer.Option(False, "--frontier", help="Sweep each policy's main knob: GPU-hours against SLO attainment."),
    attainment: float = typer.Option(0.99, "--attainment", metavar="FRACTION", help="--frontier: the SLO attainment target."),
    workers: int = typer.Option(2, "--workers", metavar="N", help="--frontier: simulation processes (1 or 2)."),
    preroll_s: float = typer.Option(
        300.0, "--preroll-s", metavar="SECONDS",
        help="Replay the trace's first SECONDS (at most a third of it) before it and measure only the trace itself, "
        "so that autoscalers are judged after adapting to its load, as a running one would be (0 = none: from the "
        "warm-start size).",
    ),
    config: str | None = typer.Option(
        None, "--config", metavar="FILE", help="What-if: replay every autoscaled pool of this serve config."
    ),
) -> None:
    """Replay a trace through the policies in the fleet simulator and compare them (the seed's Table 2 + SLOs)."""
    from xds_control.fleet import costmodel as cm
    from xds_control.fleet.trace import TraceError, load_trace
    from xds_control.sim import policies as pol
    from xds_control.sim.metrics import Slo

    if not (math.isfinite(speedup) and speedup > 0):
        raise _fail("--speedup", speedup, "must be a number > 0")
    if failure_at is not None and not (math.isfinite(failure_at) and failure_at >= 0):
        raise _fail("--failure-at", failure_at, "must be a number of seconds >= 0")
    if failure_scope not in ("replica", "node"):
        raise _fail("--failure-scope", failure_scope, "must be 'replica' or 'node'")
    if slo_ttft_s is not None and not (math.isfinite(slo_ttft_s) and slo_ttft_s > 0):
        raise _fail("--slo-ttft-s", slo_ttft_s, "must be a number of seconds > 0")
    if slo_ttft_slack_s is not None:
        if not (math.isfinite(slo_ttft_slack_s) and slo_ttft_slack_s >= 0):
            raise _fail("--slo-ttft-slack-s", slo_ttft_slack_s, "must be a number of seconds >= 0")
        if slo_ttft_s is not None:
            raise _fail("--slo-ttft-slack-s", slo_ttft_slack_s, "cannot be combined with --slo-ttft-s (a fixed bound)")
    if not (math.isfinite(slo_tpot_ms) and slo_tpot_ms > 0):
        raise _fail("--slo-tpot-ms", slo_tpot_ms, "must be a number of milliseconds > 0")
    if not (math.isfinite(attainment) and 0 < attainment <= 1):
        raise _fail("--attainment", attainment, "must be a fraction in (0, 1]")
    if workers not in (1, 2):
        raise _fail("--workers", workers, "must be 1 or 2")
    if not (math.isfinite(preroll_s) and 0 <= preroll_s <= 3600):
        raise _fail("--preroll-s", preroll_s, "must be a number of seconds in [0, 3600]")
    if frontier and config is not None:
        raise _fail("--config", config, "cannot be combined with --frontier (a frontier sweeps the shipped presets)")
    slo = Slo(ttft_s=slo_ttft_s, ttft_slack_s=1.0 if slo_ttft_slack_s is None else slo_ttft_slack_s,
              tpot_ms=slo_tpot_ms)
    prof: cm.ReplicaProfile | None = None
    if profile is not None:
        try:
            prof = cm.get_profile(profile)
        except KeyError as e:
            raise _fail("--profile", profile, str(e.args[0])) from None
    try:
        names = pol.parse_policy_list(policy)
    except ValueError as e:
        raise _fail("--policy", policy, str(e)) from None
    cfg = _load_config(config) if config is not None else None
    try:
        tr = load_trace(trace)
    except TraceError as e:
        raise _fail("--trace", trace, str(e)) from None
    if failure_at is not None and failure_at > tr.duration_s / speedup:
        raise _fail(
            "--failure-at", failure_at,
            f"after the end of the trace ({tr.duration_s / speedup:.1f} s at speedup {speedup:g})",
        )
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise _fail("--out", out, "exists and is not a directory")

    common: dict[str, Any] = dict(speedup=speedup, failure_at=failure_at, failure_scope=failure_scope, seed=seed,
                                  preroll_s=preroll_s)
    if frontier:
        _frontier(tr, names, prof or cm.DEFAULT_PROFILE, slo, attainment, workers, out, as_json, common)
    elif cfg is not None:
        _whatif(cfg, str(config), tr, names, prof, slo, out, as_json, common)
    else:
        _compare(tr, names, prof or cm.DEFAULT_PROFILE, slo, out, as_json, common)


def _load_config(path: str) -> Any:
    from xds_control.config import load_config
    from xds_control.core.errors import ConfigError

    try:
        cfg = load_config(path)
    except (ConfigError, ValueError) as e:
        raise _fail("--config", path, str(e)) from None
    if not any(p.autoscale is not None for s in cfg.services for p in s.pools):
        raise _fail("--config", path, "no autoscaled pool (no pool has an autoscale: section): nothing to replay")
    return cfg


def _title(trace: str, common: dict[str, Any], slo: Any) -> str:
    fa = common["failure_at"]
    return (f"{trace}  (speedup {common['speedup']:g}, seed {common['seed']}"
            + (f", failure at {fa:g}s" if fa is not None else "") + f"; SLO {slo.describe()})")


def _write(path: str, doc: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(doc + "\n")


def _compare(tr: Any, names: list[str], prof: Any, slo: Any, out: str | None, as_json: bool,
             common: dict[str, Any]) -> None:
    from xds_control.sim.report import render_table, to_json, write_png
    from xds_control.sim.runner import evaluate

    ev = evaluate(tr, names, profile=prof, slo=slo, **common)
    extra = {"speedup": common["speedup"], "seed": common["seed"], "failure_at": common["failure_at"],
             "preroll_s": common["preroll_s"], "profile": prof.name}
    doc = to_json(ev.trace, ev.metrics, extra)
    title = _title(ev.trace, common, slo)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        base = os.path.join(out, ev.trace)
        _write(base + ".json", doc)
        write_png(base + ".png", title, ev.results)
    if as_json:
        sys.stdout.write(doc + "\n")
    else:
        render_table(title, ev.metrics)
        if out is not None:
            typer.echo(f"wrote {base}.json and {base}.png")


def _frontier(tr: Any, names: list[str], prof: Any, slo: Any, attainment: float, workers: int, out: str | None,
              as_json: bool, common: dict[str, Any]) -> None:
    from xds_control.sim.frontier import run_frontiers
    from xds_control.sim.report import render_frontier_table, to_json, write_frontier_png

    t0 = time.monotonic()
    fr = run_frontiers(tr, names, attainment=attainment, profile=prof, slo=slo, workers=workers, **common)
    elapsed = time.monotonic() - t0
    pols = fr.policies_json()
    extra = {"speedup": common["speedup"], "seed": common["seed"], "failure_at": common["failure_at"],
             "preroll_s": common["preroll_s"], "profile": prof.name, "slo": slo.describe(), "attainment_target": attainment, "summary": fr.summary}
    doc = to_json(fr.trace, pols, extra)
    title = f"Cost frontiers: {_title(fr.trace, common, slo)}"
    if out is not None:
        os.makedirs(out, exist_ok=True)
        base = os.path.join(out, fr.trace + ".frontier")
        _write(base + ".json", doc)
        write_frontier_png(base + ".png", title, pols, attainment, fr.summary.get("common_attainment"))
    if as_json:
        sys.stdout.write(doc + "\n")
    else:
        render_frontier_table(title, pols, fr.summary)
        typer.echo(f"{fr.runs} simulations in {elapsed:.1f} s")
        if out is not None:
            typer.echo(f"wrote {base}.json and {base}.png")


def _whatif(cfg: Any, path: str, tr: Any, names: list[str], prof: Any, slo: Any, out: str | None, as_json: bool,
            common: dict[str, Any]) -> None:
    from xds_control.sim.report import dumps, render_table, write_png
    from xds_control.sim.runner import evaluate_config

    pools = evaluate_config(cfg, tr, names, profile=prof, slo=slo, **common)
    trace_name = pools[0].evaluation.trace
    obj = {"trace": trace_name, "config": path, "tick_s": float(cfg.controller.tick_s), "speedup": common["speedup"],
           "seed": common["seed"], "failure_at": common["failure_at"], "slo": slo.describe(),
           "pools": [p.to_json() for p in pools]}
    doc = dumps(obj)
    written: list[str] = []
    if out is not None:
        os.makedirs(out, exist_ok=True)
        base = os.path.join(out, trace_name)
        _write(base + ".whatif.json", doc)
        written.append(base + ".whatif.json")
        for p in pools:
            png = f"{base}.{p.service}-{p.pool}.png"
            write_png(png, f"{p.name}: {_title(trace_name, common, slo)}", p.evaluation.results)
            written.append(png)
    if as_json:
        sys.stdout.write(doc + "\n")
        return
    for p in pools:
        r = p.resolved
        over = json.dumps(r["overrides"], sort_keys=True) if r["overrides"] else "none"
        typer.echo(f"pool {p.name}: policy {r['policy']} from {r['kind']} {r['source']}, overrides {over}; "
                   f"lb {p.lb}, tick {cfg.controller.tick_s:g} s, profile {p.profile} (cold start "
                   f"{p.cold_start_s:g} s)")
        for n in p.notes:
            typer.echo(f"  note: {n}")
        render_table(f"What-if {p.name} vs alternatives: {_title(trace_name, common, slo)}", p.evaluation.metrics)
    if written:
        typer.echo("wrote " + ", ".join(written))


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the ``xds-control`` application."""
    app.command("evaluate")(evaluate_cmd)


if __name__ == "__main__":  # python -m xds_control.cli.evaluate evaluate ...
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(_app)

    @_app.callback()
    def _root() -> None:  # keeps "evaluate" as an explicit sub-command
        pass

    _app()
