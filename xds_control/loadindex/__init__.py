"""The load index: L = alpha*U_GPU + beta*U_CPU + gamma*D_net (+ optional queue and KV terms).

Contract:

* Pure and vectorized: :func:`compute_load` takes a :class:`~xds_control.core.model.SignalFrame`,
  a :class:`LoadIndexSpec` and ``now`` and returns a :class:`LoadReport`; nothing is mutated.
* Every term is normalized so that 1.0 means "at its limit": utilizations are fractions,
  ``D_net = latency_s / latency_target_s``, ``Q = waiting / queue_target``,
  ``KV = kv_cache / kv_target``. Terms are clipped to ``[0, term_cap]`` so one wild value cannot
  dominate, and L can exceed 1 (over-saturated) up to ``term_cap``.
* The weights must sum to 1 (the seed paper's alpha+beta+gamma = 1, extended with the optional
  queue and KV weights that Gateway API Inference Extension and AIBrix route on).
* If a fresh sample lacks some terms, L is the weighted mean of the terms it has (weights
  renormalized). A sample older than ``staleness_s`` or with every metric missing is **stale**;
  stale samples and samples with no usable load term count as saturated (``stale_load`` >= 1),
  never as idle (aibrix#638, GIE#336); the report lists them so decisions can say so.
* The service index is the mean over ready endpoints; locality indices likewise per locality.
  Smoothing is a time-based EWMA (:func:`ewma`) applied by policies to the service index.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from xds_control.core.errors import spec_error_from_pydantic
from xds_control.core.model import SignalFrame

__all__ = ["LoadIndexSpec", "LoadReport", "compute_load", "ewma", "parse_load_index_spec"]


class LoadIndexSpec(BaseModel):
    """Weights, normalization targets, staleness and smoothing of the load index."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(
        0.4, ge=0.0, le=1.0,
        description="Weight of GPU utilization U_GPU (fraction). Default 0.4: the seed's main term, "
        "but lowered because SM utilization saturates on a single LLM request (dcgm-exporter#301).",
    )
    beta: float = Field(
        0.2, ge=0.0, le=1.0,
        description="Weight of CPU utilization U_CPU (fraction). Default 0.2 (tokenization/scheduling).",
    )
    gamma: float = Field(
        0.4, ge=0.0, le=1.0,
        description="Weight of D_net = latency_s / latency_target_s. Default 0.4: latency (TTFT) is the "
        "user-visible symptom of saturation.",
    )
    queue_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Weight of Q = waiting / queue_target (vllm:num_requests_waiting). Default 0 (the seed's "
        "three-term index); the comprehensive preset turns it on.",
    )
    kv_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Weight of KV = kv_cache / kv_target (vllm:kv_cache_usage_perc). Default 0.",
    )
    latency_target_s: float = Field(
        0.2, gt=0.0, le=600.0,
        description="Latency at which D_net = 1, seconds. Default 0.2 s: the seed's Table 1 latency trigger (>200 ms).",
    )
    queue_target: float = Field(
        5.0, gt=0.0, le=10_000.0,
        description="Waiting requests at which Q = 1. Default 5: GIE's utilization detector queueDepthThreshold.",
    )
    kv_target: float = Field(
        0.8, gt=0.0, le=1.0,
        description="KV-cache fraction at which KV = 1. Default 0.8: GIE's kvCacheUtilThreshold.",
    )
    term_cap: float = Field(
        2.0, ge=1.0, le=10.0,
        description="Each normalized term is clipped to [0, term_cap]. Default 2 (twice the limit) so one "
        "outlier reading cannot dominate the index.",
    )
    staleness_s: float = Field(
        10.0, gt=0.0, le=3600.0,
        description="A sample older than this (now - taken_at), seconds, is stale and counts as saturated. "
        "Default 10 s: several scrape intervals (GIE uses 2 s at a 50 ms refresh).",
    )
    stale_load: float = Field(
        1.0, ge=1.0, le=10.0,
        description="Load index assigned to a stale or absent sample. Must be >= 1 (saturated): stale must "
        "never look idle.",
    )
    ewma_half_life_s: float = Field(
        10.0, ge=0.0, le=3600.0,
        description="Half-life of the EWMA smoothing of the service index, seconds; 0 disables smoothing. "
        "Default 10 s: filters scrape noise while staying inside the seed's <10 s scaling response.",
    )

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> LoadIndexSpec:
        total = self.alpha + self.beta + self.gamma + self.queue_weight + self.kv_weight
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(
                f"alpha + beta + gamma + queue_weight + kv_weight must equal 1 (got {self.alpha} + {self.beta} + "
                f"{self.gamma} + {self.queue_weight} + {self.kv_weight} = {total:.6g})"
            )
        return self


def parse_load_index_spec(data: Mapping[str, Any] | None) -> LoadIndexSpec:
    """Validate a mapping into a :class:`LoadIndexSpec`; raises ``SpecError`` naming key, value and range."""
    try:
        return LoadIndexSpec.model_validate(data or {})
    except ValidationError as exc:
        raise spec_error_from_pydantic("invalid load_index spec", exc, LoadIndexSpec) from None


_TERMS = ("gpu", "cpu", "net", "queue", "kv")
_METRIC_COLUMNS = ("gpu_util", "gpu_mem", "cpu_util", "latency_s", "running", "waiting", "kv_cache", "rps")


