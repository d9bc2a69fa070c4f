"""Signals from a Prometheus server through prometheus-api-client (PromQL per field).

Each :class:`~xds_control.core.model.EndpointSample` field has one PromQL query
returning an instant vector with one series per endpoint, identified by the
``key_label`` label (default ``instance``, which Prometheus sets to the scraped
``host:port`` — the same key as the controller's endpoints). The defaults below
use vLLM and dcgm-exporter names; override any of them with ``queries=``.
``{window}`` in a query is replaced by the ``window`` argument (the rate window;
use at least 4 scrape intervals).

Failure and staleness, per endpoint:

* the ``up`` query decides whether Prometheus scrapes the endpoint at all and
  whether the last scrape worked (``up == 0`` → ``error="target down"``); an
  endpoint with no ``up`` series → ``error="not scraped by Prometheus"``;
* the ``timestamp`` query (time of the newest sample) gives the data's age;
  older than ``max_age_s`` → ``stale=True``;
* Prometheus unreachable or a query error → every reading fails with the error
  (a single failed field query only leaves that field ``None`` and is listed in
  ``SignalReport.extra["field_errors"]``).

The gateway arrival rate per pool (:meth:`PrometheusSource.read_rates`, a
:class:`~xds_control.signals.envoy_stats.RequestRateSource`) comes from the Envoy
cluster counters Prometheus scrapes from each proxy's ``/stats/prometheus``: see
:data:`DEFAULT_RATE_QUERY` and, for why these counters, :mod:`xds_control.signals.envoy_stats`.

prometheus-api-client is synchronous (requests); each read runs its queries in
one worker thread (``asyncio.to_thread``) so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from xds_control.core.model import EndpointSample
from xds_control.signals.base import EndpointReading, SignalReport
from xds_control.signals.envoy_stats import RateReport

__all__ = ["PrometheusSource", "DEFAULT_QUERIES", "DEFAULT_RATE_QUERY"]

#: PromQL per EndpointSample field (``{window}`` = rate window). All aggregate ``by (instance)``;
#: :class:`PrometheusSource` rewrites ``instance`` to its ``key_label``.
DEFAULT_QUERIES: Mapping[str, str] = {
    "running": "sum by (instance) (vllm:num_requests_running)",
    "waiting": "sum by (instance) (vllm:num_requests_waiting)",
    "kv_cache": "avg by (instance) (vllm:kv_cache_usage_perc)",
    "gpu_util": "avg by (instance) (DCGM_FI_DEV_GPU_UTIL) / 100",
    "gpu_mem": "sum by (instance) (DCGM_FI_DEV_FB_USED)"
    " / (sum by (instance) (DCGM_FI_DEV_FB_USED) + sum by (instance) (DCGM_FI_DEV_FB_FREE))",
    "cpu_util": "sum by (instance) (rate(process_cpu_seconds_total[{window}]))",
    "latency_s": "sum by (instance) (rate(vllm:time_to_first_token_seconds_sum[{window}]))"
    " / sum by (instance) (rate(vllm:time_to_first_token_seconds_count[{window}]))",
    "rps": "sum by (instance) (rate(vllm:request_success_total[{window}]))",
    # Bookkeeping, not sample fields:
    "_up": "max by (instance) (up)",
    "_timestamp": "max by (instance) (timestamp(vllm:num_requests_running))",
}

#: Requests/s arriving at the gateways per pool (Envoy cluster ``POOL``), summed over the proxies:
#: attempts minus retries plus requests refused for want of a healthy host (see
#: :mod:`xds_control.signals.envoy_stats`). ``{pools}`` is replaced by a regex matching the requested
#: pools, ``{window}`` by the rate window; the result must be labelled ``envoy_cluster_name``.
#: Override it with a ``request_rate`` entry in ``queries``. Envoy's Prometheus output cuts a cluster
#: name at its first ``.`` (``llm.v3`` -> ``envoy_cluster_name="llm"``): pools read this way need
#: names without dots (or an Envoy ``stats_tags`` rule for ``envoy.cluster_name``).
DEFAULT_RATE_QUERY = (
    'sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_total{envoy_cluster_name=~"{pools}"}[{window}]))'
    ' - sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_retry{envoy_cluster_name=~"{pools}"}[{window}]))'
    ' + sum by (envoy_cluster_name)'
    ' (rate(envoy_cluster_upstream_cx_none_healthy{envoy_cluster_name=~"{pools}"}[{window}]))'
)

_FIELDS = tuple(f.name for f in fields(EndpointSample) if f.name != "taken_at")


def _unreachable(e: BaseException) -> bool:
    import requests

    return isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout))


class PrometheusSource:
    """Reads samples from Prometheus.

    Args:
        url: Prometheus base URL, e.g. ``http://127.0.0.1:9090``.
        queries: overrides of :data:`DEFAULT_QUERIES` by field name (``None`` removes one).
        window: rate window substituted for ``{window}``.
        key_label: label holding the endpoint key (``host:port``).
        rate_window: rate window of :meth:`read_rates` (the simulator uses 10 s; at least 4 scrape intervals).
        max_age_s: data older than this is stale.
        timeout_s: HTTP timeout per query.
        client: a ready ``PrometheusConnect`` (tests, custom auth); built from ``url`` otherwise.
    """

    name = "prometheus"

    def __init__(
        self,
        url: str,
        *,
        queries: Mapping[str, str | None] | None = None,
        window: str = "15s",
        key_label: str = "instance",
        max_age_s: float = 10.0,
        timeout_s: float = 2.0,
        client: Any = None,
        rate_window: str = "10s",
    ) -> None:
        merged: dict[str, str] = dict(DEFAULT_QUERIES)
        queries = dict(queries or {})
        rate_query = queries.pop("request_rate", None) or DEFAULT_RATE_QUERY
        if "{pools}" not in rate_query:
            raise ValueError(f"queries.request_rate must contain '{{pools}}' (the pools' regex), got {rate_query!r}")
        self.rate_query = rate_query.replace("{window}", rate_window)
        for k, q in queries.items():
            if k not in DEFAULT_QUERIES:
                raise ValueError(f"unknown signal {k!r} in queries; known: {', '.join(DEFAULT_QUERIES)}, request_rate")
            if q is None:
                merged.pop(k, None)
            else:
                merged[k] = q
        if "_up" not in merged:
            raise ValueError("the '_up' query cannot be removed: it tells failed targets apart")
        self.queries = {
            k: q.replace("{window}", window).replace("(instance)", f"({key_label})") for k, q in merged.items()
        }
        self.url = url
        self.key_label = key_label
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self._client = client

    def _connect(self) -> Any:
        if self._client is None:
            from prometheus_api_client import PrometheusConnect
            from urllib3.util.retry import Retry

            self._client = PrometheusConnect(
                url=self.url, disable_ssl=True, retry=Retry(total=0), timeout=self.timeout_s
            )
        return self._client

    def _query_all(self) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, str]]:
        """Run every query (blocking). Returns ``{field: {key: (value, ts)}}`` and per-field errors."""
        client = self._connect()
        out: dict[str, dict[str, tuple[float, float]]] = {}
        errors: dict[str, str] = {}
        for f, q in self.queries.items():
            try:
                result = client.custom_query(q)
            except Exception as e:  # requests / API errors
                errors[f] = f"{type(e).__name__}: {e}"[:300]
                # Unreachable or hung (a timeout): nothing else will work either, and going on would cost a
                # timeout per query per tick (a Prometheus that stopped answering stalled ticks for ~20 s).
                if f == "_up" or _unreachable(e):
                    raise
                continue
            vals: dict[str, tuple[float, float]] = {}
            for series in result:
                key = series.get("metric", {}).get(self.key_label)
                if key is None:
                    continue
                ts, v = series["value"]
                vals[key] = (float(v), float(ts))
            out[f] = vals
        return out, errors

    async def read(self, endpoints: Sequence[str], now: float) -> SignalReport:
        t_call = time.monotonic()
        keys = list(dict.fromkeys(endpoints))
        try:
            data, field_errors = await asyncio.to_thread(self._query_all)
        except Exception as e:
            err = f"prometheus at {self.url} failed: {type(e).__name__}: {e}"[:400]
            return SignalReport(
                source=self.name, now=now, error=err,
                readings={k: EndpointReading(k, None, error=err) for k in keys},
                elapsed_s=time.monotonic() - t_call,
            )  # fmt: skip
        wall = time.time()
        readings: dict[str, EndpointReading] = {}
        up = data.get("_up", {})
        stamps = data.get("_timestamp", {})
        for k in keys:
            if k not in up:
                why = f"not scraped by Prometheus (no 'up' series for {self.key_label}={k!r})"
                readings[k] = EndpointReading(k, None, error=why)
                continue
            if up[k][0] < 1:
                readings[k] = EndpointReading(k, None, error="target down (up == 0)")
                continue
            vals: dict[str, float | None] = {}
            for f in _FIELDS:
                v = data.get(f, {}).get(k)
                vals[f] = None if v is None or not math.isfinite(v[0]) else v[0]
            age = None
            if k in stamps:
                age = max(0.0, wall - stamps[k][0])
            taken_at = now - age if age is not None else None
            if all(v is None for v in vals.values()):
                readings[k] = EndpointReading(k, None, error="no samples for the endpoint", age_s=age)
                continue
            stale = age is not None and age > self.max_age_s
            readings[k] = EndpointReading(k, EndpointSample(**vals, taken_at=taken_at), stale=stale, age_s=age)
        return SignalReport(
            source=self.name, now=now, readings=readings, elapsed_s=time.monotonic() - t_call,
            extra={"field_errors": field_errors} if field_errors else {},
        )  # fmt: skip

    def _query_rates(self, pools: Sequence[str]) -> dict[str, float]:
        regex = "|".join(p.replace(".", "\\\\.") for p in pools)  # PromQL string: "\\." is a regex "\."
        out: dict[str, float] = {}
        for series in self._connect().custom_query(self.rate_query.replace("{pools}", regex)):
            pool = series.get("metric", {}).get("envoy_cluster_name")
            if pool is not None:
                out[pool] = float(series["value"][1])
        return out

    async def read_rates(self, pools: Sequence[str], now: float) -> RateReport:
        """Gateway arrival rate per pool (requests/s) from :attr:`rate_query`; a pool without a series is ``None``."""
        t_call = time.monotonic()
        pools = list(dict.fromkeys(pools))
        if not pools:
            return RateReport("prometheus", now, {}, elapsed_s=time.monotonic() - t_call)
        try:
            got = await asyncio.to_thread(self._query_rates, pools)
        except Exception as e:
            err = f"prometheus at {self.url} failed: {type(e).__name__}: {e}"[:400]
            return RateReport("prometheus", now, {p: None for p in pools}, error=err,
                              reasons={p: "read failed" for p in pools}, elapsed_s=time.monotonic() - t_call)
        rates: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for p in pools:
            v = got.get(p)
            if v is None or not math.isfinite(v):
                rates[p] = None
                reasons[p] = f"no series for envoy_cluster_name={p!r} (not scraped yet, or no such cluster)"
            else:
                rates[p] = max(0.0, v)
        return RateReport("prometheus", now, rates, reasons=reasons, elapsed_s=time.monotonic() - t_call)

    async def close(self) -> None:
        client, self._client = self._client, None
        session = getattr(client, "_session", None)
        if session is not None:
            session.close()
