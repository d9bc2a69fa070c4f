"""The live loop end to end: real Envoy, real replica processes, real signals, the real controller.

* a compressed surge scales the fleet up and back down with zero failed requests (also across the
  drain), and a new replica's weight ramps instead of jumping;
* a slow replica gets a lower weight and a smaller share than its peers;
* a replica answering 5xx is ejected by the outlier detection xds-control pushes, and a replica
  killed with SIGKILL is replaced;
* with a real Prometheus as the signal source, the same surge is seen and scaled for;
* the demo command itself runs in a short mode.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support.envoy import Envoy
from support.ports import free_port
from support.prometheus import PROMETHEUS, FileSdPrometheus

from xds_control.actuators.base import ReplicaOptions
from xds_control.actuators.local import LocalScaler
from xds_control.config import parse_config
from xds_control.fleet.loadgen import run_load
from xds_control.fleet.trace import SurgeShape, generate_surge
from xds_control.runtime.app import ControlPlane
from xds_control.runtime.demo import DemoRun, demo_surge, run_demo

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

FAST = {
    "min_replicas": 2,
    "max_replicas": 5,
    "startup_s": 5,
    "min_history_s": 10,
    "scale_down_window_s": 10,
    "stable_window_s": 8,
    "traffic": {"ramp_window_s": 6, "drain_timeout_s": 20, "warmup_s": 0},
}


async def test_surge_scales_up_and_down_with_zero_failures(tmp_path: Path) -> None:
    run = DemoRun()
    summary = await run_demo(duration_s=45, settle_s=40, live=False, out_dir=tmp_path, load_delay_s=1.0,
                             run=run, overrides=FAST)
    assert summary["requests"] > 100
    assert summary["failed"] == 0, [r.error or r.status for r in run.records if not r.ok][:5]
    assert summary["scale_ups"] >= 1 and summary["scale_downs"] >= 1, summary
    assert summary["replicas_max"] > 2
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    # A replica added during the surge ramps: its weight takes several intermediate values on the way up.
    added = sorted({e.replica_id for t in run.ticks for e in t.endpoints} - {"llm-1", "llm-2"})
    assert added, "no replica was added"
    weights = [next((e.weight for e in t.endpoints if e.replica_id == added[0]), 0) for t in run.ticks]
    rising = [w for w in weights if w > 0]
    peak = max(rising)
    steps = sorted({w for w in rising[: rising.index(peak) + 1]})
    assert len(steps) >= 3 and steps[0] < peak / 2, weights
    # Served requests really reached the added replicas.
    served = collections.Counter(r.replica for r in run.records if r.ok)
    assert any(served[a] > 0 for a in added), served


class TweakedScaler(LocalScaler):
    """A LocalScaler whose n-th replica gets special options (a slow GPU, a failing server)."""

    def __init__(self, special: dict[int, ReplicaOptions], **kw: Any) -> None:
        super().__init__(install_signal_handlers=False, **kw)
        self.special = special
        self.count = 0

    async def start_replica(self, pool, profile=None, options=None):  # type: ignore[no-untyped-def]
        self.count += 1
        opts = self.special.get(self.count, options)
        if opts is not options and options is not None:
            opts = ReplicaOptions(**{**options.__dict__, **{k: v for k, v in opts.__dict__.items() if v is not None}})
        return await super().start_replica(pool, profile, opts)


def fleet_config(port: int, replicas: int, **pool: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "port": port}],
        "services": [{
            "name": "llm",
            "retry": {"num_retries": 2, "retry_on": "connect-failure,refused-stream,reset,5xx"},
            "pools": [{
                "name": "llm",
                "lb_policy": "least_request",
                "autoscale": {
                    "policy": "comprehensive",
                    "overrides": {**FAST, "min_replicas": replicas, "max_replicas": replicas},
                    "replica": {"load_delay_s": 0.5},
                },
                **pool,
            }],
        }],
        "controller": {"tick_s": 0.5},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }


async def _stack(cfg: dict[str, Any], scaler: Any = None, source: Any = None):  # type: ignore[no-untyped-def]
    cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=None, scaler=scaler, source=source)
    await cp.start()
    envoy = Envoy("live", cp.ports.xds).start()
    port = cfg["listeners"][0]["port"]
    await asyncio.to_thread(envoy.wait_for, lambda: envoy.listener_port("ingress") == port, 15, "listener")
    return cp, envoy


async def _wait_serving(cp: ControlPlane, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = cp.controller.history
        if h and sum(1 for e in h[-1].endpoints if e.phase == "serving") >= n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{n} replicas never served: {cp.controller.history[-1] if cp.controller.history else None}")


def steady(rps: float, seconds: float, seed: int = 1):  # type: ignore[no-untyped-def]
    return generate_surge(SurgeShape(duration_s=seconds, base_rps=rps, peak_rps=rps, calm_s=seconds, rise_s=1,
                                     hold_s=1, decay_tau_s=1, input_tokens_median=400, output_tokens_median=48),
                          seed=seed)


async def test_slow_replica_gets_lower_weight_and_smaller_share() -> None:
    port = free_port()
    scaler = TweakedScaler({1: ReplicaOptions(slow_factor=4.0)})
    cp, envoy = await _stack(fleet_config(port, 3), scaler=scaler)
    try:
        await _wait_serving(cp, 3)
        result = await run_load(f"http://127.0.0.1:{port}", steady(4.0, 30), timeout_s=60)
        assert result.summary.failed == 0
        share = collections.Counter(r.replica for r in result.records if r.ok)
        # Weights over the last two thirds of the run (the first third warms the load index up): the slow
        # replica (llm-1) is below its peers. (The last 20 ticks alone were too few: 85 vs 100 here.)
        ticks = list(cp.controller.history)
        half = ticks[len(ticks) // 3:]
        w = collections.defaultdict(list)
        for t in half:
            for e in t.endpoints:
                w[e.replica_id].append(e.weight)
        mean = {k: sum(v) / len(v) for k, v in w.items()}
        assert mean["llm-1"] < min(mean["llm-2"], mean["llm-3"]), mean
        assert share["llm-1"] < min(share["llm-2"], share["llm-3"]), share
    finally:
        envoy.stop()
        await cp.stop(grace=0)
        await scaler.close()


async def test_failing_replica_is_ejected_and_killed_replica_is_replaced() -> None:
    port = free_port()
    scaler = TweakedScaler({1: ReplicaOptions(fail_rate=1.0)})
    cfg = fleet_config(port, 3)
    cfg["services"][0]["pools"][0]["autoscale"]["overrides"]["traffic"]["outlier"] = {
        "consecutive_5xx": 3, "interval_s": 1, "base_ejection_time_s": 30, "max_ejection_percent": 50}
    cp, envoy = await _stack(cfg, scaler=scaler)
    try:
        await _wait_serving(cp, 3)
        result = await run_load(f"http://127.0.0.1:{port}", steady(4.0, 12), timeout_s=60)
        stats = envoy.stats()
        assert int(stats.get("cluster.llm.outlier_detection.ejections_enforced_total", "0")) >= 1, \
            {k: v for k, v in stats.items() if "outlier" in k}
        served = collections.Counter(r.replica for r in result.records if r.ok)
        assert served.get("llm-1", 0) == 0
        # Retries (pushed with the route) hide the failing replica's 500s from clients.
        assert result.summary.failed <= 0.01 * result.summary.requests, result.summary
        # SIGKILL a healthy replica: the controller reaps it and starts a replacement.
        victim = next(r for r in scaler.list() if r.id == "llm-2")
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ids = {r.id for r in scaler.list() if r.state.value == "ready"}
            if "llm-2" not in ids and len(ids) >= 3:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"not replaced: {scaler.list()}")
        assert any(e["kind"] == "replica_failed" and e["replica"] == "llm-2" for e in cp.controller.events)
    finally:
        envoy.stop()
        await cp.stop(grace=0)
        await scaler.close()


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus package is not installed (.ci/run installs it)")
async def test_prometheus_source_sees_and_scales_for_the_surge() -> None:
    from xds_control.signals.prometheus import PrometheusSource

    prom = FileSdPrometheus()
    prom.start()
    port = free_port()
    scaler = LocalScaler(install_signal_handlers=False,
                         on_change=lambda _i: prom.set_targets([r.key for r in scaler.list()
                                                                if r.state.value in ("starting", "ready")]))
    source = PrometheusSource(prom.url, window="5s", max_age_s=5)
    cfg = fleet_config(port, 2)
    cfg["services"][0]["pools"][0]["autoscale"]["overrides"].update({"min_replicas": 2, "max_replicas": 5})
    cp = envoy = None
    try:
        cp, envoy = await _stack(cfg, scaler=scaler, source=source)
        await _wait_serving(cp, 2)
        deadline = time.monotonic() + 30
        while prom.up_count() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert prom.up_count() >= 2, "prometheus never scraped the replicas"
        result = await run_load(f"http://127.0.0.1:{port}", demo_surge(40, seed=3), timeout_s=60)
        assert result.summary.failed == 0, result.summary
        assert cp.controller.scale_ups >= 1, [t.explanation for t in list(cp.controller.history)[-5:]]
        # The decisions were made on Prometheus data, not on absent samples.
        assert any(t.load_index and t.failed_reads == 0 for t in cp.controller.history)
    finally:
        if envoy is not None:
            envoy.stop()
        if cp is not None:
            await cp.stop(grace=0)
        await scaler.close()
        await source.close()
        prom.close()


def test_demo_command_short_mode(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xds_control.cli", "demo", "--duration", "15", "--settle", "3", "--json",
         "--no-live", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("requests", "failed", "latency_p99_ms", "scale_ups", "scale_downs", "replicas_max",
                "hotspot_ratio_p99"):
        assert key in summary
    assert summary["requests"] > 10 and summary["failed"] == 0
    # the live loop read the gateway arrival rate from the demo Envoy's statistics (as the simulator gives it)
    assert summary["request_rate_max"] is not None and summary["request_rate_max"] > 0.5
    assert 0.0 <= summary["slo_attainment"] <= 1.0 and summary["gpu_seconds"] > 2 * 15  # >= 2 replicas for 15 s
    assert (tmp_path / "demo.png").exists()


def test_demo_scale_at_pins_the_pool_as_the_admin_api_does(tmp_path: Path) -> None:
    """``--scale-at 1:4``: a second into the load the pool is pinned to 4 replicas (min = max), whatever the
    policy would do, and the decision log says so."""
    proc = subprocess.run(
        [sys.executable, "-m", "xds_control.cli", "demo", "--duration", "10", "--settle", "4", "--json",
         "--no-live", "--out", str(tmp_path), "--scale-at", "1:4"],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["failed"] == 0
    assert summary["replicas_max"] == 4 and summary["replicas_final"] == 4
    assert "pool llm pinned to 4 replicas" in (tmp_path / "demo.log").read_text()
