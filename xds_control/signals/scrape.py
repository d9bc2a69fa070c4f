"""Direct scrape of each endpoint's ``/metrics`` (the embedded default signal source).

Like AIBrix and the Gateway API Inference Extension's endpoint picker, this reads
the engine's own Prometheus endpoint, without a Prometheus server. Names mapped
(vLLM V1 and dcgm-exporter; older vLLM names as fallbacks):

=============  ==========================================================================
field          source
=============  ==========================================================================
running        ``vllm:num_requests_running`` (sum over label sets)
waiting        ``vllm:num_requests_waiting``
kv_cache       ``vllm:kv_cache_usage_perc`` (or ``vllm:gpu_cache_usage_perc``); values > 1
               are taken as percent
gpu_util       ``DCGM_FI_DEV_GPU_UTIL`` / 100 (mean over GPUs)
gpu_mem        ``DCGM_FI_DEV_FB_USED`` / (``FB_USED`` + ``FB_FREE``)
cpu_util       rate of ``process_cpu_seconds_total`` between two scrapes / ``cpu_cores``
latency_s      mean ``vllm:time_to_first_token_seconds`` (or e2e latency, ``latency="e2e"``)
               of the requests finished between two scrapes; ``None`` if none finished
rps            rate of ``vllm:request_success_total`` between two scrapes
=============  ==========================================================================

Rates need two scrapes: the first read of an endpoint has them ``None`` (missing,
not zero). A counter that went down (the replica restarted) restarts the rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from xds_control.core.model import EndpointSample
from xds_control.signals.base import EndpointReading, SignalReport

__all__ = ["ScrapeSource", "RawMetrics", "parse_metrics", "derive_sample"]


@dataclass(frozen=True)
class RawMetrics:
    """The numbers we use from one scrape (``None`` = not exposed)."""

    running: float | None = None
    waiting: float | None = None
    kv_cache: float | None = None
    gpu_util_pct: float | None = None
    fb_used: float | None = None
    fb_free: float | None = None
    cpu_seconds: float | None = None
    success_total: float | None = None
    ttft_sum: float | None = None
    ttft_count: float | None = None
    e2e_sum: float | None = None
    e2e_count: float | None = None
    tpot_sum: float | None = None
    tpot_count: float | None = None
    prefix_queries: float | None = None
    prefix_hits: float | None = None


_SUM = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "DCGM_FI_DEV_FB_USED": "fb_used",
    "DCGM_FI_DEV_FB_FREE": "fb_free",
    "process_cpu_seconds_total": "cpu_seconds",
    "vllm:request_success_total": "success_total",
    "vllm:time_to_first_token_seconds_sum": "ttft_sum",
    "vllm:time_to_first_token_seconds_count": "ttft_count",
    "vllm:e2e_request_latency_seconds_sum": "e2e_sum",
    "vllm:e2e_request_latency_seconds_count": "e2e_count",
    "vllm:request_time_per_output_token_seconds_sum": "tpot_sum",
    "vllm:request_time_per_output_token_seconds_count": "tpot_count",
    "vllm:prefix_cache_queries_total": "prefix_queries",
    "vllm:prefix_cache_hits_total": "prefix_hits",
}
_MEAN = {
    "vllm:kv_cache_usage_perc": "kv_cache",
    "vllm:gpu_cache_usage_perc": "kv_cache_old",
    "DCGM_FI_DEV_GPU_UTIL": "gpu_util_pct",
}


def parse_metrics(text: str) -> RawMetrics:
    """Pick the mapped metrics out of Prometheus text exposition.

    Raises ``ValueError`` naming the line if the text is unparsable, or the metric if a value we use is
    not a finite number >= 0 (NaN, ±Inf, negative): such a reading is a failed one (counted as saturated),
    never a number that could zero a weight or overflow the load index.
    """
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises several types on garbage
        raise ValueError(_locate_parse_error(text, e)) from None
    sums: dict[str, float] = {}
    means: dict[str, list[float]] = {}
    for fam in families:
        for s in fam.samples:
            f = _SUM.get(s.name)
            if f is not None:
                sums[f] = sums.get(f, 0.0) + _value(s.name, s.value)
                if not math.isfinite(sums[f]):
                    raise ValueError(f"{s.name}: the sum over its label sets is not finite")
                continue
            f = _MEAN.get(s.name)
            if f is not None:
                means.setdefault(f, []).append(_value(s.name, s.value))
    avg = {k: sum(x / len(v) for x in v) for k, v in means.items() if v}  # no overflow for huge values
    kv = avg.get("kv_cache", avg.get("kv_cache_old"))
    if kv is not None and kv > 1.0:  # exported in percent
        kv /= 100.0
    return RawMetrics(kv_cache=kv, gpu_util_pct=avg.get("gpu_util_pct"), **sums)


def _value(name: str, value: object) -> float:
    v = float(value)  # type: ignore[arg-type]  # any parsed value; float() raising is handled by the caller
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} = {value!r}: not a finite number >= 0")
    return v


def _locate_parse_error(text: str, err: Exception) -> str:
    for i, line in enumerate(text.splitlines(), 1):
        try:
            list(text_string_to_metric_families(line + "\n"))
        except Exception as e:  # noqa: BLE001 - any parser error on this line alone
            return f"line {i} ({line[:80]!r}): {type(e).__name__}: {e}"
    return f"unparsable exposition: {type(err).__name__}: {err}"


def _rate(cur: float | None, prev: float | None, dt: float) -> float | None:
    if cur is None or prev is None or dt <= 0 or cur < prev:
        return None
    r = (cur - prev) / dt
    return r if math.isfinite(r) else None


def interval_mean(s_cur: float | None, c_cur: float | None, s_prev: float | None, c_prev: float | None
                  ) -> float | None:
    """Mean of a histogram's observations between two scrapes (None when none, or a counter reset)."""
    if s_cur is None or c_cur is None or s_prev is None or c_prev is None:
        return None
    dc, ds = c_cur - c_prev, s_cur - s_prev
    return ds / dc if dc > 0 and ds >= 0 and math.isfinite(ds / dc) else None


