"""Commands of the live path: ``xds-control replica`` and ``xds-control loadgen``.

:mod:`xds_control.cli.main` calls :func:`register` at start-up.
"""

from __future__ import annotations

import asyncio

import typer

from xds_control.fleet.costmodel import DEFAULT_PROFILE, PROFILES


def _float(value: object) -> float:
    if isinstance(value, float):
        return value
    try:
        return float(str(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number") from None


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an integer") from None




def _bad(option: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{option}'")


def replica(
    port: int = typer.Option(0, "--port", help="TCP port on 127.0.0.1 (0: any free port; printed).", parser=_int),
    profile: str = typer.Option(DEFAULT_PROFILE.name, "--profile", help=f"Cost-model profile: {', '.join(PROFILES)}."),
    name: str = typer.Option("", "--name", help="Replica name in the x-xds-replica header (default host:port)."),
    load_delay: float | None = typer.Option(None, "--load-delay", help="Seconds before /health is 200 (default: the profile's cold start).", parser=_float),
    slow_factor: float = typer.Option(1.0, "--slow-factor", help="Multiply every step time (a slower GPU).", parser=_float),
    fail_rate: float = typer.Option(0.0, "--fail-rate", help="Fraction of requests answered with HTTP 500.", parser=_float),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", help="Running batch limit (default: profile).", parser=_int),
    max_queue: int | None = typer.Option(None, "--max-queue", help="Waiting-queue bound; full -> 503 (default: profile).", parser=_int),
    kv_capacity_tokens: int | None = typer.Option(None, "--kv-capacity-tokens", help="KV-cache tokens (default: profile).", parser=_int),
    seed: int | None = typer.Option(None, "--seed", help="Seed for --fail-rate draws.", parser=_int),
) -> None:
    """Run an emulated vLLM-style inference replica (OpenAI API, /health, /metrics) on 127.0.0.1."""
    from xds_control.fleet.replica.server import ReplicaConfig, run

    cfg = ReplicaConfig(
        port=port, profile=profile, name=name, load_delay_s=load_delay, slow_factor=slow_factor,
        fail_rate=fail_rate, max_num_seqs=max_num_seqs, max_queue=max_queue,
        kv_capacity_tokens=kv_capacity_tokens, seed=seed,
    )  # fmt: skip
    errs = cfg.validate()
    if errs:
        raise _bad(errs[0][0], "; ".join(f"{o} {m}" if i else m for i, (o, m) in enumerate(errs)))
    run(cfg)


def loadgen(
    target: str = typer.Option(..., "--target", help="Base URL (http://127.0.0.1:PORT) or a full completions URL."),
    trace: str | None = typer.Option(None, "--trace", help="CSV timestamp_s,input_tokens,output_tokens (default: the built-in surge)."),
    speedup: float = typer.Option(1.0, "--speedup", help="Divide trace timestamps by this.", parser=_float),
    duration: float | None = typer.Option(None, "--duration", help="Only send requests arriving in the first S seconds (after --speedup).", parser=_float),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Stream responses (SSE) to measure TTFT."),
    chat: bool = typer.Option(False, "--chat", help="Use /v1/chat/completions."),
    timeout: float = typer.Option(120.0, "--timeout", help="Per-request timeout in seconds.", parser=_float),
    seed: int = typer.Option(0, "--seed", help="Seed of the built-in surge.", parser=_int),
    header: list[str] = typer.Option([], "--header", help="Extra request header 'Name: value' (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    records: str | None = typer.Option(None, "--records", help="Also write every request's record to this file (JSON lines)."),
) -> None:
    """Replay a trace open-loop against an OpenAI-compatible endpoint and print a summary."""
    from xds_control.fleet.loadgen import endpoint_url, format_summary, run_load, summary_json
    from xds_control.fleet.trace import SurgeShape, TraceError, generate_surge, read_trace

    if not speedup > 0:
        raise _bad("--speedup", f"must be > 0, got {speedup}")
    if duration is not None and not duration > 0:
        raise _bad("--duration", f"must be > 0, got {duration}")
    if not timeout > 0:
        raise _bad("--timeout", f"must be > 0, got {timeout}")
    try:
        endpoint_url(target, chat)
    except ValueError as e:
        raise _bad("--target", str(e)) from None
    headers: dict[str, str] = {}
    for h in header:
        k, sep, v = h.partition(":")
        if not sep or not k.strip():
            raise _bad("--header", f"expected 'Name: value', got {h!r}")
        headers[k.strip()] = v.strip()
    if trace is not None:
        try:
            rows = read_trace(trace, speedup=speedup, duration_s=duration)
        except TraceError as e:
            raise _bad("--trace", str(e)) from None
    else:
        rows = generate_surge(SurgeShape(), seed=seed)
        rows = [r.__class__(r.timestamp_s / speedup, r.input_tokens, r.output_tokens) for r in rows]
        if duration is not None:
            rows = [r for r in rows if r.timestamp_s < duration]
    result = asyncio.run(run_load(target, rows, stream=stream, chat=chat, timeout_s=timeout, headers=headers or None))
    if records:
        import dataclasses
        import json

        with open(records, "w", encoding="utf-8") as fh:
            for rec in result.records:
                fh.write(json.dumps(dataclasses.asdict(rec)) + "\n")
    if as_json:
        typer.echo(summary_json(result.summary))
    else:
        typer.echo(format_summary(result.summary))


def register(app: typer.Typer) -> None:
    app.command("replica")(replica)
    app.command("loadgen")(loadgen)


__all__ = ["register", "replica", "loadgen"]
