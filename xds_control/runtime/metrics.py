"""Controller metrics on ``/metrics``, and the short history the dashboard plots.

Named like KEDA's (``keda_scaler_metrics_value``, ``keda_scaled_object_paused``) and Istio's ``pilot_*``, under
the ``xds_control_`` prefix, on the registry the control plane serves (``ControlPlane.metrics.registry``).
:class:`ControllerMetrics` is updated by the live loop after every tick that planned (``Controller.observer``)
and counts the loop's scaling events (``Controller.add_event_listener``). Nothing is scraped a second time:
everything comes from the tick's records and the signal reports the loop already read.

=================================================  ==============================================================
metric                                             meaning
=================================================  ==============================================================
``xds_control_current_replicas{service,pool}``     replicas the policy counted (drains excluded)
``xds_control_target_replicas{service,pool}``      replicas the policy wants
``xds_control_ready_replicas{service,pool}``       replicas with a ready endpoint
``xds_control_starting_replicas{service,pool}``    replicas started, not ready yet
``xds_control_draining_replicas{service,pool}``    endpoints being drained (draining or removable)
``xds_control_autoscaling_paused{service,pool}``   1 while an operator paused the pool
``xds_control_pool_load_index{service,pool}``      the pool's (smoothed) load index the policy used
``xds_control_endpoint_load_index{pool,endpoint}`` load index per endpoint
``xds_control_endpoint_weight{pool,endpoint}``     published EDS weight per endpoint (0 = out of rotation)
``xds_control_scaler_metric_value``                value of each signal a decision reason names
``{service,pool,metric}``
``xds_control_autoscaler_decisions_total``         decisions (one per pool per tick), by direction
``{service,pool,policy,direction,reason}``         (up/down/hold) and the first reason code
``xds_control_scaling_actions_total``              scale_up (replica started), scale_down (drained replica
``{service,pool,action}``                          stopped), replica_failed (crashed replica reaped)
``xds_control_gateway_request_rate{service,pool}`` gateway arrival rate (Envoy's statistics), requests/s
``xds_control_replica_ttft_seconds{service,pool}`` histogram: each endpoint's mean TTFT over the interval
                                                   its signal reading covers, one observation per endpoint
                                                   per tick (``vllm:time_to_first_token_seconds`` sum/count)
``xds_control_slo_ttft_target_seconds``            the TTFT target: the policy's ``load_index.latency_target_s``
``xds_control_slo_attainment_ratio``               share of the requests completed over the last minute whose
``{service,pool}``                                 endpoint's mean TTFT met the target (request-weighted by the
                                                   replicas' completion rates; an estimate from means)
=================================================  ==============================================================

``xds_control_replica_tpot_seconds{service,pool}`` histogram: each endpoint's mean time per output token over the
                                                   interval (``vllm:request_time_per_output_token_seconds``
                                                   sum/count, from the scrape source's report), one observation
                                                   per endpoint per tick with completions

Series of endpoints and pools that went away are removed. The SLO attainment estimate counts an endpoint's
interval as met when its mean TTFT is within the target and, where its mean TPOT is known, that is within
``SLO_TPOT_S`` (100 ms, the evaluation's default).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from xds_control.control.step import StepResult
    from xds_control.runtime.loop import Controller, TickRecord
    from xds_control.signals.base import SignalReport

log = logging.getLogger(__name__)

#: vLLM's TTFT buckets, cut at 80 s (``vllm:time_to_first_token_seconds``).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
#: vLLM's buckets of ``vllm:request_time_per_output_token_seconds``.
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: The TPOT bound of the SLO attainment estimate (the evaluation's default SLO).
SLO_TPOT_S = 0.1
#: The event kinds counted as scaling actions.
ACTIONS = ("scale_up", "scale_down", "replica_failed")
#: SLO attainment is computed over this many seconds of readings.
SLO_WINDOW_S = 60.0
#: Points of history kept per pool for the dashboard (one per tick).
HISTORY_POINTS = 600


@dataclass
class PoolHistory:
    """What the dashboard plots for one pool, one point per tick (wall-clock seconds)."""

    t: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    request_rate: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    current: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    target: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    ready: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    load_index: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    ttft_s: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    slo: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    #: replica (or endpoint key) -> weight per point, None where it was absent.
    weights: dict[str, deque[int | None]] = field(default_factory=dict)

    def add(self, at: float, rec: TickRecord, ttft: float | None, slo: float | None) -> None:
        n = len(self.t)
        self.t.append(at)
        self.request_rate.append(rec.request_rate)
        self.current.append(rec.current)
        self.target.append(rec.target)
        self.ready.append(rec.ready)
        self.load_index.append(_finite(rec.load_index))
        self.ttft_s.append(ttft)
        self.slo.append(slo)
        now = {(e.replica_id or e.key): e.weight for e in rec.endpoints}
        for name in now.keys() - self.weights.keys():
            self.weights[name] = deque([None] * n, maxlen=HISTORY_POINTS)
        for name, series in list(self.weights.items()):
            series.append(now.get(name))
            if all(w is None for w in series):
                del self.weights[name]  # gone for the whole window

    def as_json(self) -> dict[str, Any]:
        return {"t": list(self.t), "request_rate": list(self.request_rate), "current": list(self.current),
                "target": list(self.target), "ready": list(self.ready), "load_index": list(self.load_index),
                "ttft_s": list(self.ttft_s), "slo_attainment": list(self.slo),
                "weights": {k: list(v) for k, v in sorted(self.weights.items())}}


@dataclass(frozen=True)
class EndpointSignals:
    """The last good reading of one endpoint, as the dashboard shows it."""

    kv_cache: float | None
    ttft_s: float | None
    waiting: float | None


class ControllerMetrics:
    """The controller's gauges, counters and histograms on ``registry``; see the module docstring."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        sp = ["service", "pool"]
        self.current = Gauge("xds_control_current_replicas", "Replicas the policy counted (drains excluded)", sp,
                             registry=r)
        self.target = Gauge("xds_control_target_replicas", "Replicas the policy wants", sp, registry=r)
        self.ready = Gauge("xds_control_ready_replicas", "Replicas with a ready endpoint", sp, registry=r)
        self.starting = Gauge("xds_control_starting_replicas", "Replicas started and not ready yet", sp, registry=r)
        self.draining = Gauge("xds_control_draining_replicas", "Endpoints being drained (draining or removable)",
                              sp, registry=r)
        self.paused = Gauge("xds_control_autoscaling_paused", "1 while an operator paused autoscaling of the pool",
                            sp, registry=r)
        self.pool_load = Gauge("xds_control_pool_load_index", "The pool's smoothed load index the policy used", sp,
                               registry=r)
        self.endpoint_load = Gauge("xds_control_endpoint_load_index", "Load index per endpoint",
                                   ["pool", "endpoint"], registry=r)
        self.endpoint_weight = Gauge("xds_control_endpoint_weight",
                                     "Published EDS weight per endpoint (0 = out of rotation)", ["pool", "endpoint"],
                                     registry=r)
        self.scaler_metric = Gauge("xds_control_scaler_metric_value",
                                   "Value of each signal the pool's last decision names in its reasons",
                                   [*sp, "metric"], registry=r)
        self.decisions = Counter("xds_control_autoscaler_decisions", "Policy decisions (one per pool per tick)",
                                 [*sp, "policy", "direction", "reason"], registry=r)
        self.actions = Counter("xds_control_scaling_actions",
                               "Scaling actions: scale_up (replica started), scale_down (drained replica stopped), "
                               "replica_failed (crashed replica reaped)", [*sp, "action"], registry=r)
        self.request_rate = Gauge("xds_control_gateway_request_rate",
                                  "Gateway arrival rate of the pool from Envoy's statistics, requests/s", sp,
                                  registry=r)
        self.ttft = Histogram("xds_control_replica_ttft_seconds",
                              "Each endpoint's mean time to first token over the interval its reading covers "
                              "(one observation per endpoint per tick)", sp, buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("xds_control_replica_tpot_seconds",
                              "Each endpoint's mean time per output token over the interval its reading covers "
                              "(one observation per endpoint per tick with completions)", sp,
                              buckets=TPOT_BUCKETS, registry=r)
        self.slo_target = Gauge("xds_control_slo_ttft_target_seconds",
                                "TTFT target of the pool (the policy's load_index.latency_target_s)", sp, registry=r)
        self.slo_attainment = Gauge("xds_control_slo_attainment_ratio",
                                    "Share of the requests completed over the last minute whose endpoint's mean TTFT "
                                    "met the target (estimated from per-endpoint means)", sp, registry=r)
        self._controller: Controller | None = None
        self._endpoints: dict[str, set[str]] = {}  # pool -> endpoint label values set
        self._metrics_of: dict[str, set[str]] = {}  # pool -> scaler metric label values set
        self._pools: dict[str, str] = {}  # pool -> service, of the series set
        self._slo_window: dict[str, deque[tuple[float, float, bool]]] = {}  # pool -> (at, weight, met)
        self.history: dict[str, PoolHistory] = {}
        self.signals: dict[str, dict[str, EndpointSignals]] = {}  # pool -> key -> last reading

    def attach(self, controller: Controller) -> ControllerMetrics:
        """Update from ``controller`` from now on (before ``controller.start()``, to count its first replicas)."""
        self._controller = controller
        controller.observer = self.observe
        controller.add_event_listener(self.on_event)
        return self

    # -- from the loop ------------------------------------------------------------------------------
    def on_event(self, ev: Mapping[str, Any]) -> None:
        kind, pool = ev.get("kind"), str(ev.get("pool", ""))
        if kind in ACTIONS and pool:
            self.actions.labels(self._service_of(pool), pool, kind).inc()

    def observe(self, result: StepResult, records: list[TickRecord], reports: Mapping[str, SignalReport]) -> None:
        """Bring every series up to date with one tick (never raises: a metrics bug must not stop the loop)."""
        try:
            self._observe(result, records, reports, time.time())
        except Exception:  # noqa: BLE001 - logged; the loop goes on
            log.exception("updating the controller metrics failed")

    def _observe(self, result: StepResult, records: list[TickRecord], reports: Mapping[str, SignalReport],
                 wall: float) -> None:
        seen: set[str] = set()
        for a in result.pools:
            d = a.decision
            reason = d.reasons[0].code if d.reasons else "none"
            self.decisions.labels(a.service, a.pool, d.policy, d.direction, reason).inc()
            metrics = set()
            for r in d.reasons:
                v = _finite(r.value)
                if r.signal and v is not None:
                    self.scaler_metric.labels(a.service, a.pool, r.signal).set(v)
                    metrics.add(r.signal)
            for m in self._metrics_of.get(a.pool, set()) - metrics:
                _remove(self.scaler_metric, a.service, a.pool, m)
            self._metrics_of[a.pool] = metrics
        for rec in records:
            svc, pool = rec.service, rec.pool
            seen.add(pool)
            old_service = self._pools.get(pool)
            if old_service is not None and old_service != svc:
                self._forget(pool)
            self._pools[pool] = svc
            self.current.labels(svc, pool).set(rec.current)
            self.target.labels(svc, pool).set(rec.target)
            self.ready.labels(svc, pool).set(rec.ready)
            self.starting.labels(svc, pool).set(sum(1 for e in rec.endpoints if e.state == "starting"))
            self.draining.labels(svc, pool).set(sum(1 for e in rec.endpoints if e.phase in ("draining", "removable")))
            self.paused.labels(svc, pool).set(1 if self._is_paused(pool) else 0)
            _set_or_remove(self.pool_load, (svc, pool), rec.load_index)
            _set_or_remove(self.request_rate, (svc, pool), rec.request_rate)
            keys = set()
            for e in rec.endpoints:
                keys.add(e.key)
                self.endpoint_weight.labels(pool, e.key).set(e.weight)
                _set_or_remove(self.endpoint_load, (pool, e.key), e.load)
            for k in self._endpoints.get(pool, set()) - keys:
                _remove(self.endpoint_weight, pool, k)
                _remove(self.endpoint_load, pool, k)
            self._endpoints[pool] = keys
            ttft, slo = self._latency(svc, pool, reports.get(pool), keys, wall)
            self.history.setdefault(pool, PoolHistory()).add(wall, rec, ttft, slo)
        for pool in set(self._pools) - seen - {a.pool for a in result.pools}:
            self._forget(pool)

    def _latency(self, svc: str, pool: str, report: SignalReport | None, keys: set[str],
                 wall: float) -> tuple[float | None, float | None]:
        """Observe each endpoint's TTFT; returns the pool's request-weighted mean TTFT and its SLO attainment."""
        target = self._ttft_target(pool)
        if target is not None:
            self.slo_target.labels(svc, pool).set(target)
        window = self._slo_window.setdefault(pool, deque())
        signals: dict[str, EndpointSignals] = {}
        total = weighted = 0.0
        tpots = report.extra.get("tpot_s", {}) if report is not None else {}
        for key, s in (report.samples() if report is not None else {}).items():
            if s is None:
                continue
            tpot = _finite(tpots.get(key)) if isinstance(tpots, Mapping) else None
            if tpot is not None:
                self.tpot.labels(svc, pool).observe(tpot)
            lat = _finite(s.latency_s)
            signals[key] = EndpointSignals(_finite(s.kv_cache), lat, _finite(s.waiting))
            if lat is None:
                continue
            self.ttft.labels(svc, pool).observe(lat)
            rps = _finite(s.rps)
            w = rps if rps is not None and rps > 0 else 1.0
            total += w
            weighted += w * lat
            if target is not None:
                window.append((wall, w, lat <= target and (tpot is None or tpot <= SLO_TPOT_S)))
        # an endpoint not read this tick keeps its last reading while it is in the plan
        old = self.signals.get(pool, {})
        self.signals[pool] = {k: signals.get(k) or old[k] for k in keys if k in signals or k in old}
        while window and window[0][0] < wall - SLO_WINDOW_S:
            window.popleft()
        w_all = sum(w for _, w, _ in window)
        slo = sum(w for _, w, met in window if met) / w_all if w_all > 0 else None
        _set_or_remove(self.slo_attainment, (svc, pool), slo)
        return (weighted / total if total > 0 else None), slo

    # -- helpers ------------------------------------------------------------------------------------
    def _service_of(self, pool: str) -> str:
        rt = self._controller.runtimes.get(pool) if self._controller is not None else None
        return rt.service if rt is not None else self._pools.get(pool, "")

    def _is_paused(self, pool: str) -> bool:
        rt = self._controller.runtimes.get(pool) if self._controller is not None else None
        return bool(rt is not None and rt.paused)

    def _ttft_target(self, pool: str) -> float | None:
        rt = self._controller.runtimes.get(pool) if self._controller is not None else None
        li = getattr(rt.spec, "load_index", None) if rt is not None else None
        return _finite(getattr(li, "latency_target_s", None))

    def _forget(self, pool: str) -> None:
        """Remove every series of ``pool`` (it left the config, or moved to another service)."""
        svc = self._pools.pop(pool, "")
        for g in (self.current, self.target, self.ready, self.starting, self.draining, self.paused, self.pool_load,
                  self.request_rate, self.slo_target, self.slo_attainment):
            _remove(g, svc, pool)
        for k in self._endpoints.pop(pool, set()):
            _remove(self.endpoint_weight, pool, k)
            _remove(self.endpoint_load, pool, k)
        for m in self._metrics_of.pop(pool, set()):
            _remove(self.scaler_metric, svc, pool, m)
        self._slo_window.pop(pool, None)
        self.history.pop(pool, None)
        self.signals.pop(pool, None)


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _set_or_remove(g: Gauge, labels: Iterable[str], value: float | None) -> None:
    v = _finite(value)
    if v is None:
        _remove(g, *labels)
    else:
        g.labels(*labels).set(v)


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass  # never set


__all__ = ["ControllerMetrics", "EndpointSignals", "PoolHistory"]