def derive_sample(
    cur: RawMetrics,
    prev: RawMetrics | None,
    dt_s: float,
    *,
    taken_at: float | None,
    cpu_cores: float = 1.0,
    latency: str = "ttft",
) -> EndpointSample:
    """Turn one scrape (and the previous one, ``dt_s`` seconds earlier) into an :class:`EndpointSample`."""
    gpu_mem = None
    if cur.fb_used is not None and cur.fb_free is not None and cur.fb_used + cur.fb_free > 0:
        gpu_mem = cur.fb_used / (cur.fb_used + cur.fb_free)
    cpu = None
    lat = None
    rps = None
    if prev is not None:
        r = _rate(cur.cpu_seconds, prev.cpu_seconds, dt_s)
        cpu = None if r is None else r / cpu_cores
        rps = _rate(cur.success_total, prev.success_total, dt_s)
        s_cur, c_cur, s_prev, c_prev = (
            (cur.ttft_sum, cur.ttft_count, prev.ttft_sum, prev.ttft_count)
            if latency == "ttft"
            else (cur.e2e_sum, cur.e2e_count, prev.e2e_sum, prev.e2e_count)
        )
        if None not in (s_cur, c_cur, s_prev, c_prev):
            dc = c_cur - c_prev  # type: ignore[operator]  # None was excluded just above
            ds = s_cur - s_prev  # type: ignore[operator]  # None was excluded just above
            if dc > 0 and ds >= 0 and math.isfinite(ds / dc):
                lat = ds / dc
    return EndpointSample(
        gpu_util=None if cur.gpu_util_pct is None else cur.gpu_util_pct / 100.0,
        gpu_mem=gpu_mem,
        cpu_util=cpu,
        latency_s=lat,
        running=cur.running,
        waiting=cur.waiting,
        kv_cache=cur.kv_cache,
        rps=rps,
        taken_at=taken_at,
    )


