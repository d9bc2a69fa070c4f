"""The demo summary's SLO attainment and GPU-seconds, computed by hand."""

from __future__ import annotations


def test_demo_slo_and_gpu_seconds_by_hand() -> None:
    """The demo's summary uses the evaluation's SLO; GPU-seconds integrate the replicas over ticks."""
    from xds_control.fleet import costmodel as cm
    from xds_control.fleet.loadgen import RequestRecord
    from xds_control.runtime.demo import gpu_seconds, slo_attainment

    prefill = float(cm.prefill_time_s(cm.get_profile("llama3-8b-48gb"), 1000.0))
    ok = RequestRecord(0, 0.0, 0.0, latency_s=prefill + 0.5 + 9 * 0.05, ttft_s=prefill + 0.5, status=200, error="",
                       input_tokens=1000, output_tokens=10)
    slow_ttft = RequestRecord(1, 0.0, 0.0, latency_s=prefill + 1.5, ttft_s=prefill + 1.2, status=200, error="",
                              input_tokens=1000, output_tokens=2)
    slow_tpot = RequestRecord(2, 0.0, 0.0, latency_s=prefill + 9 * 0.2, ttft_s=prefill, status=200, error="",
                              input_tokens=1000, output_tokens=10)
    failed = RequestRecord(3, 0.0, 0.0, latency_s=None, ttft_s=None, status=503, error="", input_tokens=1000,
                           output_tokens=10)
    assert slo_attainment([ok, slow_ttft, slow_tpot, failed]) == 0.25
    assert slo_attainment([]) is None

    class T:
        def __init__(self, now: float, n: int) -> None:
            self.now = now
            self.endpoints = tuple(type("E", (), {"state": "ready"})() for _ in range(n))

    assert gpu_seconds([T(0.0, 2), T(1.0, 3), T(3.0, 1)]) == 2 * 1.0 + 3 * 2.0  # type: ignore[list-item]


def test_hit_rate_windows_are_differences_of_the_cumulative_counters() -> None:
    from xds_control.runtime.demo import hit_rate_windows

    series = [(0.0, 0.0, 0.0), (5.0, 100.0, 50.0), (10.0, 300.0, 200.0), (14.0, 300.0, 200.0), (21.0, 400.0, 300.0),
              (30.0, 1000.0, 330.0)]
    # windows close at the first point >= 10 s after the last close: 0..10 s, 10..21 s, then 21..30 s is short
    assert hit_rate_windows(series, 10.0) == [(10.0, 200.0 / 300.0), (21.0, 1.0)]
    assert hit_rate_windows([(0.0, 5.0, 1.0), (12.0, 5.0, 1.0)], 10.0) == [(12.0, None)]  # nothing queried
    assert hit_rate_windows([], 10.0) == []


def test_scale_at_names_the_bad_value_and_exits_2() -> None:
    from typer.testing import CliRunner

    from tests.support.cli import command_app
    from xds_control.cli import demo as cli_demo

    app = command_app(cli_demo.register)
    for bad in ("60", "x:5", "60:0", "-1:5", "60:65"):
        res = CliRunner().invoke(app, ["demo", "--scale-at", bad, "--json"])
        assert res.exit_code == 2, (bad, res.output)
        assert f"--scale-at {bad!r}" in res.output and "SECONDS:REPLICAS" in res.output
