"""AIBrix's APA (the autoscaler AIBrix ships for LLM pods), re-implemented as a pure policy.

Contract: ``decide(signals, state, spec, now) -> (Decision, ApaState)``, pure; ``state`` may be None.

Follows, rule by rule (vllm-project/aibrix at e3e10f9; read, not copied):

* ``pkg/controller/podautoscaler/algorithm/apa.go`` (``computeTargetReplicas``): r = current use per
  pod / target. If r > 1 + up tolerance: ceil(current x r), at most ceil(max scale-up rate x current).
  If r < 1 - down tolerance: ceil(current x r), at least floor(current / max scale-down rate).
  Otherwise keep the current count. Then clamp to [min, max] (``applyConstraints``).
* ``pkg/controller/podautoscaler/metrics/client.go`` + ``aggregation/aggregator.go``: each reconcile
  records the average of the pods' metric values into a time window (``types.TimeWindow``: one value
  per 1 s bucket, buckets older than the window dropped); APA's current use per pod is the window's
  plain mean (the stable window; APA has no panic mode). Window: ``observeWindowSeconds``, default
  180 s (``DefaultStableWindowDuration``).
* ``metrics/collector.go`` (``collectFromPods``): pods whose metric cannot be fetched are skipped; when
  none can be fetched the reconcile fails and nothing is scaled.
* ``pkg/controller/podautoscaler/podautoscaler_controller.go``: reconcile every 10 s
  (``DefaultResyncInterval``); spec replicas 0 with minReplicas != 0 disables scaling; current above
  max / below min is corrected first (``computeScaleDecision``); then ``stabilizeRecommendation``:
  every recommendation is kept with its time; when the new one is above the current count the result
  is the *largest* recommendation within the scale-up cooldown window, when below, the *smallest*
  within the scale-down window (when no recommendation is strictly inside the window, the new one).
  Note: upstream documents the scale-down window as a cooldown that "prevents rapid scale-downs"
  (``context.go``) and calls the rule "similar to K8s HPA behavior", but HPA takes the largest
  recommendation within the scale-down window (a delay) where the code takes the smallest (so the 300 s
  default never delays a scale-down and can skip the x2 rate limit). ``scale_down_stabilization: min``
  (the default) follows the code; ``max`` follows the documented intent.
* ``pkg/controller/podautoscaler/context/context.go`` (``NewBaseScalingContext``) defaults: max
  scale-up rate 2, max scale-down rate 2, up / down fluctuation tolerance 0.1, scale-up cooldown 0 s,
  scale-down cooldown 300 s (``autoscaling.aibrix.ai/*`` annotations override them).
* ``samples/autoscaling/apa.yaml`` / ``docs/.../metric-based-autoscaling.rst``: the documented APA
  example scales vLLM pods on ``gpu_cache_usage_perc`` (KV-cache use) with target 0.5; that is our
  default (``kv_cache``, a fraction).

Stale samples (older than ``load_index.staleness_s``) cannot be fetched: they are skipped, and the
explanation says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import Field

from xds_control.core.model import Decision, ServiceSignals
from xds_control.loadindex import LoadReport, compute_load
from xds_control.policies.common import Notes, clamp, fmt
from xds_control.policies.specs import PolicySpecBase

__all__ = ["ApaSpec", "ApaState", "decide", "apa_replicas", "stabilize"]

ApaSignal = Literal["kv_cache", "gpu_util", "gpu_mem", "cpu_util", "running", "waiting", "in_flight", "rps",
                    "latency_s", "load"]


class ApaSpec(PolicySpecBase):
    """AIBrix APA with its upstream defaults (``context.go``, ``client.go``, the APA sample)."""

    policy: Literal["apa"] = "apa"
    metric: ApaSignal = Field(
        "kv_cache",
        description="Per-pod metric averaged (metricsSources[].targetMetric). Default kv_cache: vLLM "
        "gpu_cache_usage_perc, the metric of AIBrix's APA sample.",
    )
    target: float = Field(
        0.5, gt=0.0, le=1e9,
        description="Target value per pod, in the metric's unit (targetValue). Default 0.5 (the APA sample).",
    )
    up_fluctuation_tolerance: float = Field(
        0.1, ge=0.0, le=10.0,
        description="Scale up only when use/target > 1 + this (autoscaling.aibrix.ai/scale-up-tolerance). Default 0.1.",
    )
    down_fluctuation_tolerance: float = Field(
        0.1, ge=0.0, le=1.0,
        description="Scale down only when use/target < 1 - this (autoscaling.aibrix.ai/scale-down-tolerance). "
        "Default 0.1.",
    )
    max_scale_up_rate: float = Field(
        2.0, gt=1.0, le=1000.0, description="At most ceil(rate x current) after a scale-up. Default 2."
    )
    max_scale_down_rate: float = Field(
        2.0, gt=1.0, le=1000.0, description="At least floor(current / rate) after a scale-down. Default 2."
    )
    scale_up_cooldown_window_s: float = Field(
        0.0, ge=0.0, le=3600.0,
        description="Scale-up stabilization window, seconds (largest recommendation in it). Default 0.",
    )
    scale_down_cooldown_window_s: float = Field(
        300.0, ge=0.0, le=3600.0,
        description="Scale-down stabilization window, seconds (smallest recommendation in it, as upstream's "
        "stabilizeRecommendation). Default 300.",
    )
    scale_down_stabilization: Literal["min", "max"] = Field(
        "min",
        description="Recommendation taken from the scale-down window: 'min' as upstream's stabilizeRecommendation "
        "does, 'max' as its documentation describes (a cooldown, HPA's rule). Default min.",
    )
    observe_window_s: float = Field(
        180.0, ge=1.0, le=3600.0,
        description="Metric window averaged (observeWindowSeconds, 1..3600). Default 180 s.",
    )
    sync_period_s: float = Field(
        10.0, gt=0.0, le=3600.0, description="Seconds between reconciles (DefaultResyncInterval). Default 10."
    )


@dataclass(frozen=True, slots=True)
class ApaState:
    next_sync_at: float | None = None
    #: (second, average over pods) recorded at each reconcile within observe_window_s (types.TimeWindow).
    window: tuple[tuple[int, float], ...] = ()
    #: (time, recommendation) within the longer cooldown window.
    recommendations: tuple[tuple[float, int], ...] = ()


def apa_replicas(current: int, use_per_pod: float, spec: ApaSpec) -> tuple[int, float, str]:
    """apa.go ``computeTargetReplicas``: (replicas, use/target, which branch)."""
    ratio = use_per_pod / spec.target
    if ratio > 1.0 + spec.up_fluctuation_tolerance:
        cap = math.ceil(spec.max_scale_up_rate * current)
        want = math.ceil(current * ratio)
        return min(want, cap), ratio, "up" if want <= cap else "up_rate"
    if ratio < 1.0 - spec.down_fluctuation_tolerance:
        floor = math.floor(current / spec.max_scale_down_rate)
        want = math.ceil(current * ratio)
        return max(want, floor), ratio, "down" if want >= floor else "down_rate"
    return current, ratio, "within_tolerance"


def stabilize(
    recs: tuple[tuple[float, int], ...], recommendation: int, current: int, now: float, up_s: float, down_s: float,
    down_pick: Literal["min", "max"] = "min",
) -> int:
    """podautoscaler_controller.go ``stabilizeRecommendation``; ``recs`` already holds ``(now, recommendation)``."""
    if recommendation == current:
        return current
    window, pick = (up_s, max) if recommendation > current else (down_s, min if down_pick == "min" else max)
    inside = [r for t, r in recs if t > now - window]  # timestamp.After(now - window)
    return pick(inside) if inside else recommendation


def _column(signals: ServiceSignals, name: str, rep: LoadReport) -> np.ndarray:
    f = signals.frame
    if name == "in_flight":
        return f.in_flight
    if name == "load":
        return np.asarray(rep.endpoint, dtype=float)
    return np.asarray(getattr(f, name), dtype=float)


def decide(signals: ServiceSignals, state: ApaState | None, spec: ApaSpec, now: float) -> tuple[Decision, ApaState]:
    state = state or ApaState()
    current = signals.current_replicas
    lo, hi = spec.min_replicas, spec.max_replicas
    notes = Notes()
    frame = signals.frame

    def out(target: int, st: ApaState, mode: str, rep: LoadReport | None) -> tuple[Decision, ApaState]:
        return (
            Decision(
                policy="apa", service=signals.service, now=now, current_replicas=current, target_replicas=target,
                explanation=notes.explanation(f"APA {current}->{target}"), reasons=tuple(notes.reasons), mode=mode,
                load_index=None if rep is None or math.isnan(rep.service) else rep.service,
                stale=() if rep is None else rep.stale_keys(frame.keys, limit=100, raw=True, within=frame.ready),
                load=rep,
            ),
            st,
        )

    if state.next_sync_at is not None and now < state.next_sync_at:
        notes.add("between_syncs", f"next reconcile in {fmt(state.next_sync_at - now, 1)}s")
        return out(current, state, "hold", None)
    next_sync = now + spec.sync_period_s if state.next_sync_at is None else max(
        state.next_sync_at + spec.sync_period_s, now
    )
    state = replace(state, next_sync_at=next_sync)
    rep = compute_load(frame, spec.load_index, now)

    # computeScaleDecision: boundary checks come before any metric is collected.
    if current == 0 and lo != 0:
        notes.add("disabled", "current replicas is 0: scaling disabled")
        return out(0, state, "hold", rep)
    if current > hi or current < lo:
        target = hi if current > hi else lo
        notes.add("bounds", f"current {current} outside [{lo}, {hi}]")
        return out(target, state, "stable", rep)

    # collectFromPods: only pods whose metric can be fetched (ready, fresh, present) count.
    fresh = frame.ready & ~rep.stale
    n_stale = int(np.count_nonzero(frame.ready & rep.stale))
    if n_stale:
        notes.add("stale_skipped", f"{n_stale} ready pods with stale/no samples could not be fetched and were "
                  "skipped", "staleness", float(n_stale))
    vals = _column(signals, spec.metric, rep)[fresh]
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        notes.add("no_metrics", f"no pod reported {spec.metric}: reconcile fails, not scaling", spec.metric)
        return out(current, state, "hold", rep)

    # MetricsClient.UpdateMetrics: the pods' average goes into the 1 s bucket of now (last write wins);
    # TimeWindow.Record drops buckets older than the window.
    sec = int(math.floor(now))
    cutoff = int(math.floor(now - spec.observe_window_s))
    window = tuple((s, v) for s, v in state.window if s >= cutoff and s != sec) + ((sec, float(vals.mean())),)
    use = float(np.mean([v for _, v in window]))  # TimeWindow.Avg
    raw, ratio, branch = apa_replicas(current, use, spec)
    notes.add(
        "metric",
        f"{spec.metric} {fmt(use, 3)} per pod over {len(window)} samples in {fmt(spec.observe_window_s, 0)}s vs "
        f"target {fmt(spec.target, 3)} (ratio {fmt(ratio, 3)}, tolerance -{fmt(spec.down_fluctuation_tolerance)}"
        f"/+{fmt(spec.up_fluctuation_tolerance)})",
        spec.metric, use, spec.target,
    )
    if branch == "up_rate":
        notes.add("scale_up_limit", f"limited to ceil({fmt(spec.max_scale_up_rate, 1)} x {current})",
                  "replicas", float(raw))
    elif branch == "down_rate":
        notes.add("scale_down_limit", f"limited to floor({current} / {fmt(spec.max_scale_down_rate, 1)})",
                  "replicas", float(raw))
    elif branch == "within_tolerance":
        notes.add("within_tolerance", "within the fluctuation tolerance: no change")
    recommendation = clamp(raw, lo, hi)  # applyConstraints

    longest = max(spec.scale_up_cooldown_window_s, spec.scale_down_cooldown_window_s)
    recs = tuple((t, r) for t, r in state.recommendations if t > now - longest) + ((now, recommendation),)
    stabilized = stabilize(recs, recommendation, current, now, spec.scale_up_cooldown_window_s,
                           spec.scale_down_cooldown_window_s, spec.scale_down_stabilization)
    if stabilized != recommendation:
        notes.add("stabilized", f"{'scale-up' if recommendation > current else 'scale-down'} cooldown window "
                  f"-> {stabilized}", "replicas", float(stabilized))
    target = clamp(stabilized, lo, hi)
    return out(target, replace(state, window=window, recommendations=recs), "stable", rep)