@dataclass(frozen=True, eq=False, slots=True)
class LoadReport:
    """Load index of a service at one instant: per endpoint, per locality, and for the service."""

    #: Load index per endpoint (same order as the frame); stale endpoints carry ``stale_load``.
    endpoint: np.ndarray
    #: True where the sample is older than ``staleness_s`` or absent (every metric missing). Policies on
    #: raw metrics (HPA, KPA) treat these as missing.
    stale: np.ndarray
    #: True where the load index is unknown (stale, absent, or no load term measured): these carry
    #: ``stale_load`` (saturated).
    saturated: np.ndarray
    #: Mean load over ready endpoints (NaN when no endpoint is ready).
    service: float
    #: (locality key, mean load over its ready endpoints, ready count), for localities with endpoints.
    locality: tuple[tuple[str, float, int], ...]
    #: (term name, mean normalized value over ready fresh endpoints or NaN) for the explanation.
    terms: tuple[tuple[str, float], ...]
    n_ready: int
    #: Ready endpoints whose load is unknown (stale, absent or unmeasured), counted as saturated.
    n_stale_ready: int

    def stale_keys(
        self, keys: tuple[str, ...], limit: int | None = None, raw: bool = False, within: np.ndarray | None = None
    ) -> tuple[str, ...]:
        """Keys counted as saturated (or, with ``raw``, only the stale/absent ones), optionally ``within`` a mask."""
        mask = self.stale if raw else self.saturated
        idx = np.flatnonzero(mask if within is None else mask & within)
        if limit is not None:
            idx = idx[:limit]
        return tuple(keys[i] for i in idx)

    def describe_terms(self) -> str:
        return ", ".join(f"{n} {v:.2f}" for n, v in self.terms if not math.isnan(v))


def compute_load(frame: SignalFrame, spec: LoadIndexSpec, now: float) -> LoadReport:
    """Compute the load index for every endpoint of ``frame`` at time ``now`` (vectorized)."""
    n = len(frame)
    cap = spec.term_cap
    weights = (spec.alpha, spec.beta, spec.gamma, spec.queue_weight, spec.kv_weight)
    with np.errstate(over="ignore"):  # a huge sample overflows to inf, which the term cap clips
        sources = (
            frame.gpu_util,
            frame.cpu_util,
            frame.latency_s / spec.latency_target_s,
            frame.waiting / spec.queue_target,
            frame.kv_cache / spec.kv_target,
        )
    num = np.zeros(n)
    den = np.zeros(n)
    used: list[tuple[str, np.ndarray]] = []
    with np.errstate(invalid="ignore"):
        for name, w, src in zip(_TERMS, weights, sources, strict=True):
            if w <= 0.0:
                continue
            v = np.clip(src, 0.0, cap)
            have = ~np.isnan(v)
            num += np.where(have, v * w, 0.0)
            den += np.where(have, w, 0.0)
            used.append((name, v))
        age = now - frame.taken_at
        absent = np.ones(n, dtype=bool)
        for name in _METRIC_COLUMNS:
            absent &= np.isnan(getattr(frame, name))
        stale = absent | (age > spec.staleness_s)  # NaN age (untimed) compares False: fresh
        saturated = stale | (den <= 0.0)  # no usable load term: unknown load counts as saturated too
        load = np.divide(num, den, out=np.full(n, spec.stale_load), where=den > 0.0)
        load[saturated] = spec.stale_load
    for a in (stale, saturated, load):
        a.setflags(write=False)

    ready = frame.ready
    n_ready = int(np.count_nonzero(ready))
    service = float(load[ready].mean()) if n_ready else math.nan
    fresh_ready = ready & ~saturated
    terms = []
    for name, v in used:
        sel = v[fresh_ready]
        sel = sel[~np.isnan(sel)]
        terms.append((name, float(sel.mean()) if sel.size else math.nan))

    nloc = len(frame.localities)
    loc_idx = frame.locality[ready]
    counts = np.bincount(loc_idx, minlength=nloc)
    sums = np.bincount(loc_idx, weights=load[ready], minlength=nloc)
    locality = tuple(
        (frame.localities[i], float(sums[i] / counts[i]), int(counts[i]))
        for i in range(nloc)
        if counts[i] > 0
    )
    return LoadReport(
        endpoint=load,
        stale=stale,
        saturated=saturated,
        service=service,
        locality=locality,
        terms=tuple(terms),
        n_ready=n_ready,
        n_stale_ready=int(np.count_nonzero(ready & saturated)),
    )


def ewma(prev: float | None, prev_t: float | None, value: float, now: float, half_life_s: float) -> float:
    """Time-based EWMA: the weight of the old value halves every ``half_life_s`` seconds.

    Irregular tick intervals are handled exactly (weight = 2^(-dt/half_life)). ``prev is None``,
    NaN, or ``half_life_s == 0`` returns ``value``; a NaN ``value`` keeps ``prev``.
    """
    if math.isnan(value):
        return prev if prev is not None else value
    if prev is None or prev_t is None or half_life_s <= 0.0 or math.isnan(prev):
        return value
    dt = max(0.0, now - prev_t)
    keep: float = 0.5 ** (dt / half_life_s)
    return keep * prev + (1.0 - keep) * value
