"""The controller metrics on /metrics move when the fleet does: real control plane, real local replicas, a real
Envoy in front (its statistics give the gateway request rate), requests through it, the admin API forcing scales.

Each metric is read over HTTP from the metrics port, the way Prometheus scrapes it.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.admin import Served, md, pb, token_config
from support.envoy import Envoy
from support.ports import free_port

from xds_control.config import parse_config
from xds_control.runtime.app import ControlPlane
from xds_control.signals.envoy_stats import EnvoyAdminRateSource

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

POOL = {"service": "llm", "pool": "gpu"}


def config(listener: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener}],
        "services": [{"name": "llm", "tenant": "team-a", "pools": [{
            "name": "gpu",
            "autoscale": {
                "policy": "threshold", "initial_replicas": 1,
                "overrides": {"min_replicas": 1, "max_replicas": 3, "gpu_mem_trigger": 0.99,
                              "traffic": {"warmup_s": 0, "ramp_window_s": 0, "drain_timeout_s": 3}},
                # one second of model loading: long enough for a tick to see the replica starting
                "replica": {"profile": "tiny", "load_delay_s": 1.0},
            },
        }]}],
        "controller": {"tick_s": 0.2},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
        "admin": {"port": 0, "tokens": token_config()},
    }


class ServedWithMetrics(Served):
    """:class:`Served` with the metrics port open (it serves /metrics and the dashboard)."""

    async def _start(self, cfg: dict[str, Any], kw: dict[str, Any]) -> ControlPlane:
        cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=0, admin_port=0, **kw)
        await cp.start()
        return cp


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(m: dict, name: str, **labels: str) -> float | None:
    return m.get((name, frozenset(labels.items())))


def series(m: dict, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in m.items() if n == name and want <= lab}


def wait_metrics(port: int, pred, what: str, timeout: float = 30.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    m: dict = {}
    while time.monotonic() < deadline:
        m = scrape(port)
        if pred(m):
            return m
        time.sleep(0.1)
    shown = {f"{n}{dict(lab)}": v for (n, lab), v in sorted(m.items(), key=str) if n.startswith("xds_control_")
             and "bucket" not in n}
    raise AssertionError(f"timed out waiting for {what}; xds_control_* metrics now: {json.dumps(shown)[:3000]}")


class Traffic:
    """Completions through Envoy on one keep-alive connection until stopped."""

    def __init__(self, port: int) -> None:
        self.port, self.ok, self.failed = port, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        body = json.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})
        while not self._stop.is_set():
            try:
                conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                self.ok += r.status == 200
                self.failed += r.status != 200
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            time.sleep(0.05)
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def test_controller_metrics_follow_the_fleet() -> None:
    listener = free_port()
    with ServedWithMetrics(config(listener)) as sv:
        port = sv.cp.ports.metrics
        envoy = Envoy("metrics-test", sv.cp.ports.xds).start()
        rates = EnvoyAdminRateSource([f"http://127.0.0.1:{envoy.admin_port}"], window_s=2.0)
        traffic: Traffic | None = None
        try:
            sv.run(lambda: setattr(sv.cp.controller, "rates", rates))
            # one replica, ready, serving with a weight; its start counted as a scale-up
            m = wait_metrics(port, lambda m: value(m, "xds_control_ready_replicas", **POOL) == 1
                             and any(v > 0 for v in series(m, "xds_control_endpoint_weight", pool="gpu").values()),
                             "one ready replica with a weight")
            assert value(m, "xds_control_current_replicas", **POOL) == 1
            assert value(m, "xds_control_target_replicas", **POOL) == 1
            assert value(m, "xds_control_draining_replicas", **POOL) == 0
            assert value(m, "xds_control_autoscaling_paused", **POOL) == 0
            assert value(m, "xds_control_scaling_actions_total", **POOL, action="scale_up") == 1
            (first,) = [dict(lab)["endpoint"] for lab in series(m, "xds_control_endpoint_weight", pool="gpu")]
            assert value(m, "xds_control_endpoint_load_index", pool="gpu", endpoint=first) is not None
            assert value(m, "xds_control_pool_load_index", **POOL) is not None
            holds = series(m, "xds_control_autoscaler_decisions_total", **POOL, policy="threshold", direction="hold")
            assert holds and sum(holds.values()) >= 1
            assert value(m, "xds_control_slo_ttft_target_seconds", **POOL) == 0.2  # load_index.latency_target_s

            # requests through Envoy: the gateway rate, the replicas' TTFT and the SLO attainment appear
            envoy.wait_for(lambda: envoy.listener_port("ingress") == listener, 15, "the ingress listener")
            traffic = Traffic(listener)
            m = wait_metrics(port, lambda m: (value(m, "xds_control_gateway_request_rate", **POOL) or 0) > 1
                             and (value(m, "xds_control_replica_ttft_seconds_count", **POOL) or 0) >= 3
                             and (value(m, "xds_control_replica_tpot_seconds_count", **POOL) or 0) >= 1
                             and value(m, "xds_control_slo_attainment_ratio", **POOL) is not None,
                             "request rate, TTFT and TPOT observations and SLO attainment")
            assert 0 <= value(m, "xds_control_slo_attainment_ratio", **POOL) <= 1
            assert value(m, "xds_control_replica_ttft_seconds_sum", **POOL) > 0
            assert value(m, "xds_control_replica_tpot_seconds_sum", **POOL) > 0  # multi-token answers
            assert value(m, "xds_control_replica_ttft_seconds_bucket", **POOL, le="+Inf") == \
                value(m, "xds_control_replica_ttft_seconds_count", **POOL)

            # pause: the paused gauge; resume
            sv.stub.PauseAutoscaling(pb.ServiceRef(service="llm"), metadata=md("a-operator"))
            wait_metrics(port, lambda m: value(m, "xds_control_autoscaling_paused", **POOL) == 1, "paused = 1")
            sv.stub.ResumeAutoscaling(pb.ServiceRef(service="llm"), metadata=md("a-operator"))
            wait_metrics(port, lambda m: value(m, "xds_control_autoscaling_paused", **POOL) == 0, "paused = 0")

            # forced scale-up: min 2 -> target 2, a decision "up", a second scale-up, a replica seen starting,
            # then a second endpoint with its own weight
            sv.stub.SetReplicaBounds(pb.SetReplicaBoundsRequest(service="llm", min_replicas=2),
                                     metadata=md("a-operator"))
            m = wait_metrics(port, lambda m: value(m, "xds_control_target_replicas", **POOL) == 2,
                             "target 2 after min_replicas 2")
            assert sum(series(m, "xds_control_autoscaler_decisions_total", **POOL, direction="up").values()) >= 1
            wait_metrics(port, lambda m: value(m, "xds_control_starting_replicas", **POOL) == 1, "a starting replica",
                         timeout=10)
            m = wait_metrics(port, lambda m: value(m, "xds_control_ready_replicas", **POOL) == 2
                             and len([v for v in series(m, "xds_control_endpoint_weight", pool="gpu").values()
                                      if v > 0]) == 2, "two weighted endpoints")
            assert value(m, "xds_control_scaling_actions_total", **POOL, action="scale_up") == 2
            assert value(m, "xds_control_current_replicas", **POOL) == 2
            assert value(m, "xds_control_starting_replicas", **POOL) == 0

            # forced scale-down: max 1 -> a drain, the replica stopped and counted, its series removed
            sv.stub.SetReplicaBounds(pb.SetReplicaBoundsRequest(service="llm", min_replicas=1, max_replicas=1),
                                     metadata=md("a-operator"))
            wait_metrics(port, lambda m: value(m, "xds_control_target_replicas", **POOL) == 1
                         and value(m, "xds_control_draining_replicas", **POOL) == 1, "a draining replica")
            m = wait_metrics(port, lambda m: value(m, "xds_control_scaling_actions_total", **POOL,
                                                   action="scale_down") == 1
                             and len(series(m, "xds_control_endpoint_weight", pool="gpu")) == 1
                             and len(series(m, "xds_control_endpoint_load_index", pool="gpu")) == 1,
                             "the drained replica stopped and its series gone")
            assert value(m, "xds_control_draining_replicas", **POOL) == 0
            assert sum(series(m, "xds_control_autoscaler_decisions_total", **POOL, direction="down").values()) >= 1
            assert value(m, "xds_control_scaling_actions_total", **POOL, action="replica_failed") is None
            traffic.stop()
            assert traffic.ok > 0 and traffic.failed == 0, (traffic.ok, traffic.failed)
        finally:
            if traffic is not None:
                traffic.stop()
            envoy.stop()
            sv.run(lambda: setattr(sv.cp.controller, "rates", None))
            sv.call(rates.close())
