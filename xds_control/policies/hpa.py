"""A faithful re-implementation of the Kubernetes HPA v2 decision (the baseline we must beat).

Contract: ``decide(signals, state, spec, now) -> (Decision, HpaState)``, pure; ``state`` may be None.

Follows, rule by rule (read, not copied):

* ``kubernetes/pkg/controller/podautoscaler/replica_calculator.go``
  - ``groupPods``: pods without an endpoint yet (Pending) are *ignored*; pods without a (fresh)
    metric are *missing*; for the CPU *Resource* metric unready pods are ignored too. (Upstream
    also ignores CPU samples inside the 5 min initialization period; we do not see pod start
    times, so readiness stands in for it.)
  - usage ratio = mean(metric) / target; no change when ``|1 - ratio| <= tolerance`` (0.1);
    otherwise ``ceil(ratio * readyPodCount)``.
  - missing pods count as 100 % of target (Resource: max(100 %, target) of request) on scale-down
    and as 0 on scale-up (only when the ratio is above 1); pending/unready pods count as 0 on
    scale-up ("scaleUpWithUnready"); if the recomputed ratio is within tolerance or flips direction,
    keep the current count; and, for Resource *and* Pods metrics alike (``GetResourceReplicas`` and
    ``calcPlainMetricReplicas`` both end with it), keep it when the new count moves against the ratio.
* ``kubernetes/pkg/controller/podautoscaler/horizontal.go``
  - ``computeReplicasForMetrics``: the largest proposal over metrics wins; if every metric is
    invalid, or some are invalid and the result would scale down, do not scale.
  - ``reconcileAutoscaler``: spec replicas 0 with minReplicas != 0 disables autoscaling; current
    above max / below min is corrected first.
  - ``stabilizeRecommendationWithBehaviors``: up = min of recommendations in the scale-up window,
    down = max in the scale-down window (300 s default), result = current clamped into [up, down].
  - ``convertDesiredReplicasWithBehaviorRate`` + ``calculateScaleUpLimitWithScalingRules`` /
    ``calculateScaleDownLimitWithBehaviors``: per-policy limits from ``periodStartReplicas =
    current - added + deleted`` within each policy's period; Percent rounds up for scale-up and down
    (int truncation) for scale-down; selectPolicy Max picks the largest change.
  - Defaults (``pkg/apis/autoscaling/v2/defaults.go``): scale-up window 0 s, policies Percent 100 and
    Pods 4 per 15 s, select Max; scale-down window 300 s, Percent 100 per 15 s.
* The controller resyncs every 15 s (``--horizontal-pod-autoscaler-sync-period``); between syncs this
  policy holds.

Stale samples (older than ``load_index.staleness_s``) are treated as *missing* (the metrics API
would not serve them), which is what the HPA does; the explanation says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from xds_control.core.model import Decision, ServiceSignals
from xds_control.loadindex import LoadReport, compute_load
from xds_control.policies.common import Notes, fmt
from xds_control.policies.specs import PolicySpecBase, _Spec

__all__ = ["HpaMetricSpec", "HpaRule", "HpaScalingRules", "HpaBehavior", "HpaSpec", "HpaState", "decide"]

Signal = Literal["cpu_util", "gpu_util", "gpu_mem", "kv_cache", "running", "waiting", "in_flight", "rps",
                 "latency_s", "load"]


class HpaMetricSpec(_Spec):
    """One HPA metric: a per-pod average target."""

    signal: Signal = Field("cpu_util", description="Per-endpoint signal to average. Default cpu_util.")
    type: Literal["Resource", "Pods"] = Field(
        "Resource",
        description="Resource (utilization of a request; unready pods ignored, missing = 100 % on scale-down) or "
        "Pods (plain average value; missing = target on scale-down). Default Resource.",
    )
    target: float = Field(
        0.8, gt=0.0, le=1e9,
        description="Target average per pod, in the signal's unit (fractions for utilizations). Default 0.8.",
    )


class HpaRule(_Spec):
    type: Literal["Pods", "Percent"] = Field(description="Pods: absolute change; Percent: of periodStartReplicas.")
    value: int = Field(ge=1, le=100_000, description="Pods or percent allowed per period.")
    period_s: int = Field(ge=1, le=1800, description="Period in seconds (upstream: 1..1800).")


class HpaScalingRules(_Spec):
    stabilization_window_s: int | None = Field(
        None, ge=0, le=3600,
        description="Stabilization window, seconds (0..3600). Null: upstream default (up 0 s, down 300 s).",
    )
    select_policy: Literal["Max", "Min", "Disabled"] = Field("Max", description="Which policy wins. Default Max.")
    policies: tuple[HpaRule, ...] | None = Field(
        None,
        description="Rate rules. Null: upstream default (up: Percent 100 + Pods 4 per 15 s; down: Percent 100 "
        "per 15 s).",
    )


def _default_up() -> HpaScalingRules:
    return HpaScalingRules(
        stabilization_window_s=0,
        select_policy="Max",
        policies=(HpaRule(type="Percent", value=100, period_s=15), HpaRule(type="Pods", value=4, period_s=15)),
    )


def _default_down() -> HpaScalingRules:
    return HpaScalingRules(
        stabilization_window_s=300, select_policy="Max", policies=(HpaRule(type="Percent", value=100, period_s=15),)
    )


def _resolve(rules: HpaScalingRules, default: HpaScalingRules) -> HpaScalingRules:
    return HpaScalingRules(
        stabilization_window_s=default.stabilization_window_s
        if rules.stabilization_window_s is None
        else rules.stabilization_window_s,
        select_policy=rules.select_policy,
        policies=default.policies if rules.policies is None else rules.policies,
    )


class HpaBehavior(_Spec):
    scale_up: HpaScalingRules = Field(
        default_factory=_default_up, description="Default: window 0 s; max(100 %, 4 pods) per 15 s."
    )
    scale_down: HpaScalingRules = Field(
        default_factory=_default_down, description="Default: window 300 s; 100 % per 15 s."
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> HpaBehavior:
        object.__setattr__(self, "scale_up", _resolve(self.scale_up, _default_up()))
        object.__setattr__(self, "scale_down", _resolve(self.scale_down, _default_down()))
        return self


class HpaSpec(PolicySpecBase):
    """Kubernetes HPA v2 with upstream defaults."""

    policy: Literal["hpa"] = "hpa"
    metrics: tuple[HpaMetricSpec, ...] = Field(
        default_factory=lambda: (HpaMetricSpec(),),
        min_length=1,
        description="Metrics; the largest proposal wins. Default: CPU Resource utilization 80 %.",
    )
    tolerance: float = Field(
        0.1, ge=0.0, le=1.0, description="No change while |1 - usageRatio| <= tolerance. Upstream default 0.1."
    )
    sync_period_s: float = Field(
        15.0, gt=0.0, le=3600.0, description="Seconds between evaluations. Upstream default 15 s."
    )
    behavior: HpaBehavior = Field(default_factory=HpaBehavior, description="Scale-up/down behavior (v2 defaults).")


@dataclass(frozen=True, slots=True)
class HpaState:
    next_sync_at: float | None = None
    #: (time, un-stabilized recommendation) within the longest stabilization window.
    recommendations: tuple[tuple[float, int], ...] = ()
    #: (time, replicas added) / (time, replicas removed) within the longest policy period.
    up_events: tuple[tuple[float, int], ...] = ()
    down_events: tuple[tuple[float, int], ...] = ()


def _column(signals: ServiceSignals, name: str, load: np.ndarray) -> np.ndarray:
    f = signals.frame
    if name == "in_flight":
        return f.in_flight
    if name == "load":
        return np.array(load, copy=True)
    return np.array(getattr(f, name), copy=True)


def metric_replicas(
    values: np.ndarray,
    considered: np.ndarray,
    n_ignored: int,
    current: int,
    target: float,
    tolerance: float,
    resource: bool,
) -> tuple[int | None, float, str]:
    """replica_calculator.go for one metric. Returns (replicas or None if invalid, usage ratio, note).

    ``values``: per-endpoint metric (NaN = missing); ``considered``: endpoints not ignored;
    ``n_ignored``: ignored pods (pending + ignored unready).
    """
    v = values[considered]
    have = ~np.isnan(v)
    metrics = v[have]
    n_missing = int(np.count_nonzero(~have))
    ready_count = int(metrics.size)
    if ready_count == 0:
        return None, math.nan, "no metrics for any ready pod"
    usage_ratio = float(metrics.mean()) / target
    rebalance_ignored = n_ignored > 0 and usage_ratio > 1.0
    if not rebalance_ignored and n_missing == 0:
        if abs(1.0 - usage_ratio) <= tolerance:
            return current, usage_ratio, "within tolerance"
        return math.ceil(usage_ratio * ready_count), usage_ratio, f"ceil({fmt(usage_ratio, 3)} x {ready_count} pods)"
    total = float(metrics.sum())
    count = ready_count
    if n_missing:
        # replica_calculator.go (GetResourceReplicas / calcPlainMetricReplicas): on a scale-down a missing pod
        # counts as using the target (Resource: max(100 %, target utilization) of its request); on a scale-up
        # (ratio strictly above 1, both metric types) as using 0; at a ratio of exactly 1 it is left out.
        if usage_ratio < 1.0:
            total += n_missing * (max(1.0, target) if resource else target)
            count += n_missing
        elif usage_ratio > 1.0:
            count += n_missing
    if rebalance_ignored:
        count += n_ignored
    new_ratio = (total / count) / target
    # replica_calculator.go: "return the current replicas if the change would be too small, or if the new usage
    # ratio would cause a change in scale direction".
    if (
        abs(1.0 - new_ratio) <= tolerance
        or (usage_ratio < 1.0 and new_ratio > 1.0)
        or (usage_ratio > 1.0 and new_ratio < 1.0)
    ):
        return current, usage_ratio, (
            f"{n_missing} missing/{n_ignored if rebalance_ignored else 0} ignored pods: ratio {fmt(new_ratio, 3)} "
            "within tolerance or flips direction"
        )
    new_replicas = math.ceil(new_ratio * count)
    # replica_calculator.go: "return the current replicas if the change of metrics length would cause a change in
    # scale direction" -- in GetResourceReplicas and in calcPlainMetricReplicas (Pods metrics) alike.
    if (new_ratio < 1.0 and new_replicas > current) or (new_ratio > 1.0 and new_replicas < current):
        return current, usage_ratio, "count change would flip direction"
    return new_replicas, usage_ratio, (
        f"ceil({fmt(new_ratio, 3)} x {count} pods incl. {n_missing} missing"
        f"{f', {n_ignored} ignored' if rebalance_ignored else ''})"
    )


#: (time, replica change) of past scale events
_Events = tuple[tuple[float, int], ...]


def _change_in_period(events: _Events, now: float, period: float) -> int:
    cutoff = now - period
    return sum(c for t, c in events if t > cutoff)


def scale_up_limit(current: int, up: _Events, down: _Events, rules: HpaScalingRules, now: float) -> int:
    """calculateScaleUpLimitWithScalingRules."""
    if rules.select_policy == "Disabled":
        return current
    pick = min if rules.select_policy == "Min" else max
    result: int | None = None
    for p in rules.policies or ():
        start = current - _change_in_period(up, now, p.period_s) + _change_in_period(down, now, p.period_s)
        proposed = start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


def scale_down_limit(current: int, up: _Events, down: _Events, rules: HpaScalingRules, now: float) -> int:
    """calculateScaleDownLimitWithBehaviors."""
    if rules.select_policy == "Disabled":
        return current
    pick = max if rules.select_policy == "Min" else min
    result: int | None = None
    for p in rules.policies or ():
        start = current - _change_in_period(up, now, p.period_s) + _change_in_period(down, now, p.period_s)
        proposed = start - p.value if p.type == "Pods" else int(start * (1 - p.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


def decide(signals: ServiceSignals, state: HpaState | None, spec: HpaSpec, now: float) -> tuple[Decision, HpaState]:
    state = state or HpaState()
    current = signals.current_replicas
    lo, hi = spec.min_replicas, spec.max_replicas
    notes = Notes()

    def out(
        target: int, st: HpaState, mode: str = "stable", rep: LoadReport | None = None
    ) -> tuple[Decision, HpaState]:
        return (
            Decision(
                policy="hpa", service=signals.service, now=now, current_replicas=current, target_replicas=target,
                explanation=notes.explanation(f"HPA {current}->{target}"), reasons=tuple(notes.reasons), mode=mode,
                load_index=None if rep is None or math.isnan(rep.service) else rep.service,
                stale=() if rep is None else rep.stale_keys(
                    signals.frame.keys, limit=100, raw=True, within=signals.frame.ready
                ),
                load=rep,
            ),
            st,
        )

    if state.next_sync_at is not None and now < state.next_sync_at:
        notes.add("between_syncs", f"next sync in {fmt(state.next_sync_at - now, 1)}s")
        return out(current, state, mode="hold")
    next_sync = now + spec.sync_period_s if state.next_sync_at is None else max(
        state.next_sync_at + spec.sync_period_s, now
    )

    frame = signals.frame
    rep = compute_load(frame, spec.load_index, now)
    stale = rep.stale
    n_stale = int(np.count_nonzero(stale))
    if n_stale:
        notes.add("stale_as_missing", f"{n_stale} endpoints with stale/no samples treated as "
                  "missing metrics (HPA rule)", "staleness", float(n_stale))
    # pods without an endpoint in the frame are Pending -> ignored
    n_pending = max(0, current - len(frame))

    if current == 0 and lo != 0:
        notes.add("disabled", "spec replicas is 0: autoscaling disabled")
        return out(0, HpaState(next_sync, state.recommendations, state.up_events, state.down_events), "hold", rep)
    if current > hi or current < lo:
        desired = hi if current > hi else lo
        notes.add("bounds", f"current {current} outside [{lo}, {hi}]")
        rescale = True
        recs = state.recommendations
    else:
        proposals: list[int] = []
        invalid = 0
        for m in spec.metrics:
            vals = _column(signals, m.signal, rep.endpoint)
            vals[stale] = np.nan
            considered = np.ones(len(frame), dtype=bool)
            n_ignored = n_pending
            if m.type == "Resource" and m.signal == "cpu_util":
                considered = frame.ready.copy()
                n_ignored += int(np.count_nonzero(~frame.ready))
            r, ratio, why = metric_replicas(vals, considered, n_ignored, current, m.target, spec.tolerance,
                                            m.type == "Resource")
            if r is None:
                invalid += 1
                notes.add("invalid_metric", f"{m.signal}: {why}", m.signal)
                continue
            mean = ratio * m.target
            notes.add("metric", f"{m.signal} avg {fmt(mean, 3)} vs target {fmt(m.target, 3)} -> {r} ({why})",
                      m.signal, mean, m.target)
            proposals.append(r)
        if invalid >= len(spec.metrics) or (invalid and proposals and max(proposals) < current):
            notes.add("no_scale", "invalid metrics: not scaling")
            return out(current, HpaState(next_sync, state.recommendations, state.up_events, state.down_events),
                       "hold", rep)
        metric_desired = max(proposals)
        # --- normalizeDesiredReplicasWithBehaviors ---
        b = spec.behavior
        up_w, down_w = b.scale_up.stabilization_window_s or 0, b.scale_down.stabilization_window_s or 0
        up_rec = down_rec = metric_desired
        for t, r in state.recommendations:
            if t > now - up_w:
                up_rec = min(up_rec, r)
            if t > now - down_w:
                down_rec = max(down_rec, r)
        stabilized = min(max(current, up_rec), down_rec)
        keep = max(up_w, down_w)
        recs = tuple((t, r) for t, r in state.recommendations if t > now - keep) + ((now, metric_desired),)
        if stabilized != metric_desired:
            notes.add("stabilized", f"{'scale-down' if metric_desired < current else 'scale-up'} stabilization "
                      f"window -> {stabilized}", "replicas", stabilized)
        desired = stabilized
        if desired > current:
            limit = max(scale_up_limit(current, state.up_events, state.down_events, b.scale_up, now), current)
            cap = min(hi, limit)
            if desired > cap:
                notes.add("scale_up_limit" if cap == limit else "too_many", f"limited to {cap} "
                          f"({'rate rule' if cap == limit else 'max_replicas'})", "replicas", desired, cap)
                desired = cap
        elif desired < current:
            limit = min(scale_down_limit(current, state.up_events, state.down_events, b.scale_down, now), current)
            floor = max(lo, limit)
            if desired < floor:
                notes.add("scale_down_limit" if floor == limit else "too_few", f"limited to {floor} "
                          f"({'rate rule' if floor == limit else 'min_replicas'})", "replicas", desired, floor)
                desired = floor
        rescale = desired != current

    up_ev, down_ev = state.up_events, state.down_events
    longest_up = max((p.period_s for p in spec.behavior.scale_up.policies or ()), default=0)
    longest_down = max((p.period_s for p in spec.behavior.scale_down.policies or ()), default=0)
    up_ev = tuple(e for e in up_ev if e[0] > now - longest_up)
    down_ev = tuple(e for e in down_ev if e[0] > now - longest_down)
    if rescale:
        if desired > current:
            up_ev = up_ev + ((now, desired - current),)
        elif desired < current:
            down_ev = down_ev + ((now, current - desired),)
    return out(desired, HpaState(next_sync, recs, up_ev, down_ev), "stable", rep)