class ScrapeSource:
    """Scrapes ``http://<key>/metrics`` of every endpoint concurrently.

    Args:
        timeout_s: per-scrape timeout; a timeout is a failed reading.
        cpu_cores: divides the CPU rate (1.0: one core = 100 %).
        latency: ``"ttft"`` (default) or ``"e2e"`` for :attr:`EndpointSample.latency_s`.
        path: metrics path.
    """

    name = "scrape"

    def __init__(
        self,
        *,
        timeout_s: float = 1.0,
        cpu_cores: float = 1.0,
        latency: str = "ttft",
        path: str = "/metrics",
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if latency not in ("ttft", "e2e"):
            raise ValueError(f"latency must be 'ttft' or 'e2e', got {latency!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.cpu_cores = cpu_cores
        self.latency = latency
        self.path = path
        self._session = session
        self._own_session = session is None
        # key -> (monotonic time of the scrape, raw metrics)
        self._prev: dict[str, tuple[float, RawMetrics]] = {}
        #: Per endpoint: mean TPOT over the last interval with completions (``SignalReport.extra["tpot_s"]``).
        self._tpot: dict[str, float] = {}
        #: Per endpoint: the prefix-cache counters (queries, hits), tokens (``SignalReport.extra["prefix_cache"]``).
        self._prefix: dict[str, tuple[float, float]] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=0),
            )
            self._own_session = True
        return self._session

    async def _one(self, key: str, now: float, t_call: float) -> EndpointReading:
        url = f"http://{key}{self.path}"
        try:
            async with self._http().get(url) as resp:
                if resp.status != 200:
                    return EndpointReading(key, None, error=f"HTTP {resp.status} from {url}")
                text = await resp.text()
        except TimeoutError:
            return EndpointReading(key, None, error=f"timeout after {self.timeout_s:g} s scraping {url}")
        except (aiohttp.ClientError, OSError) as e:
            return EndpointReading(key, None, error=f"{type(e).__name__} scraping {url}: {e}")
        t = time.monotonic()
        try:
            raw = parse_metrics(text)
        except Exception as e:  # the parser raises several types on garbage
            return EndpointReading(key, None, error=f"unparsable metrics from {url}: {e}")
        prev = self._prev.get(key)
        self._prev[key] = (t, raw)
        if raw.prefix_queries is not None and raw.prefix_hits is not None:
            self._prefix[key] = (raw.prefix_queries, raw.prefix_hits)
        if prev is not None:
            p = prev[1]
            tpot = interval_mean(raw.tpot_sum, raw.tpot_count, p.tpot_sum, p.tpot_count)
            if tpot is not None:
                self._tpot[key] = tpot
            else:
                self._tpot.pop(key, None)
        sample = derive_sample(
            raw,
            prev[1] if prev else None,
            t - prev[0] if prev else 0.0,
            taken_at=now + (t - t_call),
            cpu_cores=self.cpu_cores,
            latency=self.latency,
        )
        return EndpointReading(key, sample, age_s=0.0)

    async def read(self, endpoints: Sequence[str], now: float) -> SignalReport:
        t_call = time.monotonic()
        keys = list(dict.fromkeys(endpoints))
        results = await asyncio.gather(*(self._one(k, now, t_call) for k in keys))
        for k in set(self._prev) - set(keys):
            del self._prev[k]
        tpot = {k: self._tpot[k] for k in keys if k in self._tpot}
        self._tpot = tpot
        prefix = {k: self._prefix[k] for k in keys if k in self._prefix}
        self._prefix = prefix
        return SignalReport(
            source=self.name,
            now=now,
            readings={r.key: r for r in results},
            elapsed_s=time.monotonic() - t_call,
            # not a policy input: the mean TPOT per endpoint over the interval, for the controller's metrics
            extra={"tpot_s": tpot, "prefix_cache": prefix},
        )

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None
