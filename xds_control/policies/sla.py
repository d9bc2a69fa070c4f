"""A Dynamo-SLA-planner-style policy: predicted load x profiled per-replica capacity at the SLO -> replicas.

Contract: ``decide(signals, state, spec, now) -> (Decision, SlaState)``, pure; ``state`` may be None.

What NVIDIA Dynamo's SLA planner does (ai-dynamo/dynamo; read, not copied) and what we keep:

* ``components/src/dynamo/planner/config/defaults.py`` (``SLAPlannerDefaults``): it acts once per
  ``throughput_adjustment_interval`` (180 s), for TTFT 500 ms / ITL 50 ms, with an ARIMA load predictor,
  ``min_endpoint`` 1 and a GPU budget. Ours: ``adjustment_interval_s`` (default 180), the SLO is the
  one the capacity profile was measured at, ``min_replicas`` / ``max_replicas`` are ``min_endpoint`` and
  the budget (in replicas).
* ``planner_core.py`` / ``docs/planner/sla_planner.md`` ("Load Prediction"): every interval it observes
  the request count (and ISL/OSL) over the interval and predicts the next interval's value.
  ``core/load/predictors.py``: a predictor needs ``minimum_data_points`` (5 for ARIMA/Prophet) before it
  forecasts, and returns the last value until then; leading zeros (the idle period before the first
  request) are skipped; constant data predicts that constant; forecasts are clipped at 0. Ours: the
  series of per-interval mean request rates, forecast one interval ahead with the project's damped Holt
  (:mod:`xds_control.policies.forecast`) in place of ARIMA, with the same warm-up, idle-skip, constant
  and clipping rules.
* ``core/throughput_scaling.py`` (``_throughput_agg``, aggregated engines, which is what our replicas
  are): demand_rps = predicted requests / interval; engine_rps = the best request rate one engine
  sustains within both the TTFT and the ITL SLO, from the pre-deployment profile; replicas =
  max(ceil(demand_rps / engine_rps), min_endpoint), then the budget. Ours: ``rps_per_replica`` is that
  engine_rps; or, from a disaggregated-style profile (the profiler's prefill tokens/s at the TTFT SLO
  and decode tokens/s at the ITL SLO), engine_rps = 1 / (isl / prefill_tokens_per_s + osl /
  decode_tokens_per_s): an aggregated engine spends isl / P seconds prefilling and osl / D seconds
  decoding per request (this ignores prefill slowing decode down, so it is optimistic; give
  ``rps_per_replica`` when you have an aggregated profile). ``target_utilization`` (default 1.0, i.e.
  Dynamo's rule) scales the capacity; it is the knob a cost frontier sweeps.
* ``planner_core.py`` ``make_adjustments``: with no traffic in the interval (no TTFT/ITL samples) the
  adjustment is skipped. Decisions are absolute counts applied without rate limits or cooldowns,
  non-blocking (the Kubernetes connector does not wait for the previous scaling to finish).

Not reproduced: Dynamo also predicts ISL/OSL and interpolates the profile at them, and (older
versions) corrects the profile by observed/expected TTFT and ITL. Our signals carry neither per-request
token counts nor per-request TTFT/ITL, so the mix is the profiled one (``isl`` / ``osl``) and no
correction is applied. Demand is the gateway request rate (``request_rate``), or, without it, the
endpoints' rps summed (stale endpoints extrapolated from the fresh ones, and reported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from xds_control.core.model import Decision, ServiceSignals
from xds_control.loadindex import LoadReport, compute_load
from xds_control.policies.common import Notes, clamp, fmt
from xds_control.policies.forecast import holt_damped
from xds_control.policies.specs import PolicySpecBase

__all__ = ["SlaSpec", "SlaState", "decide", "engine_rps", "predict_next"]


class SlaSpec(PolicySpecBase):
    """Predicted request rate over a profiled per-replica capacity at the SLO (Dynamo's SLA planner, aggregated)."""

    policy: Literal["sla"] = "sla"
    rps_per_replica: float | None = Field(
        None, gt=0.0, le=1e6,
        description="Requests/s one replica sustains within the TTFT and TPOT SLO at the profiled mix (Dynamo's "
        "engine_rps). Give this, or prefill_tokens_per_s and decode_tokens_per_s.",
    )
    prefill_tokens_per_s: float | None = Field(
        None, gt=0.0, le=1e9,
        description="Prompt tokens/s one replica prefills within the TTFT SLO (the profiler's prefill throughput).",
    )
    decode_tokens_per_s: float | None = Field(
        None, gt=0.0, le=1e9,
        description="Output tokens/s one replica decodes within the TPOT/ITL SLO (the profiler's best decode "
        "throughput at that ITL).",
    )
    isl: float = Field(
        3000.0, gt=0.0, le=1e7,
        description="Mean prompt tokens per request of the profiled mix (converts token capacities to requests/s). "
        "Default 3000 (Dynamo's profiling default).",
    )
    osl: float = Field(
        150.0, gt=0.0, le=1e7,
        description="Mean output tokens per request of the profiled mix. Default 150 (Dynamo's profiling default).",
    )
    target_utilization: float = Field(
        1.0, gt=0.05, le=2.0,
        description="Plan for this fraction of the profiled capacity. Default 1.0: Dynamo plans at the profiled "
        "capacity, whose SLO already holds the headroom.",
    )
    adjustment_interval_s: float = Field(
        180.0, ge=1.0, le=3600.0,
        description="Seconds between adjustments (throughput_adjustment_interval). Default 180.",
    )
    min_data_points: int = Field(
        5, ge=1, le=1000,
        description="Intervals observed before forecasting; until then the last interval's rate is used "
        "(ARIMA's minimum_data_points). Default 5.",
    )
    history_points: int = Field(
        50, ge=2, le=10_000,
        description="Interval rates kept for the forecast (prophet_window_size). Default 50.",
    )
    smoothing_alpha: float = Field(0.5, gt=0.0, le=1.0, description="Holt level smoothing per interval. Default 0.5.")
    trend_beta: float = Field(0.3, ge=0.0, le=1.0, description="Holt trend smoothing per interval. Default 0.3.")
    damping_phi: float = Field(0.95, gt=0.0, le=1.0, description="Trend damping per interval. Default 0.95.")

    @model_validator(mode="after")
    def _one_capacity(self) -> SlaSpec:
        tokens = (self.prefill_tokens_per_s, self.decode_tokens_per_s)
        if self.rps_per_replica is not None and any(t is not None for t in tokens):
            raise ValueError(
                f"give rps_per_replica ({self.rps_per_replica}) or prefill_tokens_per_s/decode_tokens_per_s "
                f"({self.prefill_tokens_per_s}/{self.decode_tokens_per_s}), not both"
            )
        if self.rps_per_replica is None and any(t is None for t in tokens):
            raise ValueError(
                "a capacity profile is required: rps_per_replica (> 0), or both prefill_tokens_per_s and "
                f"decode_tokens_per_s (> 0; got {self.prefill_tokens_per_s} and {self.decode_tokens_per_s})"
            )
        return self


@dataclass(frozen=True, slots=True)
class SlaState:
    #: Start of the interval being observed.
    interval_start: float | None = None
    #: Request-rate samples of the current interval: sum and count.
    acc_sum: float = 0.0
    acc_n: int = 0
    #: Mean request rate of each past interval (oldest first), at most history_points.
    series: tuple[float, ...] = ()
    #: The predictor has seen a non-zero interval (leading idle intervals are skipped).
    seen_traffic: bool = False


def engine_rps(spec: SlaSpec) -> float:
    """Requests/s one replica serves within the SLO, before ``target_utilization``."""
    if spec.rps_per_replica is not None:
        return spec.rps_per_replica
    assert spec.prefill_tokens_per_s is not None and spec.decode_tokens_per_s is not None  # the validator
    return 1.0 / (spec.isl / spec.prefill_tokens_per_s + spec.osl / spec.decode_tokens_per_s)


def predict_next(series: tuple[float, ...], spec: SlaSpec) -> tuple[float, str]:
    """Next interval's mean request rate, and how it was obtained (predictors.py rules, damped Holt)."""
    if not series:
        return 0.0, "no data"
    if len(series) < spec.min_data_points:
        return series[-1], f"last interval ({len(series)} < {spec.min_data_points} intervals)"
    if len(set(series)) == 1:
        return series[0], "constant"
    fit = holt_damped(np.asarray(series, dtype=float), spec.smoothing_alpha, spec.trend_beta, spec.damping_phi)
    return max(0.0, fit.at(1)), f"damped Holt over {len(series)} intervals (level {fmt(fit.level)}, trend " \
        f"{fmt(fit.trend, 3)})"


def _request_rate(signals: ServiceSignals, rep: LoadReport) -> float:
    if signals.request_rate is not None and math.isfinite(signals.request_rate):
        return max(0.0, float(signals.request_rate))
    f = signals.frame
    r = f.rps[f.ready & ~rep.stale]
    r = r[~np.isnan(r)]
    if r.size == 0:
        return math.nan
    return float(r.sum()) * float(rep.n_ready) / float(r.size)


def decide(signals: ServiceSignals, state: SlaState | None, spec: SlaSpec, now: float) -> tuple[Decision, SlaState]:
    state = state or SlaState()
    current = signals.current_replicas
    lo, hi = spec.min_replicas, spec.max_replicas
    notes = Notes()
    frame = signals.frame
    rep = compute_load(frame, spec.load_index, now)
    cap = engine_rps(spec) * spec.target_utilization

    n_stale = int(np.count_nonzero(frame.ready & rep.stale))
    if n_stale:
        how = "not used (demand is the gateway rate)" if signals.request_rate is not None else \
            "extrapolated from the fresh ones"
        notes.add("stale_not_scraped", f"{n_stale} ready endpoints with stale/no samples: {how}",
                  "staleness", float(n_stale))

    def out(target: int, st: SlaState, mode: str, forecast: float | None = None) -> tuple[Decision, SlaState]:
        return (
            Decision(
                policy="sla", service=signals.service, now=now, current_replicas=current, target_replicas=target,
                explanation=notes.explanation(f"SLA planner {current}->{target}"), reasons=tuple(notes.reasons),
                mode=mode, load_index=None if math.isnan(rep.service) else rep.service, forecast=forecast,
                stale=rep.stale_keys(frame.keys, limit=100, raw=True, within=frame.ready), load=rep,
            ),
            st,
        )

    rate = _request_rate(signals, rep)
    if not math.isnan(rate):
        state = replace(state, acc_sum=state.acc_sum + rate, acc_n=state.acc_n + 1)
    start = now if state.interval_start is None else state.interval_start
    state = replace(state, interval_start=start)
    held = clamp(current, lo, hi)
    if now - start < spec.adjustment_interval_s:
        notes.add("between_adjustments", f"next adjustment in {fmt(start + spec.adjustment_interval_s - now, 0)}s")
        return out(held, state, "hold")

    # An adjustment: the interval's mean rate becomes one data point (observe_metrics), then predict and size.
    observed = state.acc_sum / state.acc_n if state.acc_n else math.nan
    series, seen = state.series, state.seen_traffic
    if not math.isnan(observed) and (observed > 0 or seen):  # predictors.py: skip leading idle intervals
        series = (*series, observed)[-spec.history_points:]
        seen = seen or observed > 0
    state = SlaState(interval_start=now, series=series, seen_traffic=seen)
    if math.isnan(observed) or observed <= 0:
        notes.add("no_traffic", "no requests measured in the interval: adjustment skipped (Dynamo skips it "
                  "without TTFT/ITL samples)", "rps", 0.0 if math.isnan(observed) else observed)
        return out(held, state, "hold")
    pred, how = predict_next(series, spec)
    need = max(0, math.ceil(pred / cap - 1e-9))
    notes.add("forecast", f"interval rate {fmt(observed)} req/s; next {fmt(pred)} req/s ({how})", "rps", pred)
    notes.add("capacity", f"ceil({fmt(pred)} / {fmt(cap)} req/s per replica at the SLO) = {need}", "replicas",
              float(need), cap)
    target = clamp(need, lo, hi)
    if target != need:
        notes.add("bounds", f"bounded {need}->{target} by [{lo}, {hi}] (min_endpoint / budget)")
    return out(target, state, "stable", forecast=pred / cap)
