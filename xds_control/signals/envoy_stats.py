"""The gateway arrival rate per pool, read from Envoy's own statistics.

The simulator hands every policy the rate of requests arriving at the gateway for a
pool (:attr:`xds_control.core.model.ServiceSignals.request_rate`, requests/s over the
last 10 s, like a Prometheus ``rate()`` window). This module is the live source of
that number: a :class:`RequestRateSource` returns a :class:`RateReport` per read.

Which counter (measured on Envoy 1.40 with pools as EDS clusters named after the pool)
------------------------------------------------------------------------------------
* ``cluster.POOL.upstream_rq_total`` counts upstream *attempts*: every retry is one
  more (a pool answering 503 with ``num_retries: 2`` showed 63 for 21 requests), and a
  request that finds no healthy host is not counted at all (a pool with no endpoints
  showed 0 for 36 requests). The second is the case that matters most: a pool scaled
  to zero must still show its demand, or it never scales from zero.
* ``cluster.POOL.upstream_rq_completed`` counts each request once (retries and "no
  healthy upstream" included), but when it *finishes*: LLM responses take seconds to
  minutes, and under saturation it is the throughput, not the demand, which is the
  wrong number for a scaler.
* The listener's ``http.PREFIX.downstream_rq_total`` counts arrivals, but per
  listener: one route splits a service over its pools (weighted clusters), so it cannot
  say which pool a request went to.

So the arrival count of a pool is, per proxy,
``upstream_rq_total - upstream_rq_retry + upstream_cx_none_healthy`` (attempts minus
retries, plus requests refused for want of a host); on the measurements above it gave
exactly 21, 36 and 33 for 90 requests sent. Requests turned away by a circuit breaker
(``upstream_rq_pending_overflow``) were not measured. The rate of each counter is
taken on its own (so a reset of each is handled) and then combined, and summed over
the proxies; a (transiently) negative result is clamped to 0.

Why the admin ``/stats?format=json`` and not ``/stats/prometheus``
------------------------------------------------------------------
Both take a ``filter`` regex, matched against Envoy's own stat name
(``cluster.POOL.upstream_rq_total``), and both print zero-valued counters unless
``usedonly`` is given (we leave it off: a 0 tells "cluster present, no traffic" apart
from "no such cluster"). The Prometheus format names the metric
``envoy_cluster_upstream_rq_total{envoy_cluster_name="POOL"}``, but Envoy's default tag
extraction stops at the first ``.``: a pool named ``llm.v3`` comes out as
``envoy_cluster_v3_upstream_rq_total{envoy_cluster_name="llm"}``. Pool names may hold
dots, so this source reads the JSON format, whose names are exact. (A Prometheus
scraping Envoy sees the mangled names: see :meth:`PrometheusSource.read_rates
<xds_control.signals.prometheus.PrometheusSource.read_rates>`.)

The rate (:class:`CounterWindow`)
---------------------------------
Samples are stamped with the ``now`` the caller passes (its clock, not ours). The rate
is the counter's increase from the newest sample at or before ``now - window_s`` (or
the oldest sample, while the window is filling, like the simulator's
``min(RATE_WINDOW_S, t)``) to the newest one, divided by the time between them; a
drop of the counter is a reset (the proxy restarted, or the cluster was re-created)
and counts as an increase from 0, as Prometheus' ``rate()`` does. With one sample the
rate is ``None``, never 0. A read that fails gives ``None`` rates and an ``error``,
never zeros.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from xds_control.config.schema import SignalsConfig

__all__ = [
    "RateReport",
    "RequestRateSource",
    "CounterWindow",
    "EnvoyAdminRateSource",
    "ARRIVAL_COUNTERS",
    "check_admin_url",
    "make_rate_source",
]

#: Envoy cluster counters and their sign in the arrival count of a pool.
ARRIVAL_COUNTERS: Mapping[str, int] = {
    "upstream_rq_total": 1,
    "upstream_rq_retry": -1,
    "upstream_cx_none_healthy": 1,
}


@dataclass(frozen=True)
class RateReport:
    """One read of the gateway arrival rate, per pool, in requests/s."""

    source: str
    #: The ``now`` the caller passed to ``read_rates``.
    now: float
    #: Per requested pool: the rate, or ``None`` when unknown (first read, no such cluster, failed read).
    rates: Mapping[str, float | None]
    #: Why the read failed (every rate is then ``None``); ``None`` when it did not.
    error: str | None = None
    #: Per pool whose rate is ``None``: why.
    reasons: Mapping[str, str] = field(default_factory=dict)
    #: Seconds the read took.
    elapsed_s: float = 0.0

    def rate(self, pool: str) -> float | None:
        return None if self.error is not None else self.rates.get(pool)

    @property
    def ok(self) -> bool:
        return self.error is None and all(v is not None for v in self.rates.values())


@runtime_checkable
class RequestRateSource(Protocol):
    """Reads the gateway arrival rate per pool. Never raises for a failed read; reports it."""

    name: str

    async def read_rates(self, pools: Sequence[str], now: float) -> RateReport:
        """Requests/s per pool over the source's window; ``now`` is the caller's clock."""
        ...

    async def close(self) -> None: ...


class CounterWindow:
    """Samples of one monotonically increasing counter and its rate over the last ``window_s``."""

    def __init__(self, window_s: float) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        self.window_s = float(window_s)
        self._samples: deque[tuple[float, float]] = deque()

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def last_t(self) -> float | None:
        return self._samples[-1][0] if self._samples else None

    def add(self, t: float, value: float) -> None:
        """Record ``value`` at time ``t`` (a second sample at the same ``t`` replaces the first)."""
        s = self._samples
        if s and t < s[-1][0]:
            raise ValueError(f"sample time went backwards: {t!r} after {s[-1][0]!r}")
        if s and t == s[-1][0]:
            s.pop()
        s.append((float(t), float(value)))
        start = t - self.window_s
        # Keep the newest sample at or before the window start (the base), but not one from long ago
        # (reads stopped for a while): a rate must not span a gap of more than two windows.
        while len(s) >= 2 and s[1][0] <= start:
            s.popleft()
        if len(s) >= 2 and s[0][0] < t - 2 * self.window_s:
            s.popleft()

    def rate(self) -> float | None:
        """Increase per second from the base sample to the newest; ``None`` with fewer than two."""
        s = self._samples
        if len(s) < 2 or s[-1][0] <= s[0][0]:
            return None
        inc = 0.0
        prev = s[0][1]
        for _, v in list(s)[1:]:
            inc += v - prev if v >= prev else v  # a drop is a reset: the counter restarted from 0
            prev = v
        return inc / (s[-1][0] - s[0][0])


def check_admin_url(url: str) -> str:
    """``url`` as an Envoy admin base URL (``http(s)://HOST:PORT``, no trailing ``/``); ValueError if not one."""
    from xds_control.config.schema import SignalsConfig

    return SignalsConfig.check_admin_url(url)


def _stat_filter(pools: Sequence[str]) -> str:
    """Envoy admin ``filter`` regex for the arrival counters of ``pools`` (names: letters, digits, '.', '_', '-')."""
    names = "|".join(p.replace(".", r"\.") for p in pools)
    return rf"^cluster\.({names})\.({'|'.join(ARRIVAL_COUNTERS)})$"


class EnvoyAdminRateSource:
    """Arrival rate per pool from each Envoy's admin ``/stats``, summed over the proxies.

    Args:
        admin_urls: admin base URLs, e.g. ``http://127.0.0.1:9901`` (one per proxy).
        window_s: rate window in seconds (the simulator uses 10).
        timeout_s: HTTP timeout per proxy and read.

    Read at least every ``window_s`` and pass the same pools each time: a rate spans at most
    two windows, so after a longer gap the first read is ``None`` again. If any proxy fails to
    answer, the report has an ``error`` and no rates (a partial sum would under-count and look
    like a drop in demand); the proxies that answered still record their samples. A pool absent
    from a proxy that answered counts 0 there (it has no such cluster, so it sends nothing);
    absent from every proxy, its rate is ``None``.
    """

    name = "envoy"

    def __init__(self, admin_urls: Sequence[str], window_s: float = 10.0, timeout_s: float = 1.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.window_s = float(window_s)
        self.timeout_s = float(timeout_s)
        self.admin_urls: tuple[str, ...] = ()
        #: (admin url, pool, counter) -> samples
        self._windows: dict[tuple[str, str, str], CounterWindow] = {}
        self._session: Any = None
        self._closed = False
        self.set_admin_urls(admin_urls)

    def set_admin_urls(self, admin_urls: Sequence[str]) -> None:
        """Replace the proxies read (e.g. after a config reload); history of removed proxies is dropped."""
        urls = tuple(dict.fromkeys(check_admin_url(u) for u in admin_urls))
        if not urls:
            raise ValueError("admin_urls: at least one Envoy admin URL is needed")
        self.admin_urls = urls
        self._windows = {k: w for k, w in self._windows.items() if k[0] in urls}

    async def _get(self, url: str, pools: Sequence[str]) -> dict[str, float]:
        import aiohttp

        if self._closed:  # never open a session that close() would not close
            raise RuntimeError("the rate source is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        q = urllib.parse.urlencode({"format": "json", "filter": _stat_filter(pools)})
        async with self._session.get(f"{url}/stats?{q}") as r:
            body = await r.text()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {body[:200]}")
        stats = json.loads(body).get("stats", [])
        return {s["name"]: float(s["value"]) for s in stats if "name" in s and "value" in s}

    async def read_rates(self, pools: Sequence[str], now: float) -> RateReport:
        t_call = time.monotonic()
        pools = list(dict.fromkeys(pools))
        if not pools:
            return RateReport(self.name, now, {}, elapsed_s=time.monotonic() - t_call)
        urls = self.admin_urls
        results = await asyncio.gather(*(self._get(u, pools) for u in urls), return_exceptions=True)
        errors: list[str] = []
        present: dict[str, bool] = {p: False for p in pools}
        first: set[str] = set()
        totals: dict[str, float] = {p: 0.0 for p in pools}
        for url, res in zip(urls, results, strict=True):
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                errors.append(f"envoy admin {url}: {type(res).__name__}: {res}"[:300])
                continue
            for p in pools:
                if f"cluster.{p}.upstream_rq_total" not in res:
                    for c in ARRIVAL_COUNTERS:  # the cluster is gone from this proxy: so is its history
                        self._windows.pop((url, p, c), None)
                    continue
                present[p] = True
                for c, sign in ARRIVAL_COUNTERS.items():
                    w = self._windows.get((url, p, c))
                    if w is None:
                        w = self._windows[(url, p, c)] = CounterWindow(self.window_s)
                    w.add(now, res.get(f"cluster.{p}.{c}", 0.0))
                    r = w.rate()
                    if r is None:
                        first.add(p)
                    else:
                        totals[p] += sign * r
        # Forget series not read for more than two windows (pools no longer asked for).
        for k in [k for k, w in self._windows.items() if w.last_t is not None and w.last_t < now - 2 * self.window_s]:
            del self._windows[k]
        elapsed = time.monotonic() - t_call
        if errors:
            err = "; ".join(errors)
            return RateReport(self.name, now, {p: None for p in pools}, error=err,
                              reasons={p: "read failed" for p in pools}, elapsed_s=elapsed)
        rates: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for p in pools:
            if not present[p]:
                rates[p], reasons[p] = None, f"no cluster {p!r} on any proxy"
            elif p in first:
                rates[p], reasons[p] = None, "one sample so far: a rate needs two reads"
            else:
                rates[p] = max(0.0, totals[p])
        return RateReport(self.name, now, rates, reasons=reasons, elapsed_s=elapsed)

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def make_rate_source(signals: SignalsConfig) -> RequestRateSource | None:
    """The request-rate source ``controller.signals`` asks for (``None`` when ``request_rate`` resolves to off)."""
    kind = signals.rate_source
    if kind == "envoy":
        return EnvoyAdminRateSource(signals.envoy_admin, window_s=signals.rate_window_s, timeout_s=signals.timeout_s)
    if kind == "prometheus":
        from xds_control.signals.prometheus import PrometheusSource

        assert signals.prometheus_url is not None
        return PrometheusSource(signals.prometheus_url, queries=signals.queries or None, window=signals.window,
                                rate_window=f"{round(signals.rate_window_s * 1000)}ms", timeout_s=signals.timeout_s)
    return None
