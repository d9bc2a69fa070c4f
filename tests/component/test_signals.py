"""Signal sources against live replicas and a real Prometheus.

Aspects: the scrape source maps vLLM/DCGM/process metrics to EndpointSample
fields and derives rates from two scrapes; a dead endpoint is a failed reading
(``None`` sample), never zeros; the Prometheus source (real server, 1 s scrape)
reads the same fields keyed by ``instance``, reports unscraped and down targets
and an unreachable Prometheus as failures, and stale data as stale.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np

from livehelpers import free_port

from xds_control.core.model import SignalFrame
from xds_control.signals.base import SignalSource
from xds_control.signals.prometheus import PrometheusSource
from xds_control.signals.scrape import ScrapeSource, derive_sample, parse_metrics


class Drive:
    """``n`` concurrent completions against ``url`` in the background; cancelled and closed on exit."""

    def __init__(self, url: str, n: int, n_in: int = 20, n_out: int = 30) -> None:
        self.url, self.n, self.body = url, n, {"prompt": "x", "xds_input_tokens": n_in, "max_tokens": n_out}

    async def __aenter__(self) -> Drive:
        self.session = aiohttp.ClientSession()
        self.tasks = [asyncio.create_task(self._one()) for _ in range(self.n)]
        return self

    async def _one(self) -> int:
        async with self.session.post(self.url + "/v1/completions", json=self.body) as r:
            await r.read()
            return r.status

    async def results(self) -> list[int]:
        return list(await asyncio.gather(*self.tasks))

    async def __aexit__(self, *exc: object) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.session.close()


async def test_scrape_source_live_replica(start_replica) -> None:
    r = start_replica()
    dead = f"127.0.0.1:{free_port()}"
    src = ScrapeSource(timeout_s=1.0)
    assert isinstance(src, SignalSource)
    try:
        first = await src.read([r.key, dead], now=100.0)
        s0 = first.readings[r.key].sample
        assert first.readings[r.key].ok and s0 is not None
        assert s0.running == 0 and s0.waiting == 0 and s0.kv_cache == 0 and s0.gpu_util == 0
        assert 0 < s0.gpu_mem <= 1
        assert s0.rps is None and s0.cpu_util is None and s0.latency_s is None  # rates need two scrapes
        assert s0.taken_at is not None and 100.0 <= s0.taken_at < 101.0
        # The dead endpoint is a failure, not zeros.
        bad = first.readings[dead]
        assert bad.sample is None and bad.error and not bad.ok
        assert first.failed == (dead,) and first.samples()[dead] is None

        async with Drive(r.url, 12) as load:
            await asyncio.sleep(0.5)
            mid = (await src.read([r.key], now=101.0)).readings[r.key].sample
            assert mid.running == 8 and mid.waiting == 4 and mid.kv_cache > 0 and mid.gpu_util > 0.3
            assert await load.results() == [200] * 12
        end = (await src.read([r.key], now=102.0)).readings[r.key].sample
        assert end.rps is not None and end.rps > 0
        assert end.latency_s is not None and end.latency_s > 0.02  # mean TTFT of the finished requests
        assert end.cpu_util is not None and end.cpu_util >= 0
        # The frame the load index consumes: a failed read is an all-NaN row.
        rep = await src.read([r.key, dead], now=103.0)
        frame = SignalFrame.from_samples(rep.samples())
        assert not np.isnan(frame.running[0]) and np.isnan(frame.running[1]) and np.isnan(frame.kv_cache[1])
    finally:
        await src.close()


def test_parse_metrics_percent_and_old_names() -> None:
    text = (
        "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 42.0\n"
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\nDCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 50\nDCGM_FI_DEV_GPU_UTIL{gpu=\"1\"} 70\n"
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\"} 3\n"
        "vllm:num_requests_running{engine=\"1\"} 2\n"
    )
    raw = parse_metrics(text)
    assert raw.kv_cache == 0.42 and raw.gpu_util_pct == 60 and raw.running == 5 and raw.waiting is None
    s = derive_sample(raw, None, 0.0, taken_at=None)
    assert s.gpu_util == 0.6 and s.waiting is None and s.gpu_mem is None


async def test_prometheus_source_real_server(start_replica, start_prometheus) -> None:
    a, b = start_replica(), start_replica()
    unscraped = f"127.0.0.1:{free_port()}"
    prom = start_prometheus([a.key, b.key])
    load = Drive(a.url, 12, n_out=600)  # keeps replica a busy for ~10 s
    await load.__aenter__()
    src = PrometheusSource(prom.url, window="5s", max_age_s=5.0)
    assert isinstance(src, SignalSource)
    try:
        await asyncio.to_thread(prom.wait_first_sample, "count(vllm:num_requests_running) == 2", 20.0)
        t0 = time.monotonic()
        while True:  # wait for a scrape that saw replica a busy
            rep = await src.read([a.key, b.key, unscraped], now=1000.0)
            sa = rep.readings[a.key].sample
            if sa is not None and (sa.running or 0) > 0 or time.monotonic() - t0 > 5:
                break
            await asyncio.sleep(0.3)
        assert rep.error is None
        ra, rb = rep.readings[a.key], rep.readings[b.key]
        assert ra.ok and rb.ok, (ra, rb)
        assert ra.sample.running == 8 and ra.sample.waiting == 4 and ra.sample.kv_cache > 0
        assert ra.sample.gpu_util > 0.3 and 0 < ra.sample.gpu_mem <= 1
        assert rb.sample.running == 0 and rb.sample.gpu_util == 0
        assert ra.age_s is not None and ra.age_s < 3 and 990 < ra.sample.taken_at <= 1000.0
        assert "not scraped" in rep.readings[unscraped].error and rep.readings[unscraped].sample is None
        await load.__aexit__()

        # A killed replica becomes "target down" after Prometheus' next scrape, never zeros.
        b.stop()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:
            rb = (await src.read([b.key], now=1001.0)).readings[b.key]
            if rb.error:
                break
            await asyncio.sleep(0.3)
        assert rb.sample is None and "down" in rb.error

        # Stale: with max_age_s tiny, 1-s-old data counts as stale and is withheld from samples().
        strict = PrometheusSource(prom.url, max_age_s=0.001)
        rep = await strict.read([a.key], now=1002.0)
        assert rep.readings[a.key].stale and rep.stale == (a.key,) and rep.samples()[a.key] is None
        await strict.close()

        # Unreachable Prometheus: every reading fails with the source error.
        gone = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout_s=0.5)
        rep = await gone.read([a.key], now=1003.0)
        assert rep.error and rep.readings[a.key].sample is None and rep.failed == (a.key,)
        await gone.close()
    finally:
        await load.__aexit__()
        await src.close()


def test_interval_mean_of_a_histogram_between_two_scrapes() -> None:
    from xds_control.signals.scrape import interval_mean

    assert interval_mean(3.0, 12.0, 1.0, 2.0) == 0.2  # 2 s over 10 new observations
    assert interval_mean(1.0, 2.0, 1.0, 2.0) is None  # nothing new
    assert interval_mean(0.5, 1.0, 1.0, 2.0) is None  # a counter reset (the replica restarted)
    assert interval_mean(None, 2.0, 1.0, 1.0) is None
