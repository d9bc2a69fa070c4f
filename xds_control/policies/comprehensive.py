"""The seed's comprehensive method: prediction + burst mode + mesh-level traffic shaping.

Contract: ``decide(signals, state, spec, now) -> (Decision, ComprehensiveState)``, pure; ``state`` may be None.

* Capacity: the predictive rule (:mod:`xds_control.policies.predictive`), including pending credit.
* Burst (panic) mode for forecast misses, Knative-style: enter when demand now exceeds the previous
  one-bucket forecast by ``burst_miss_tolerance`` while above target capacity, or when
  ceil(demand / target_utilization) / ready >= ``panic_threshold``. In burst mode the target never
  goes down (max of everything asked since entering) and, when the ready fleet is saturated (mean
  L >= ``saturation_load``, or the replicas serving requests at a mean GPU utilisation >= ``saturation_gpu``:
  true demand is censored), grows by at least ``burst_factor`` and, with
  ``burst_rate_sizing``, to ready x (gateway arrivals / the replicas' completions): a saturated replica completes
  at its capacity while the gateway still counts every arrival, so the ratio is how many times the fleet is short
  (completions smoothed over ``completion_half_life_s``, the ratio capped at ``burst_max_scale_up_rate``); the
  up-rate limit is ``burst_max_scale_up_rate`` and the 10 s action spacing is lifted (the 6-per-minute
  cap stays). Leave after ``stable_window_s`` without a trigger (Knative: one stable window).
* Traffic shaping is planning's job; this policy's defaults turn it on: headroom weights with a
  hotspot cap, per-locality weights with spill, a 60 s EDS ramp for new endpoints, coordinated drains,
  and queue/KV terms in the load index (what GIE and AIBrix route on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from xds_control.core.model import Decision, ServiceSignals
from xds_control.loadindex import LoadIndexSpec, LoadReport, ewma
from xds_control.policies.common import Notes, clamp, fmt
from xds_control.policies.predictive import PredictiveSpec, PredictiveState, finish, predict_core, ready_rps
from xds_control.policies.specs import TrafficSpec

__all__ = ["ComprehensiveSpec", "ComprehensiveState", "decide"]


def _default_load_index() -> LoadIndexSpec:
    return LoadIndexSpec(alpha=0.25, beta=0.1, gamma=0.3, queue_weight=0.2, kv_weight=0.15)


def _default_traffic() -> TrafficSpec:
    return TrafficSpec(weighting="headroom", ramp_window_s=60.0)


class ComprehensiveSpec(PredictiveSpec):
    """Predictive provisioning plus burst mode; defaults enable traffic shaping in planning."""

    policy: Literal["comprehensive"] = "comprehensive"  # type: ignore[assignment]  # narrows the parent's Literal["predictive"]
    load_index: LoadIndexSpec = Field(
        default_factory=_default_load_index,
        description="Default adds queue (0.2) and KV (0.15) terms: alpha 0.25, beta 0.1, gamma 0.3.",
    )
    traffic: TrafficSpec = Field(
        default_factory=_default_traffic, description="Default: headroom weights, 60 s ramp, cap 2x mean."
    )
    panic_threshold: float = Field(
        1.3, ge=1.0, le=10.0,
        description="Enter burst mode when ceil(demand / target_utilization) / ready >= this. Default 1.3: the "
        "load index is capped near 2, so Knative's 200 % would almost never fire on it.",
    )
    burst_miss_tolerance: float = Field(
        0.3, ge=0.0, le=10.0,
        description="Enter burst mode when demand > (1 + this) x the previous one-bucket forecast while above "
        "target capacity. Default 0.3.",
    )
    burst_factor: float = Field(
        1.5, ge=1.0, le=10.0,
        description="In burst mode with a saturated fleet, ask for at least ceil(ready x this). Default 1.5.",
    )
    saturation_load: float = Field(
        1.0, gt=0.0, le=10.0, description="Mean load index at which measured demand is censored. Default 1.0."
    )
    saturation_gpu: float = Field(
        0.95, ge=0.0, le=1.0,
        description="The fleet also counts as saturated (demand censored) when the ready replicas serving requests "
        "have at least this mean GPU utilisation. The load index of a replica that is busy prefilling and has no "
        "queue reads about 0.9 when a CPU term is measured (its terms are normalised over the measured ones), so "
        "saturation_load alone would not see it; replicas that have just started carry nothing and are left out. "
        "0 = off. Default 0.95.",
    )
    stable_window_s: float = Field(
        60.0, ge=0.0, le=3600.0, description="Leave burst mode after this long without a trigger. Default 60 s."
    )
    burst_rate_sizing: bool = Field(
        True,
        description="In burst mode with a saturated fleet, ask for at least ready x (gateway request rate / the "
        "ready replicas' completion rate): not censored by saturation, unlike the load index. Default true.",
    )
    completion_half_life_s: float = Field(
        5.0, ge=0.0, le=600.0,
        description="Half-life of the smoothing of the ready replicas' summed completion rate (burst_rate_sizing), "
        "seconds. Default 5.",
    )
    burst_max_scale_up_rate: float = Field(
        10.0, gt=1.0, le=1000.0,
        description="In burst mode the up-rate limit is this (instead of max_scale_up_rate) and "
        "min_action_interval_s does not apply (the 6-per-minute cap still does). Default 10: a burst from 2 to "
        "16 replicas is one action, not three 10 s apart.",
    )


@dataclass(frozen=True, slots=True)
class ComprehensiveState:
    pred: PredictiveState = field(default_factory=PredictiveState)
    panic_since: float | None = None
    last_over_at: float | None = None
    max_panic: int = 0
    #: (time, demand expected one bucket after that time) from the previous decision.
    expected: tuple[float, float] | None = None
    #: Smoothed summed completion rate of the ready replicas (requests/s) and when it was updated.
    served: float | None = None
    served_at: float | None = None


def serving_gpu(signals: ServiceSignals, rep: LoadReport) -> float:
    """Mean GPU utilisation of the ready replicas with a fresh sample and requests in flight (NaN when none)."""
    frame = signals.frame
    sel = frame.ready & ~rep.stale & (frame.in_flight > 0)
    g = frame.gpu_util[sel]
    g = g[~np.isnan(g)]
    return float(g.mean()) if g.size else math.nan


def decide(
    signals: ServiceSignals, state: ComprehensiveState | None, spec: ComprehensiveSpec, now: float
) -> tuple[Decision, ComprehensiveState]:
    state = state or ComprehensiveState()
    notes = Notes()
    core = predict_core(signals, state.pred, spec, now, notes)
    current = signals.current_replicas
    rep = core.report
    panic_since, last_over, max_panic = state.panic_since, state.last_over_at, state.max_panic
    expected = state.expected
    served, served_at = state.served, state.served_at
    done = ready_rps(signals, rep)  # requests/s completed (vLLM's request_success_total rate)
    if done is not None:
        served, served_at = ewma(served, served_at, done, now, spec.completion_half_life_s), now

    if math.isnan(core.demand):
        notes.add("no_demand", "no ready endpoints or rates to measure demand; holding")
        target = clamp(max(current, max_panic if panic_since is not None else 0), spec.min_replicas,
                       spec.max_replicas)
        pred_state = core.state
    else:
        ready = max(1, rep.n_ready)
        tu = spec.target_utilization
        ratio = math.ceil(core.demand / tu - 1e-9) / ready
        over_ratio = ratio >= spec.panic_threshold
        miss = (
            expected is not None
            and now - expected[0] <= 2 * spec.bucket_s
            and core.demand > expected[1] * (1 + spec.burst_miss_tolerance)
            and core.demand > ready * tu
        )
        if over_ratio or miss:
            last_over = now
            if panic_since is None:
                panic_since = now
                why = (f"demand {fmt(core.demand)} > forecast {fmt(expected[1])} x{fmt(1 + spec.burst_miss_tolerance)}"
                       if miss and expected else f"overload ratio {fmt(ratio)} >= {fmt(spec.panic_threshold)}")
                notes.add("panic_enter", f"burst mode: {why}", "panic", ratio, spec.panic_threshold)
        elif panic_since is not None and last_over is not None and now - last_over > spec.stable_window_s:
            notes.add("panic_exit", f"burst mode over: {fmt(spec.stable_window_s, 0)}s without a trigger")
            panic_since, last_over, max_panic = None, None, 0

        want = core.raw_target
        if panic_since is not None:
            burst = math.ceil(core.demand / tu - 1e-9)
            by_load = not math.isnan(rep.service) and rep.service >= spec.saturation_load
            busy_gpu = serving_gpu(signals, rep) if not by_load and spec.saturation_gpu > 0 else math.nan
            if by_load or busy_gpu >= spec.saturation_gpu:
                burst = max(burst, math.ceil(ready * spec.burst_factor))
                if by_load:
                    notes.add("saturated", f"fleet saturated (L {fmt(rep.service)} >= {fmt(spec.saturation_load)}): "
                              f"at least x{fmt(spec.burst_factor, 1)}", "load", rep.service, spec.saturation_load)
                else:
                    notes.add("saturated", f"fleet saturated (GPU {fmt(busy_gpu)} >= {fmt(spec.saturation_gpu)} on the "
                              f"replicas serving): at least x{fmt(spec.burst_factor, 1)}", "gpu", busy_gpu,
                              spec.saturation_gpu)
                rate = signals.request_rate
                if spec.burst_rate_sizing and rate is not None and served is not None and rate > served > 0:
                    short = min(rate / served, spec.burst_max_scale_up_rate)
                    burst = max(burst, math.ceil(ready * short - 1e-9))
                    notes.add("arrivals", f"arrivals {fmt(rate)}/s over completions {fmt(served)}/s: "
                              f"{fmt(short)}x short", "arrivals_over_completions", short)
            pending = signals.pending
            if pending and burst > core.raw_target:
                # llm-d's overshoot guard on the burst increment, which is measured on the saturated ready
                # fleet (its backlog is what the starting replicas will absorb): demand - pending.
                burst = max(burst - pending, core.raw_target)
            want = max(want, burst, max_panic, current)
            notes.add("panic_hold", f"burst mode: no scale-down, want {want}")
        in_burst = panic_since is not None
        target, pred_state = finish(
            signals, core, spec, now, notes, want, allow_down=not in_burst,
            up_rate=spec.burst_max_scale_up_rate if in_burst else None, min_interval_s=0.0 if in_burst else None,
        )
        if panic_since is not None:
            max_panic = max(max_panic, target)
        nxt = core.fit.at(1) if core.fit is not None else core.demand
        expected = (now, nxt)

    new_state = ComprehensiveState(pred_state, panic_since, last_over, max_panic, expected, served, served_at)
    mode = "panic" if panic_since is not None else "stable"
    return (
        Decision(
            policy="comprehensive", service=signals.service, now=now, current_replicas=current,
            target_replicas=target,
            explanation=notes.explanation(f"comprehensive {current}->{target} ({mode})"),
            reasons=tuple(notes.reasons), mode=mode, load_index=pred_state.smoothed,
            forecast=None if math.isnan(core.peak) else core.peak,
            stale=rep.stale_keys(signals.frame.keys, limit=100, within=signals.frame.ready), load=rep,
        ),
        new_state,
    )
