"""Prefix-cache metrics of one :class:`~xds_control.sim.engine.SimResult` (merged into the ``--json`` entries).

``prefix_cache_hit_rate``
    Prompt tokens that skipped prefill (found in a replica's GPU prefix cache or loaded from its host
    tier) / prompt tokens, over the requests that were admitted to a replica (those are the ones a
    replica looked up, as vLLM's ``prefix_cache_queries`` counts them). ``null`` when the run modelled
    no prefix cache (a trace without ``hash_ids``, or ``profile.prefix_caching`` off).
``prefix_cache_gpu_hit_rate`` / ``prefix_cache_host_hit_rate``
    The same split into GPU hits (vLLM's ``prefix_cache_hits / prefix_cache_queries``) and host-tier hits.
``prefix_cache_queries_tokens`` / ``prefix_cache_hits_tokens`` / ``prefix_cache_host_hits_tokens``
    The token counts behind them, summed over replicas.
``prefix_cache_hit_rate_replica_min`` / ``_max``
    Lowest and highest per-replica hit rate (GPU + host) over replicas that served at least one query.

TTFT percentiles in :func:`xds_control.sim.metrics.compute_metrics` already reflect the shorter
prefill of cached prompts (the simulator's first-token times include it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xds_control.sim.engine import SimResult

__all__ = ["compute_cache_metrics", "CACHE_METRIC_KEYS"]

CACHE_METRIC_KEYS = (
    "prefix_cache_hit_rate",
    "prefix_cache_gpu_hit_rate",
    "prefix_cache_host_hit_rate",
    "prefix_cache_queries_tokens",
    "prefix_cache_hits_tokens",
    "prefix_cache_host_hits_tokens",
    "prefix_cache_hit_rate_replica_min",
    "prefix_cache_hit_rate_replica_max",
)


def compute_cache_metrics(res: SimResult) -> dict[str, Any]:
    """The prefix-cache keys above (all ``None`` when the run had no prefix cache)."""
    out: dict[str, Any] = dict.fromkeys(CACHE_METRIC_KEYS)
    if res.cached_tokens is None or res.host_cached_tokens is None:
        return out
    q = res.cached_tokens >= 0
    prompt = int(np.sum(res.input_tokens[q]))
    gpu = int(np.sum(res.cached_tokens[q]))
    host = int(np.sum(res.host_cached_tokens[q]))
    out["prefix_cache_queries_tokens"] = prompt
    out["prefix_cache_hits_tokens"] = gpu
    out["prefix_cache_host_hits_tokens"] = host
    if prompt > 0:
        out["prefix_cache_hit_rate"] = (gpu + host) / prompt
        out["prefix_cache_gpu_hit_rate"] = gpu / prompt
        out["prefix_cache_host_hit_rate"] = host / prompt
    per = [(h + hh) / qq for qq, h, hh in res.replica_cache.values() if qq > 0]
    if per:
        out["prefix_cache_hit_rate_replica_min"] = min(per)
        out["prefix_cache_hit_rate_replica_max"] = max(per)
    return out
