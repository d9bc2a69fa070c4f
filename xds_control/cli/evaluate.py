"""``xds-control evaluate``: replay a request trace through every policy in the fleet simulator.

Prints the seed paper's Table 2 (one column per policy) with rich, or with ``--json`` one JSON
object ``{"trace": ..., "policies": {NAME: {metric: value}}}``; ``--out DIR`` also writes
``<trace>.json`` and ``<trace>.png`` there. Metric definitions: :mod:`xds_control.sim.metrics`
and EVALUATION.md. Invalid input exits with status 2 and a message naming the option and value.
"""

from __future__ import annotations

import math
import os
import sys

import typer

__all__ = ["register", "evaluate_cmd"]


def _fail(option: str, value: object, why: str) -> typer.Exit:
    typer.echo(f"Error: invalid value for {option}: {value!r}: {why}", err=True)
    return typer.Exit(code=2)


def evaluate_cmd(
    trace: str = typer.Option(..., "--trace", metavar="FILE", help="CSV with header timestamp_s,input_tokens,output_tokens."),
    policy: str = typer.Option(
        "all", "--policy", metavar="NAME,...|all",
        help="threshold, predictive, comprehensive, hpa, kpa, fixed, or all; NAME@rr / NAME@lr force round robin / least request.",
    ),
    speedup: float = typer.Option(1.0, "--speedup", metavar="X", help="Divide the time axis by X (X > 1 turns the trace into a surge)."),
    failure_at: float | None = typer.Option(
        None, "--failure-at", metavar="SECONDS", help="Kill one replica at this simulated second (after speed-up)."
    ),
    failure_scope: str = typer.Option("replica", "--failure-scope", metavar="replica|node", help="What --failure-at kills."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the simulator's random choices (routing, failure victim)."),
    out: str | None = typer.Option(None, "--out", metavar="DIR", help="Also write <trace>.json and <trace>.png here."),
    profile: str = typer.Option("llama3-8b-48gb", "--profile", metavar="NAME", help="Replica cost-model profile."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
) -> None:
    """Replay a trace through the policies in the fleet simulator and compare them (the seed's Table 2)."""
    from xds_control.fleet import costmodel as cm
    from xds_control.fleet.trace import TraceError, load_trace
    from xds_control.sim import policies as pol
    from xds_control.sim.report import render_table, to_json, write_png
    from xds_control.sim.runner import evaluate

    if not (math.isfinite(speedup) and speedup > 0):
        raise _fail("--speedup", speedup, "must be a number > 0")
    if failure_at is not None and not (math.isfinite(failure_at) and failure_at >= 0):
        raise _fail("--failure-at", failure_at, "must be a number of seconds >= 0")
    if failure_scope not in ("replica", "node"):
        raise _fail("--failure-scope", failure_scope, "must be 'replica' or 'node'")
    try:
        prof = cm.get_profile(profile)
    except KeyError as e:
        raise _fail("--profile", profile, str(e.args[0])) from None
    try:
        names = pol.parse_policy_list(policy)
    except ValueError as e:
        raise _fail("--policy", policy, str(e)) from None
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

    ev = evaluate(
        tr, names, speedup=speedup, failure_at=failure_at, failure_scope=failure_scope, seed=seed,
        profile=prof,
    )
    extra = {"speedup": speedup, "seed": seed, "failure_at": failure_at, "profile": prof.name}
    doc = to_json(ev.trace, ev.metrics, extra)
    title = f"{ev.trace}  (speedup {speedup:g}, seed {seed}" + (
        f", failure at {failure_at:g}s" if failure_at is not None else ""
    ) + ")"
    if out is not None:
        os.makedirs(out, exist_ok=True)
        base = os.path.join(out, ev.trace)
        with open(base + ".json", "w", encoding="utf-8") as fh:
            fh.write(doc + "\n")
        write_png(base + ".png", title, ev.results)
    if as_json:
        sys.stdout.write(doc + "\n")
    else:
        render_table(title, ev.metrics)
        if out is not None:
            typer.echo(f"wrote {base}.json and {base}.png")


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
