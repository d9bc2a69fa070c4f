"""The seed's load-prediction method: provision for the forecast peak over the next start-up time.

Contract: ``decide(signals, state, spec, now) -> (Decision, PredictiveState)``, pure; ``state`` may be None.

Rule:

1. Demand now, in replica-equivalents: the sum of the load index over ready endpoints (stale ones
   count saturated), or the request rate / ``rps_per_replica`` (``rps``), or in-flight requests /
   ``concurrency_per_replica`` (``concurrency``; not censored by saturation, since a backlog keeps
   counting), or (``rate``) the gateway request rate / a per-replica capacity calibrated online: requests/s
   per unit of GPU utilisation, averaged (EWMA, ``capacity_half_life_s``) over the ticks whose mean
   utilisation was between ``calibration_min_util`` (near idle, utilisation is not proportional to throughput)
   and ``calibration_max_util`` (a saturated fleet's utilisation is censored at 1, its arrivals are not) with
   no request waiting (a backlog decouples work done from arrivals). Until 30 such ticks were seen, or with
   no rate, demand is the summed GPU utilisation; either way it is never below the summed load index, whose
   latency and queue terms see what a request rate misses (long prompts, backlogs).
2. History: the last ``history_s`` (default 15 min, the seed's 10-20 min) of demand, bucketed at
   ``bucket_s`` and fitted with damped Holt (see :mod:`xds_control.policies.forecast` for why).
3. Peak = max(demand now, forecast over the next ``startup_s`` + one bucket) + ``sigma_margin`` x
   one-step RMSE. Target = ceil(peak / target_utilization) (default 0.9: the seed keeps the
   forecast peak under 90 % of capacity).
4. Pending-replica credit (llm-d's overshoot guard: do not ask again for capacity on its way): the
   target is an absolute count compared with the current count, which includes the replicas still
   starting, so an overloaded ready fleet whose load the starting replicas will absorb asks for
   nothing more, and a larger target asks only for the difference. No scale-down while replicas are
   starting (that would cancel capacity already paid for).
5. Scale-down uses the highest recommendation of the last ``scale_down_window_s`` and at most
   halves per step; scale-up at most doubles per step; at most 6 actions a minute (Table 1), at
   least ``min_action_interval_s`` (10 s) apart.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from xds_control.core.model import Decision, ServiceSignals
from xds_control.loadindex import LoadReport, compute_load, ewma
from xds_control.policies.common import Notes, clamp, fmt, recent, stale_note
from xds_control.policies.forecast import HoltFit, bucketize, forecast_peak, holt_damped, holt_winters
from xds_control.policies.specs import PolicySpecBase

__all__ = ["PredictiveSpec", "PredictiveState", "decide", "Core", "predict_core", "ready_rps"]


class PredictiveSpec(PolicySpecBase):
    """Forecast-driven provisioning (damped Holt over 10-20 min of history)."""

    policy: Literal["predictive"] = "predictive"
    demand_signal: Literal["load", "rps", "concurrency", "rate"] = Field(
        "load",
        description="'load': demand = sum of endpoint load indices (replica-equivalents; censored near saturation "
        "because the index is capped). 'rps': request rate / rps_per_replica (service request_rate if given, else "
        "the sum of endpoint rps). 'concurrency': in-flight requests (running + waiting, so a backlog keeps "
        "counting) / concurrency_per_replica. 'rate': request rate / requests-per-utilisation calibrated online "
        "(not censored at saturation). Default load.",
    )
    capacity_half_life_s: float = Field(
        120.0, gt=0.0, le=3600.0,
        description="demand_signal rate: half-life of the online capacity calibration (requests/s per unit of GPU "
        "utilisation), seconds. Default 120.",
    )
    calibration_min_util: float = Field(
        0.5, ge=0.0, le=1.0,
        description="demand_signal rate: calibrate only on ticks whose mean GPU utilisation is at least this: GPU "
        "utilisation is not proportional to throughput near idle (a decode step at batch 1 already reads ~30 %), so "
        "the capacity is measured near the operating point. Default 0.5.",
    )
    calibration_max_util: float = Field(
        0.85, gt=0.0, le=1.0,
        description="demand_signal rate: calibrate only on ticks whose mean GPU utilisation is below this (above "
        "it utilisation is censored and a backlog forms). Default 0.85.",
    )
    rps_per_replica: float | None = Field(
        None, gt=0.0, le=1e9, description="Requests/s one replica serves at saturation; required for demand_signal rps."
    )
    concurrency_per_replica: float | None = Field(
        None, gt=0.0, le=1e9,
        description="In-flight requests one replica serves at saturation (e.g. its max batch); required for "
        "demand_signal concurrency.",
    )
    history_s: float = Field(
        900.0, ge=60.0, le=3600.0, description="History fitted, seconds. Default 900 (the seed: 10-20 minutes)."
    )
    bucket_s: float = Field(10.0, ge=1.0, le=300.0, description="Forecast bucket, seconds. Default 10.")
    min_history_s: float = Field(
        60.0, ge=0.0, le=3600.0,
        description="Below this much history, act reactively on demand now (no trend). Default 60 s.",
    )
    startup_s: float = Field(
        120.0, ge=0.0, le=3600.0,
        description="Replica start-up time (schedule + pull + load model), seconds: the forecast horizon. Default "
        "120 s (AIBrix reports 2-3 min for LLM pods).",
    )
    target_utilization: float = Field(
        0.9, gt=0.05, le=4.0,
        description="Forecast peak must stay under this fraction of capacity. Default 0.9 (seed). Above 1 is "
        "allowed: demand is in replica-equivalents at the cost model's reference batch, and a replica may serve "
        "more than that within its SLO.",
    )
    smoothing_alpha: float = Field(0.5, gt=0.0, le=1.0, description="Holt level smoothing per bucket. Default 0.5.")
    trend_beta: float = Field(0.3, ge=0.0, le=1.0, description="Holt trend smoothing per bucket. Default 0.3.")
    damping_phi: float = Field(
        0.95, gt=0.0, le=1.0, description="Trend damping per bucket (1 = undamped). Default 0.95: a 2-min ramp "
        "extrapolates ~60 % as far as an undamped trend would.",
    )
    season_s: float | None = Field(
        None, gt=0.0, le=1800.0,
        description="Length of a demand cycle to model (additive Holt-Winters), seconds; null = no seasonality "
        "(default). Only short cycles fit the 10-20 min window: needs history_s >= 2 x season_s.",
    )
    season_gamma: float = Field(0.3, ge=0.0, le=1.0, description="Seasonal smoothing per bucket. Default 0.3.")
    sigma_margin: float = Field(
        1.0, ge=0.0, le=10.0, description="Add this many one-step RMSEs of forecast error to the peak. Default 1."
    )
    max_scale_up_rate: float = Field(2.0, gt=1.0, le=1000.0, description="Max ratio up per action. Default 2 (x2).")
    max_scale_down_rate: float = Field(2.0, gt=1.0, le=1000.0, description="Max ratio down per action. Default 2.")
    scale_down_window_s: float = Field(
        120.0, ge=0.0, le=3600.0,
        description="Scale down to the highest recommendation of this window, seconds. Default 120 s.",
    )
    max_actions_per_minute: int = Field(6, ge=1, le=600, description="Table 1: at most 6 scaling actions a minute.")
    min_action_interval_s: float = Field(
        10.0, ge=0.0, le=3600.0,
        description="Seconds between two scaling actions. Default 10 (= 60 s / 6): spreads Table 1's budget so "
        "that a ramp is not spent in +1 steps within 12 s and then frozen for the rest of the minute; also the "
        "seed's < 10 s scaling response.",
    )

    @model_validator(mode="after")
    def _rps_needs_capacity(self) -> PredictiveSpec:
        if self.demand_signal == "rps" and self.rps_per_replica is None:
            raise ValueError("demand_signal 'rps' requires rps_per_replica (requests/s per replica, > 0)")
        if self.season_s is not None:
            if self.history_s < 2 * self.season_s:
                raise ValueError(
                    f"season_s ({self.season_s}) needs history_s >= 2 x season_s (history_s is {self.history_s})"
                )
            if self.season_s < 2 * self.bucket_s:
                raise ValueError(f"season_s ({self.season_s}) must span >= 2 buckets of bucket_s ({self.bucket_s})")
        if self.demand_signal == "concurrency" and self.concurrency_per_replica is None:
            raise ValueError(
                "demand_signal 'concurrency' requires concurrency_per_replica (in-flight requests per replica, > 0)"
            )
        return self


@dataclass(frozen=True, slots=True)
class PredictiveState:
    #: Demand observations (time, replica-equivalents) within history_s.
    hist_t: tuple[float, ...] = ()
    hist_v: tuple[float, ...] = ()
    #: (time, recommendation) within scale_down_window_s.
    recs: tuple[tuple[float, int], ...] = ()
    action_times: tuple[float, ...] = ()
    smoothed: float | None = None
    smoothed_at: float | None = None
    #: demand_signal rate: EWMAs of the ready fleet's summed rps and summed GPU utilisation (their ratio is the
    #: calibrated requests/s per unit of utilisation) and when they were last updated.
    cal_rps: float | None = None
    cal_util: float | None = None
    cal_at: float | None = None
    cal_n: int = 0


@dataclass(frozen=True, slots=True)
class Core:
    """Intermediate results shared with the comprehensive policy."""

    report: LoadReport
    demand: float
    fit: HoltFit | None
    peak: float
    raw_target: int
    state: PredictiveState


#: demand_signal rate: in-band ticks needed before the calibration replaces the summed utilisation.
CALIBRATION_MIN_TICKS = 30


def _ready_sums(signals: ServiceSignals, rep: LoadReport) -> tuple[float, float, int, float] | None:
    """(summed rps, summed GPU utilisation, endpoints, summed waiting) over fresh ready endpoints with readings."""
    frame = signals.frame
    ok = frame.ready & ~rep.stale & ~np.isnan(frame.rps) & ~np.isnan(frame.gpu_util)
    n = int(ok.sum())
    if n == 0:
        return None
    waiting = frame.waiting[ok]
    return (float(frame.rps[ok].sum()), float(frame.gpu_util[ok].sum()), n,
            float(np.nansum(waiting)))


def calibrate(signals: ServiceSignals, spec: PredictiveSpec, rep: LoadReport, state: PredictiveState,
              now: float) -> PredictiveState:
    """Fold this tick into the requests-per-utilisation calibration (``rate``), when the fleet is not saturated."""
    sums = _ready_sums(signals, rep)
    if sums is None:
        return state
    rps, util, n, waiting = sums
    # a backlog decouples the two: utilisation serves queued work while rps counts this tick's arrivals
    if util <= 0.0 or waiting > 0 or not spec.calibration_min_util <= util / n < spec.calibration_max_util:
        return state
    h = spec.capacity_half_life_s
    return replace(state, cal_rps=ewma(state.cal_rps, state.cal_at, rps, now, h),
                   cal_util=ewma(state.cal_util, state.cal_at, util, now, h), cal_at=now, cal_n=state.cal_n + 1)


def rps_per_util(state: PredictiveState) -> float | None:
    """The calibrated requests/s one replica serves at utilisation 1.0; None until ``CALIBRATION_MIN_TICKS``."""
    if (state.cal_n < CALIBRATION_MIN_TICKS or state.cal_rps is None or state.cal_util is None
            or state.cal_util <= 1e-6 or state.cal_rps <= 0.0):
        return None
    return state.cal_rps / state.cal_util


def ready_rps(signals: ServiceSignals, rep: LoadReport) -> float | None:
    """Summed ``rps`` of the ready endpoints (live: their completion rate), extrapolated over the ready endpoints
    without a fresh reading; None when none has one."""
    r: np.ndarray = signals.frame.rps[signals.frame.ready & ~rep.stale]
    r = r[~np.isnan(r)]
    if r.size == 0:
        return None
    return float(r.sum()) * (rep.n_ready / int(r.size))


def measure_demand(signals: ServiceSignals, spec: PredictiveSpec, rep: LoadReport,
                   state: PredictiveState | None = None) -> float:
    frame = signals.frame
    if spec.demand_signal == "rate":
        cap = rps_per_util(state) if state is not None else None
        sums = _ready_sums(signals, rep)
        util = math.nan if sums is None else sums[1] * (rep.n_ready / sums[2])
        rate = signals.request_rate
        if rate is None and sums is not None:
            rate = sums[0] * (rep.n_ready / sums[2])
        # the load index (its latency and queue terms) still sees what the rate misses: long prompts, backlogs
        load = float(rep.endpoint[frame.ready].sum()) if rep.n_ready else math.nan
        if cap is None or rate is None:
            return util if math.isnan(load) else max(util, load) if not math.isnan(util) else load
        est = float(rate) / cap
        return est if math.isnan(load) else max(est, load)
    if spec.demand_signal == "rps":
        assert spec.rps_per_replica is not None
        total = float(signals.request_rate) if signals.request_rate is not None else ready_rps(signals, rep)
        return math.nan if total is None else total / spec.rps_per_replica
    if spec.demand_signal == "concurrency":
        assert spec.concurrency_per_replica is not None
        c: np.ndarray = frame.in_flight[frame.ready & ~rep.stale]
        c = c[~np.isnan(c)]
        if c.size == 0:
            return math.nan
        return float(c.sum()) * (rep.n_ready / c.size) / spec.concurrency_per_replica
    if rep.n_ready == 0:
        return math.nan
    return float(rep.endpoint[frame.ready].sum())


def predict_core(
    signals: ServiceSignals, state: PredictiveState, spec: PredictiveSpec, now: float, notes: Notes
) -> Core:
    rep = compute_load(signals.frame, spec.load_index, now)
    stale_note(notes, signals, rep)
    if spec.demand_signal == "rate":
        state = calibrate(signals, spec, rep, state, now)
    demand = measure_demand(signals, spec, rep, state)
    if spec.demand_signal == "rate":
        cap = rps_per_util(state)
        if cap is None:
            notes.add("uncalibrated", "no unsaturated tick yet to calibrate requests/s per replica: demand is the "
                      "summed GPU utilisation", "demand", demand)
        else:
            notes.add("calibrated", f"request rate {fmt(signals.request_rate)}/s at {fmt(cap)} req/s per replica "
                      f"(calibrated), demand {fmt(demand)} replicas", "capacity", cap)
    # hist_t is increasing: keep the observations newer than now - history_s (a slice, not a Python loop)
    first = bisect.bisect_right(state.hist_t, now - spec.history_s)
    hist_t, hist_v = state.hist_t[first:], state.hist_v[first:]
    if not math.isnan(demand):
        hist_t, hist_v = (*hist_t, now), (*hist_v, demand)
    smoothed = state.smoothed
    if not math.isnan(rep.service):
        smoothed = ewma(state.smoothed, state.smoothed_at, rep.service, now, spec.load_index.ewma_half_life_s)
    new_state = replace(state, hist_t=hist_t, hist_v=hist_v, smoothed=smoothed,
                        smoothed_at=now if not math.isnan(rep.service) else state.smoothed_at)
    if math.isnan(demand):
        return Core(rep, demand, None, math.nan, signals.current_replicas, new_state)

    y = bucketize(np.asarray(hist_t), np.asarray(hist_v), now, spec.bucket_s, spec.history_s)
    span = (now - hist_t[0]) if hist_t else 0.0
    steps = max(1, math.ceil(spec.startup_s / spec.bucket_s) + 1)
    if span < spec.min_history_s or y.size < 3:
        fit = None
        peak = demand
        notes.add("reactive", f"demand {fmt(demand)} (history {fmt(span, 0)}s < {fmt(spec.min_history_s, 0)}s: "
                  "no forecast yet)", "demand", demand)
    else:
        if spec.season_s is not None:
            m = int(round(spec.season_s / spec.bucket_s))
            fit = holt_winters(y, spec.smoothing_alpha, spec.trend_beta, spec.season_gamma, spec.damping_phi, m)
        else:
            fit = holt_damped(y, spec.smoothing_alpha, spec.trend_beta, spec.damping_phi)
        fpk = forecast_peak(fit, steps)
        peak = max(demand, fpk) + spec.sigma_margin * fit.rmse
        notes.add(
            "forecast",
            f"demand {fmt(demand)}, forecast peak {fmt(fpk)} over {fmt(steps * spec.bucket_s, 0)}s "
            f"(level {fmt(fit.level)}, trend {fmt(fit.trend, 3)}/{fmt(spec.bucket_s, 0)}s, rmse {fmt(fit.rmse)}"
            f"{', seasonal' if fit.season else ''})",
            "forecast", fpk,
        )
    peak = max(0.0, peak)
    raw = max(0, math.ceil(peak / spec.target_utilization - 1e-9))
    notes.add("capacity", f"ceil({fmt(peak)} / {fmt(spec.target_utilization)}) = {raw}", "replicas", raw,
              spec.target_utilization)
    return Core(rep, demand, fit, peak, raw, new_state)


def finish(
    signals: ServiceSignals,
    core: Core,
    spec: PredictiveSpec,
    now: float,
    notes: Notes,
    want: int,
    allow_down: bool = True,
    up_rate: float | None = None,
    min_interval_s: float | None = None,
) -> tuple[int, PredictiveState]:
    """Apply pending credit, stabilization, rate limits, action cap and bounds to ``want``.

    ``up_rate`` / ``min_interval_s`` override the spec's (the comprehensive policy's burst mode).
    """
    up_rate = spec.max_scale_up_rate if up_rate is None else up_rate
    min_interval_s = spec.min_action_interval_s if min_interval_s is None else min_interval_s
    st = core.state
    current = signals.current_replicas
    pending = signals.pending
    lo, hi = spec.min_replicas, spec.max_replicas
    actions = recent(st.action_times, now, 60.0)
    since_last = now - st.action_times[-1] if st.action_times else math.inf
    blocked = None
    if since_last < min_interval_s:
        blocked = ("interval", f"last action {fmt(since_last, 0)}s ago (min {fmt(min_interval_s, 0)}s)",
                   since_last, min_interval_s)
    elif len(actions) >= spec.max_actions_per_minute:
        blocked = ("rate_cap", f"{len(actions)} actions in 60s (cap {spec.max_actions_per_minute})",
                   len(actions), spec.max_actions_per_minute)
    recs = tuple(r for r in st.recs if now - r[0] < spec.scale_down_window_s) + ((now, want),)
    target = current
    if current < lo or current > hi:
        target = clamp(current, lo, hi)
        notes.add("bounds", f"{current} outside [{lo}, {hi}]")
    elif want > current:
        # ``want`` is an absolute count and ``current`` already includes the replicas that are starting,
        # so they are credited: only ``want - current`` more are asked for, never the starting ones again.
        credited = want
        if pending:
            notes.add("pending_credit", f"{pending} of {current} replicas still starting count toward {want}: "
                      f"asking {want - current} more", "pending", pending)
        up_cap = max(current + 1, math.ceil(current * up_rate))
        t = min(credited, up_cap, hi)
        if t > current and blocked:
            notes.add(blocked[0], blocked[1], "actions", blocked[2], blocked[3])
        else:
            if t < min(credited, hi):
                notes.add("up_rate", f"limited to x{fmt(up_rate, 1)} per step", "replicas", t)
            target = t
    elif want < current:
        stabilized = max(r for _, r in recs)
        if pending and want > current - pending:
            notes.add("pending_credit", f"{want} needed is covered by {pending} replicas already starting",
                      "pending", pending)
        if not allow_down:
            pass
        elif st.hist_t and now - st.hist_t[0] < spec.scale_down_window_s:
            notes.add("down_window", f"only {fmt(now - st.hist_t[0], 0)}s of history: no scale-down before "
                      f"{fmt(spec.scale_down_window_s, 0)}s", "history", now - st.hist_t[0], spec.scale_down_window_s)
        elif pending:
            notes.add("pending_hold", f"{pending} replicas starting: no scale-down", "pending", pending)
        elif stabilized >= current:
            notes.add("down_window", f"highest recommendation in {fmt(spec.scale_down_window_s, 0)}s is "
                      f"{stabilized}", "replicas", stabilized)
        elif blocked:
            notes.add(blocked[0], blocked[1], "actions", blocked[2], blocked[3])
        else:
            floor = math.floor(current / spec.max_scale_down_rate)
            target = max(lo, stabilized, floor)
    if target != current:
        actions = actions + (now,)
    return target, replace(st, recs=recs, action_times=actions)


def decide(
    signals: ServiceSignals, state: PredictiveState | None, spec: PredictiveSpec, now: float
) -> tuple[Decision, PredictiveState]:
    state = state or PredictiveState()
    notes = Notes()
    core = predict_core(signals, state, spec, now, notes)
    current = signals.current_replicas
    if math.isnan(core.demand):
        notes.add("no_demand", "no ready endpoints or rates to measure demand; holding")
        target, new_state = (clamp(current, spec.min_replicas, spec.max_replicas), core.state)
    else:
        target, new_state = finish(signals, core, spec, now, notes, core.raw_target)
    return (
        Decision(
            policy="predictive", service=signals.service, now=now, current_replicas=current, target_replicas=target,
            explanation=notes.explanation(f"predictive {current}->{target}"), reasons=tuple(notes.reasons),
            mode="stable", load_index=new_state.smoothed,
            forecast=None if math.isnan(core.peak) else core.peak,
            stale=core.report.stale_keys(signals.frame.keys, limit=100, within=signals.frame.ready), load=core.report,
        ),
        new_state,
    )
