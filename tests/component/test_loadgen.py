"""Load generator against a real replica, trace files, the built-in surge and the CLI.

Aspects: open loop (slow responses do not delay arrivals); per-request records
and summary; TTFT from streaming; --speedup/--duration; surge shape and
determinism; ``loadgen --json`` and bad flags.
"""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from xds_control.cli import live as cli_live
from xds_control.fleet.loadgen import endpoint_url, percentile, run_load, summarize
from xds_control.fleet.trace import (
    SurgeShape,
    TraceError,
    TraceRequest,
    generate_surge,
    rate_at,
    read_trace,
    write_trace,
)


def even_trace(n: int, every_s: float, n_in: int = 10, n_out: int = 20) -> list[TraceRequest]:
    return [TraceRequest(i * every_s, n_in, n_out) for i in range(n)]


async def test_open_loop_arrivals_not_delayed_by_slow_responses(start_replica) -> None:
    # Each response takes ~0.5-1 s (slow factor 5); 20 arrivals 50 ms apart must still go out on time.
    r = start_replica("--slow-factor", "5", "--max-num-seqs", "32")
    trace = even_trace(20, 0.05, n_in=10, n_out=6)
    res = await run_load(r.url, trace, stream=True)
    s = res.summary
    assert s.requests == 20 and s.ok == 20 and s.failed == 0
    # Requirement (README: loadgen "replays a trace open-loop (arrivals follow the trace whatever the
    # responses)"): every request goes out at its scheduled time (within 50 ms) ...
    assert max(x.send_lag_s for x in res.records) < 0.05
    assert s.latency_p50_ms > 500  # ... although responses were slow (the slow factor: the premise) ...
    # ... so the last request was sent ~0.95 s after the first, not after 19 responses.
    sends = [x.scheduled_s + x.send_lag_s for x in res.records]
    assert max(sends) - min(sends) < 1.1
    assert all(x.ttft_s is not None and 0 < x.ttft_s < x.latency_s for x in res.records)
    assert s.by_replica == {r.key: 20}
    assert s.status_counts == {"200": 20}


async def test_records_failures_and_summary(start_replica, tmp_path) -> None:
    r = start_replica("--fail-rate", "0.5", "--seed", "3")
    res = await run_load(r.url, even_trace(30, 0.01, n_out=2), stream=False)
    s = res.summary
    assert s.requests == 30 and s.ok + s.failed == 30 and 5 <= s.failed <= 25
    assert set(s.status_counts) == {"200", "500"}
    assert all((x.status == 500) == bool(x.error) for x in res.records)
    assert s.latency_p50_ms is not None and s.latency_p50_ms <= s.latency_p95_ms <= s.latency_p99_ms
    assert s.ttft_p50_ms is None  # not streaming
    # A dead target is a transport error (status 0), not an exception.
    dead = await run_load("http://127.0.0.1:9", even_trace(2, 0.01), timeout_s=2)
    assert dead.summary.failed == 2 and {x.status for x in dead.records} == {0}


def test_trace_files_speedup_and_duration(tmp_path) -> None:
    p = tmp_path / "t.csv"
    write_trace(p, [TraceRequest(t, 100 + t, 5) for t in (0, 1, 2, 3, 4, 5)])
    rows = read_trace(p, speedup=2.0, duration_s=2.0)
    assert [x.timestamp_s for x in rows] == [0.0, 0.5, 1.0, 1.5]
    assert rows[1].input_tokens == 101
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match="header"):
        read_trace(bad)
    with pytest.raises(TraceError, match="does not exist"):
        read_trace(tmp_path / "nope.csv")


def test_surge_shape_and_determinism() -> None:
    shape = SurgeShape()
    a, b, c = generate_surge(shape, seed=1), generate_surge(shape, seed=1), generate_surge(shape, seed=2)
    assert a == b and a != c
    assert all(x.timestamp_s < shape.duration_s for x in a)
    assert [x.timestamp_s for x in a] == sorted(x.timestamp_s for x in a)

    def count(lo: float, hi: float) -> float:
        return sum(lo <= x.timestamp_s < hi for x in a) / (hi - lo)

    calm = count(0, shape.calm_s)
    peak = count(shape.calm_s + shape.rise_s, shape.calm_s + shape.rise_s + shape.hold_s)
    tail = count(shape.duration_s - 20, shape.duration_s)
    assert abs(calm - shape.base_rps) < 1.0 and abs(peak - shape.peak_rps) < 2.5
    assert tail < peak / 2
    assert rate_at(shape, 0) == shape.base_rps and rate_at(shape, shape.calm_s + shape.rise_s + 1) == shape.peak_rps
    med_out = sorted(x.output_tokens for x in a)[len(a) // 2]
    assert 120 < med_out < 320
    short = generate_surge(shape.scaled(0.25), seed=1)
    assert max(x.timestamp_s for x in short) < 30 and len(short) < len(a)


def test_summary_math() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert endpoint_url("http://h:1") == "http://h:1/v1/completions"
    assert endpoint_url("h:1/", chat=True) == "http://h:1/v1/chat/completions"
    assert endpoint_url("http://h:1/x") == "http://h:1/x"
    assert summarize([]).requests == 0


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    cli_live.register(app)
    return app


def test_cli_loadgen_json(start_replica, tmp_path) -> None:
    r = start_replica()
    p = tmp_path / "t.csv"
    write_trace(p, even_trace(10, 0.1, n_out=3))
    rec = tmp_path / "records.jsonl"
    out = CliRunner().invoke(_app(), ["loadgen", "--target", r.url, "--trace", str(p), "--speedup", "2",
                                      "--duration", "0.3", "--json", "--records", str(rec)])  # fmt: skip
    assert out.exit_code == 0, out.output
    s = json.loads(out.output)
    assert s["requests"] == 6 and s["ok"] == 6 and s["failed"] == 0  # t = 0, .05, ... .25
    for k in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "achieved_rps", "ttft_p50_ms"):
        assert s[k] is not None and s[k] > 0
    lines = [json.loads(x) for x in rec.read_text().splitlines()]
    assert len(lines) == 6 and all(x["status"] == 200 and x["ttft_s"] > 0 for x in lines)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--speedup", "0"], "--speedup"),
        (["--speedup", "fast"], "'fast'"),
        (["--trace", "/no/such.csv"], "/no/such.csv"),
        (["--header", "nocolon"], "nocolon"),
    ],
)
def test_cli_loadgen_bad_flags_exit_2(args: list[str], needle: str) -> None:
    out = CliRunner().invoke(_app(), ["loadgen", "--target", "http://127.0.0.1:9", *args])
    assert out.exit_code == 2
    assert needle in out.output
