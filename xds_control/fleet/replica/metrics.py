"""Prometheus metrics of the emulated replica, named as vLLM and dcgm-exporter name them.

Everything lives in a per-process :class:`~prometheus_client.CollectorRegistry`
(never the global default one), so several replicas can live in one test process.

vLLM (V1 engine) names and meanings used here:

* ``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` — gauges;
* ``vllm:kv_cache_usage_perc`` — gauge, a *fraction* 0..1 despite the name;
* ``vllm:time_to_first_token_seconds``, ``vllm:e2e_request_latency_seconds``,
  ``vllm:request_time_per_output_token_seconds`` (per request: time after the first token / (tokens - 1)) —
  histograms with vLLM's buckets;
* ``vllm:request_success_total{finished_reason}`` — counter;
* ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total`` — counters;
* ``vllm:prefix_cache_queries_total``, ``vllm:prefix_cache_hits_total`` — counters, in tokens: prompt
  tokens looked up in the prefix cache at admission, and those found (hit rate = hits / queries).

dcgm-exporter: ``DCGM_FI_DEV_GPU_UTIL`` (gauge, percent 0..100; the cost model's
utilisation estimate averaged over the last second, not "a kernel was running"),
``DCGM_FI_DEV_FB_USED`` / ``DCGM_FI_DEV_FB_FREE`` (MiB). The process collector
adds ``process_cpu_seconds_total``. Emulator-only extras carry an ``xds_replica_``
prefix, e.g. ``xds_replica_shed_requests_total`` (counter: requests answered 429 for prefill backlog,
see :mod:`xds_control.fleet.replica.server`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

if TYPE_CHECKING:
    from xds_control.fleet.replica.engine import Engine, GenRequest

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
#: vLLM's buckets of ``vllm:request_time_per_output_token_seconds``.
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ReplicaMetrics:
    def __init__(self, engine: Engine, *, model_name: str, gpu_mem_mib: int = 49_152) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        labels = {"model_name": model_name, "engine": "0"}
        ln = list(labels)
        self._labels = labels
        ProcessCollector(registry=reg)

        running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", ln, registry=reg)
        running.labels(**labels).set_function(lambda: engine.num_running)
        waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", ln, registry=reg)
        waiting.labels(**labels).set_function(lambda: engine.num_waiting)
        kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", ln, registry=reg)
        kv.labels(**labels).set_function(lambda: engine.kv_usage)

        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", ln,
            buckets=TTFT_BUCKETS, registry=reg,
        ).labels(**labels)  # fmt: skip
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", ln,
            buckets=E2E_BUCKETS, registry=reg,
        ).labels(**labels)  # fmt: skip
        self.tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.", ln,
            buckets=TPOT_BUCKETS, registry=reg,
        ).labels(**labels)  # fmt: skip
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", ln,
            buckets=E2E_BUCKETS, registry=reg,
        ).labels(**labels)  # fmt: skip
        self.success = Counter(
            "vllm:request_success", "Count of successfully processed requests.", [*ln, "finished_reason"], registry=reg
        ).labels(**labels, finished_reason="length")
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", ln, registry=reg
        ).labels(**labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", ln, registry=reg
        ).labels(**labels)

        dcgm = {"gpu": "0", "UUID": "GPU-emulated-0", "device": "nvidia0", "modelName": "emulated"}
        gu = Gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", list(dcgm), registry=reg)
        gu.labels(**dcgm).set_function(lambda: round(100.0 * engine.gpu_util(), 3))
        fb_used = Gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", list(dcgm), registry=reg)
        fb_free = Gauge("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", list(dcgm), registry=reg)
        # vLLM preallocates 90 % of the memory at start (weights, activations, KV blocks);
        # FB_USED is that, so it does not move with load — like the real thing.
        used = round(0.9 * gpu_mem_mib)
        fb_used.labels(**dcgm).set(used)
        fb_free.labels(**dcgm).set(gpu_mem_mib - used)

        self.rejected = Counter(
            "xds_replica_rejected", "Requests refused by the emulator.", ["reason"], registry=reg
        )
        for reason in ("queue_full", "not_ready", "injected_failure", "bad_request"):
            self.rejected.labels(reason=reason)
        self.shed = Counter(
            "xds_replica_shed_requests",
            "Requests answered 429: prefill backlog less the prefix-cache saving over their bound.",
            registry=reg,
        )
        lag = Gauge("xds_replica_engine_lag_seconds", "Total time engine steps ended late (CPU starvation).",
                    registry=reg)
        lag.set_function(lambda: engine.lag_s)
        self.ready = Gauge("xds_replica_ready", "1 once the emulated model is loaded.", registry=reg)
        reg.register(_PrefixCacheCollector(engine, labels))

    def observe_finished(self, r: GenRequest) -> None:
        assert r.finished_at is not None
        self.e2e.observe(r.finished_at - r.arrived)
        if r.first_token_at is not None:
            self.ttft.observe(r.first_token_at - r.arrived)
            if r.generated > 1:  # mean time per output token after the first (the SLO's TPOT)
                self.tpot.observe((r.finished_at - r.first_token_at) / (r.generated - 1))
        if r.admitted_at is not None:
            self.queue_time.observe(r.admitted_at - r.arrived)
        self.success.inc()
        self.prompt_tokens.inc(r.input_tokens)
        self.generation_tokens.inc(r.generated)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PrefixCacheCollector:
    """vLLM's prefix-cache counters, read from the engine's cache at scrape time."""

    def __init__(self, engine: Engine, labels: dict[str, str]) -> None:
        self._engine = engine
        self._labels = labels

    def describe(self) -> list[CounterMetricFamily]:
        return self.collect()

    def collect(self) -> list[CounterMetricFamily]:
        pc = self._engine.prefix_cache
        out = []
        for name, doc, value in (
            ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
             pc.queried_tokens),
            ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", pc.hit_tokens),
        ):
            fam = CounterMetricFamily(name, doc, labels=list(self._labels))
            fam.add_metric(list(self._labels.values()), value)
            out.append(fam)
        return out
