"""The seed paper's rule method: scale up when L > L_high, down when L < L_low, with hysteresis.

Contract: ``decide(signals, state, spec, now) -> (Decision, ThresholdState)`` is pure; ``state``
may be ``None`` on the first call. Defaults follow the seed's Table 1: CPU trigger 75-80 %
(0.78), GPU-memory trigger 85-90 % (0.88), latency trigger 200 ms, scaling response < 10 s
(10 s up-cooldown), and at most 6 scaling actions a minute. Stale samples count as saturated
(they push L up, never down) and are named in the explanation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from xds_control.core.model import Decision, ServiceSignals
from xds_control.loadindex import compute_load, ewma
from xds_control.policies.common import Notes, clamp, fmt, recent, stale_note
from xds_control.policies.specs import PolicySpecBase

__all__ = ["ThresholdSpec", "ThresholdState", "decide"]


class ThresholdSpec(PolicySpecBase):
    """Rule-based hysteresis on the load index plus the seed's per-signal triggers."""

    policy: Literal["threshold"] = "threshold"
    l_high: float = Field(
        0.8, gt=0.0, le=2.0,
        description="Scale up when the smoothed service load index exceeds this. Default 0.8: the seed's "
        "75-80 % trigger band applied to the composite index.",
    )
    l_low: float = Field(
        0.4, ge=0.0, le=2.0,
        description="Scale down when the smoothed index stays below this for down_sustain_s. Default 0.4: "
        "half of l_high, so one step down cannot push L back over l_high (hysteresis).",
    )
    cpu_trigger: float | None = Field(
        0.78, gt=0.0, le=1.0,
        description="Mean CPU utilization (fraction) that triggers scale-up on its own. Default 0.78 (Table 1: "
        "75-80 %); null disables.",
    )
    gpu_mem_trigger: float | None = Field(
        0.88, gt=0.0, le=1.0,
        description="Mean GPU memory use (fraction) that triggers scale-up. Default 0.88 (Table 1: 85-90 %); "
        "null disables.",
    )
    latency_trigger_s: float | None = Field(
        0.2, gt=0.0, le=600.0,
        description="Mean latency/TTFT (seconds) that triggers scale-up. Default 0.2 (Table 1: > 200 ms); "
        "null disables.",
    )
    scale_up_step: int = Field(1, ge=1, le=10_000, description="Replicas added per up action, at least. Default 1.")
    scale_up_percent: float = Field(
        0.25, ge=0.0, le=10.0,
        description="Or this fraction of current replicas, whichever is larger (ceil). Default 0.25 so big "
        "fleets do not crawl one replica at a time.",
    )
    scale_down_step: int = Field(
        1, ge=1, le=10_000, description="Replicas removed per down action. Default 1 (cautious)."
    )
    cooldown_up_s: float = Field(
        10.0, ge=0.0, le=3600.0,
        description="Seconds after any action before scaling up again. Default 10 s (Table 1: response < 10 s).",
    )
    cooldown_down_s: float = Field(
        60.0, ge=0.0, le=3600.0,
        description="Seconds after any action before scaling down. Default 60 s: new replicas must show up in L first.",
    )
    down_sustain_s: float = Field(
        30.0, ge=0.0, le=3600.0, description="L must stay below l_low this long before a down action. Default 30 s."
    )
    max_actions_per_minute: int = Field(
        6, ge=1, le=600, description="Scaling actions allowed in any 60 s window. Default 6 (Table 1: 0-6 per minute)."
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> ThresholdSpec:
        if not self.l_low < self.l_high:
            raise ValueError(f"l_low ({self.l_low}) must be < l_high ({self.l_high}) for hysteresis")
        return self


@dataclass(frozen=True, slots=True)
class ThresholdState:
    smoothed: float | None = None
    smoothed_at: float | None = None
    last_action_at: float | None = None
    #: Times of scaling actions within the last minute.
    action_times: tuple[float, ...] = ()
    #: Since when L has been continuously below l_low (None when it is not).
    low_since: float | None = None


def _fresh_mean(col: np.ndarray, mask: np.ndarray) -> float:
    v = col[mask]
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def decide(
    signals: ServiceSignals, state: ThresholdState | None, spec: ThresholdSpec, now: float
) -> tuple[Decision, ThresholdState]:
    state = state or ThresholdState()
    frame = signals.frame
    rep = compute_load(frame, spec.load_index, now)
    smoothed = (
        math.nan if math.isnan(rep.service)
        else ewma(state.smoothed, state.smoothed_at, rep.service, now, spec.load_index.ewma_half_life_s)
    )
    notes = Notes()
    stale_note(notes, signals, rep)

    current = signals.current_replicas
    lo, hi = spec.min_replicas, spec.max_replicas
    actions = recent(state.action_times, now, 60.0)
    last = state.last_action_at
    since_last = math.inf if last is None else now - last

    fresh_ready = frame.ready & ~rep.stale
    over: list[tuple[str, float, float]] = []
    if not math.isnan(smoothed) and smoothed > spec.l_high:
        over.append(("load", smoothed, spec.l_high))
    for name, col, thr in (
        ("cpu_util", frame.cpu_util, spec.cpu_trigger),
        ("gpu_mem", frame.gpu_mem, spec.gpu_mem_trigger),
        ("latency_s", frame.latency_s, spec.latency_trigger_s),
    ):
        if thr is None:
            continue
        m = _fresh_mean(col, fresh_ready)
        if not math.isnan(m) and m > thr:
            over.append((name, m, thr))

    want_down = not over and not math.isnan(smoothed) and smoothed < spec.l_low
    low_since = (state.low_since if state.low_since is not None else now) if want_down else None

    target = current
    head = f"L={fmt(smoothed)} ({rep.describe_terms() or 'no fresh terms'})"
    if current < lo or current > hi:
        target = clamp(current, lo, hi)
        notes.add("bounds", f"{current} outside [{lo}, {hi}] -> {target}", "replicas", current)
    elif math.isnan(smoothed):
        notes.add("no_ready", "no ready endpoints to measure; holding", "load")
    elif over:
        for name, v, thr in over:
            notes.add(f"{name}_above_trigger" if name != "load" else "load_above_high",
                      f"{name} {fmt(v)} > {fmt(thr)}", name, v, thr)
        if current >= hi:
            notes.add("at_max", f"already at max_replicas {hi}")
        elif since_last < spec.cooldown_up_s:
            notes.add("cooldown", f"up-cooldown {fmt(spec.cooldown_up_s, 0)}s, last action {fmt(since_last, 1)}s ago",
                      "cooldown", since_last, spec.cooldown_up_s)
        elif len(actions) >= spec.max_actions_per_minute:
            notes.add("rate_cap", f"{len(actions)} actions in the last 60s (cap {spec.max_actions_per_minute})",
                      "actions", len(actions), spec.max_actions_per_minute)
        else:
            step = max(spec.scale_up_step, math.ceil(current * spec.scale_up_percent))
            target = min(hi, current + step)
            notes.add("scale_up", f"+{target - current} (step {step})")
    elif want_down:
        notes.add("load_below_low", f"L {fmt(smoothed)} < L_low {fmt(spec.l_low)}", "load", smoothed, spec.l_low)
        held = now - low_since  # type: ignore[operator]  # not None: set whenever want_down
        if held < spec.down_sustain_s:
            notes.add("sustain", f"below for {fmt(held, 1)}s of {fmt(spec.down_sustain_s, 0)}s",
                      "sustain", held, spec.down_sustain_s)
        elif current <= lo:
            notes.add("at_min", f"already at min_replicas {lo}")
        elif since_last < spec.cooldown_down_s:
            notes.add("cooldown",
                      f"down-cooldown {fmt(spec.cooldown_down_s, 0)}s, last action {fmt(since_last, 1)}s ago",
                      "cooldown", since_last, spec.cooldown_down_s)
        elif len(actions) >= spec.max_actions_per_minute:
            notes.add("rate_cap", f"{len(actions)} actions in the last 60s (cap {spec.max_actions_per_minute})",
                      "actions", len(actions), spec.max_actions_per_minute)
        else:
            target = max(lo, current - spec.scale_down_step)
            notes.add("scale_down", f"-{current - target}")
    else:
        notes.add("in_band", f"within [{fmt(spec.l_low)}, {fmt(spec.l_high)}]", "load", smoothed)

    if target != current:
        actions = actions + (now,)
        last = now
        if target < current:
            low_since = now  # sustain again before the next step down
    new_state = ThresholdState(
        smoothed=None if math.isnan(smoothed) else smoothed,
        smoothed_at=now if not math.isnan(smoothed) else state.smoothed_at,
        last_action_at=last,
        action_times=actions,
        low_since=low_since,
    )
    decision = Decision(
        policy="threshold",
        service=signals.service,
        now=now,
        current_replicas=current,
        target_replicas=target,
        explanation=notes.explanation(f"{head}; {current}->{target}"),
        reasons=tuple(notes.reasons),
        mode="stable",
        load_index=None if math.isnan(smoothed) else smoothed,
        stale=rep.stale_keys(frame.keys, limit=100, within=frame.ready),
        load=rep,
    )
    return decision, new_state
