"""``xds-control demo``: the main job on one machine (``make demo``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer


def demo(
    duration: Annotated[float, typer.Option("--duration", help="Seconds of load to replay (the run adds --settle "
                                            "seconds for the scale-down).", min=5, max=3600)] = 120.0,
    trace: Annotated[Path | None, typer.Option("--trace", help="Replay this trace CSV "
                     "(timestamp_s,input_tokens,output_tokens[,hash_ids]; with hash_ids the pool routes by prompt "
                     "prefix) instead of the built-in surge.")] = None,
    speedup: Annotated[float, typer.Option("--speedup", help="Compress the trace's time axis by this factor.",
                                           min=0.001)] = 1.0,
    policy: Annotated[str, typer.Option("--policy", help="A preset (xds-control policy list) or a "
                                        "policy YAML file.")] = "comprehensive",
    out: Annotated[Path, typer.Option("--out", help="Directory for demo.png and demo.log.")] = Path("out"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Live terminal view (off when not a TTY).")] = True,
    settle: Annotated[float, typer.Option("--settle", help="Seconds to keep running after the load, to show "
                                          "the scale-down.", min=0, max=3600)] = 30.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the built-in surge.")] = 0,
    scale_at: Annotated[list[str] | None, typer.Option("--scale-at", help="SECONDS:REPLICAS: that many seconds "
                        "into the load, pin the pool to REPLICAS (min = max, as the admin API's SetReplicaBounds), to "
                        "watch one scale-up or drain; repeatable.")] = None,
) -> None:
    """Control plane + real Envoy + local emulated replicas, and a surge through Envoy: watch it scale up,
    shift traffic, drain and scale down with no request lost. Stops everything it started on exit."""
    import sys

    from xds_control.config import parse_config
    from xds_control.core.errors import ConfigError
    from xds_control.fleet.trace import TraceError
    from xds_control.runtime.demo import demo_config, demo_overrides, print_summary, run_demo

    # Validates the policy as the demo runs it: the config resolves pool.autoscale.spec (preset + demo overrides).
    try:
        parse_config(demo_config(policy, 0, 0.0, demo_overrides(policy)), "demo")
    except (ConfigError, ValueError) as e:
        typer.echo(f"xds-control demo: --policy {policy}: {e}", err=True)
        raise typer.Exit(2) from None
    pins: list[tuple[float, int]] = []
    for item in scale_at or ():
        at, _, n = item.partition(":")
        try:
            pin = (float(at), int(n))
            ok = 0 <= pin[0] <= 3600 and 1 <= pin[1] <= 64
        except ValueError:
            ok = False
        if not ok:
            typer.echo(f"xds-control demo: --scale-at {item!r}: expected SECONDS:REPLICAS, seconds 0..3600, "
                       "replicas 1..64 (e.g. 60:5)", err=True)
            raise typer.Exit(2)
        pins.append(pin)
    if trace is not None and not trace.is_file():
        typer.echo(f"xds-control demo: --trace: {str(trace)!r} is not a readable file", err=True)
        raise typer.Exit(2)
    try:
        summary = asyncio.run(run_demo(duration_s=duration, trace_path=str(trace) if trace else None,
                                       speedup=speedup, policy=policy, out_dir=out,
                                       live=live and sys.stdout.isatty() and not as_json, seed=seed,
                                       settle_s=settle, scale_at=pins))
    except TraceError as e:
        typer.echo(f"xds-control demo: --trace: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        print_summary(summary)
    raise typer.Exit(1 if summary["failed"] else 0)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
