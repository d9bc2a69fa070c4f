"""The signal source (a real Prometheus) is stopped under load, then started again.

While it is down (60 s in the full form, 8 s in the short one): no scale-down and no scale-up (every
decision holds), no weight change (no new snapshot at all), zero failed requests; the alert is visible as
``xds_control_signals_up{pool="llm"} 0`` on /metrics and in the admin API's status (``alerts``); when
Prometheus is back (same port, same data) the alert clears by itself and decisions resume.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import grpc
import pytest

from harness import Background, envoy_running, failures, loss_pct, pick, record, until
from support.ports import free_port
from support.prometheus import PROMETHEUS, FileSdPrometheus

from xds_control.actuators.local import LocalScaler
from xds_control.admin.proto import load as load_admin
from xds_control.config import parse_config
from xds_control.runtime.app import ControlPlane
from xds_control.signals.prometheus import PrometheusSource

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus package is not installed "
                                                            "(.ci/run installs it)")]


def fleet(port: int, prom_url: str) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "port": port}],
        "services": [{"name": "llm", "retry": {}, "pools": [{
            "name": "llm", "lb_policy": "least_request",
            "autoscale": {"policy": "comprehensive",
                          "overrides": {"min_replicas": 1, "max_replicas": 4, "traffic": {"ramp_window_s": 0}},
                          "initial_replicas": 2, "replica": {"load_delay_s": 0.5}},
        }]}],
        "controller": {"tick_s": 0.5, "signals": {"source": "prometheus", "prometheus_url": prom_url}},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }


def signals_up(cp: ControlPlane) -> float | None:
    """The gauge as /metrics exports it (read from its registry: an HTTP call from this thread would block
    the event loop that serves /metrics; ``scrape_signals_up`` does the real scrape from a thread)."""
    return cp.metrics.registry.get_sample_value("xds_control_signals_up", {"pool": "llm"})


def scrape_signals_up(cp: ControlPlane) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{cp.ports.metrics}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('xds_control_signals_up{pool="llm"}'):
                return float(line.split()[-1])
    return None


async def test_prometheus_outage_holds_replicas_and_weights_and_alerts() -> None:
    outage_s = pick(8.0, 60.0)
    prom = FileSdPrometheus()
    prom.start()
    port = free_port()
    scaler = LocalScaler(install_signal_handlers=False,
                         on_change=lambda _i: prom.set_targets([r.key for r in scaler.list()
                                                                if r.state.value in ("starting", "ready")]))
    source = PrometheusSource(prom.url, window="5s", max_age_s=5)
    cp = ControlPlane(parse_config(fleet(port, prom.url)), xds_port=0, metrics_port=0, admin_port=0,
                      scaler=scaler, source=source)
    pb, pb_grpc = load_admin()
    channel = None
    try:
        await cp.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{cp.ports.admin}")
        stub = pb_grpc.AdminStub(channel)
        admin_alerts: list[str] = []

        async def poll_admin() -> None:  # the admin API runs on this event loop: poll it without blocking
            while True:
                admin_alerts[:] = (await stub.GetStatus(pb.GetStatusRequest(), timeout=2)).alerts
                await asyncio.sleep(0.05)

        poller = asyncio.get_running_loop().create_task(poll_admin())

        def alerts() -> list[str]:
            assert not poller.done(), poller
            return admin_alerts

        with envoy_running("faults-signals", cp.ports.xds) as envoy:
            await until(lambda: envoy.listener_port("ingress") == port, 30, "the listener")
            # Healthy signals first (Prometheus' first scrape lands ~6 s after it starts).
            await until(lambda: signals_up(cp) == 1.0 and cp.controller.history
                        and cp.controller.history[-1].failed_reads == 0, 40, "good signals", every=0.2)
            rps = 4.0
            load = Background(port, rps, outage_s + pick(20.0, 40.0)).start()
            # A settled fleet first (the startup, before Prometheus' first scrape, reads as stale = saturated
            # and may scale up): every replica ready and the last decisions holding.
            await until(lambda: all(r.state.value == "ready" for r in scaler.list())
                        and all(t.target == t.current for t in list(cp.controller.history)[-4:]), 40,
                        "a settled fleet", every=0.2)
            await asyncio.sleep(2.0)
            v_before = cp.cache.snapshot.version
            plan_before = cp.cache.snapshot.plan.pool("llm")
            replicas_before = len([r for r in scaler.list() if r.state.value == "ready"])
            downs, ups = cp.controller.scale_downs, cp.controller.scale_ups
            t_stop = time.monotonic()
            prom.stop()
            t_metric = await until(lambda: signals_up(cp) == 0.0, 10, "the signals_up alert", every=0.05)
            t_admin = await until(lambda: any("signals lost for pool llm" in a for a in alerts()), 10,
                                  "the admin status alert", every=0.05)
            n_hist = len(cp.controller.history)
            assert await asyncio.to_thread(scrape_signals_up, cp) == 0.0  # on /metrics, as Prometheus would see it
            await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - t_stop)))
            during = list(cp.controller.history)[n_hist:]
            v_during = cp.cache.snapshot.version
            plan_during = cp.cache.snapshot.plan.pool("llm")
            replicas_during = len([r for r in scaler.list() if r.state.value == "ready"])
            downs_during, ups_during = cp.controller.scale_downs - downs, cp.controller.scale_ups - ups
            t_start = time.monotonic()
            prom.start()
            t_back = await until(lambda: signals_up(cp) == 1.0 and not alerts(), 60, "recovery", every=0.2)
            res = await load.result()
        row = record("prometheus_outage", requests=res.summary.requests, failed=res.summary.failed,
                     loss_pct=loss_pct(res), outage_s=outage_s, alert_metric_s=t_metric - t_stop,
                     alert_admin_s=t_admin - t_stop, recovery_s=t_back - t_start,
                     versions_during_outage=v_during - v_before, scale_downs=downs_during, scale_ups=ups_during,
                     held_ticks=len(during), scale_ups_after_recovery=cp.controller.scale_ups - ups - ups_during)
        assert res.summary.failed == 0, failures(res)[:5]
        assert downs_during == 0 and ups_during == 0, (row, list(cp.controller.events)[-10:])
        assert replicas_during == replicas_before, row
        assert during and all(t.target == t.current and t.explanation.startswith("signals lost") for t in during)
        assert v_during == v_before and plan_during == plan_before, "the published plan changed during the outage"
        # Requirement (RELIABILITY.md, prometheus_outage): the alert visible within 2 s on /metrics and in GetStatus.
        assert row["alert_metric_s"] <= 2.0 and row["alert_admin_s"] <= 2.0, row
        assert any(e["kind"] == "signals_lost" for e in cp.controller.events)
        assert any(e["kind"] == "signals_restored" for e in cp.controller.events)
    finally:
        if channel is not None:
            poller.cancel()
            await channel.close()
        await cp.stop(grace=0)
        await scaler.close()
        await source.close()
        prom.close()
