"""A faithful re-implementation of Knative's KPA decider (the other baseline we must beat).

Contract: ``decide(signals, state, spec, now) -> (Decision, KpaState)``, pure; ``state`` may be None.
Unlike Knative's ``autoscaler.Scale``, which mutates ``panicTime``/``maxPanicPods`` in place, the
panic bookkeeping and metric buckets live in the immutable :class:`KpaState` that is returned.

Follows (read, not copied):

* ``knative/serving pkg/autoscaler/scaling/autoscaler.go`` (``Scale``, ``newAutoscaler``):
  ready = max(1, readyPods); maxScaleUp = ceil(maxScaleUpRate * ready); maxScaleDown =
  floor(ready / maxScaleDownRate); desired stable/panic pods = ceil(observed / targetValue) clamped
  into [maxScaleDown, maxScaleUp]; panic starts when desiredPanic / ready >= panicThreshold, is
  extended while over, and ends once ``panicTime + stableWindow`` is before now and we are under;
  in panic the count never goes down (``maxPanicPods``); a new autoscaler with more than one ready
  pod starts in panic; optional scale-down delay is a max over a time window; excess burst
  capacity = floor(readyPods * totalValue - targetBurstCapacity - panicValue).
* ``knative/serving pkg/autoscaler/aggregation/bucketing.go`` (``TimedFloat64Buckets``): one set of
  per-second buckets per window (stable and panic are separate buckets). ``WindowAverage`` divides by
  the buckets actually covered: from the first write (partial window) to the *last* write, so a
  trailing gap (no data in the newest seconds) shrinks the divisor instead of counting as zeros; a
  gap inside the window counts as zeros; nothing for a whole window gives 0. ``Record`` resets the
  first write after a gap of at least one window (so the 6 s panic window restarts after 6 s without
  data, the stable one after 60 s).
* ``knative/serving pkg/autoscaler/metrics/collector.go`` / scraper: the observed value is the
  revision total (average per scraped pod x ready pods); a failed scrape records nothing;
  ``StableAndPanicConcurrency`` / ``StableAndPanicRPS`` return ``ErrNoData`` when the stable buckets
  have no write within the stable window, and ``Scale`` then returns an invalid result (hold).
* ``knative/serving pkg/reconciler/autoscaling/resources/target.go`` (``ResolveMetricTarget``): for
  ``rps`` the total per pod is the rps target (``requests-per-second-target-default`` 200) and container
  concurrency plays no part; for ``concurrency`` it is containerConcurrency, or the default target
  (100) when that is 0, and an explicit target is capped at containerConcurrency; the target value is
  max(0.01, total x target utilization).
* ``knative/serving config/core/configmaps/autoscaler.yaml`` defaults: stable window 60 s, panic window
  10 %, panic threshold 200 %, target 100 concurrency, target utilization 70 %, max scale-up rate
  1000, max scale-down rate 2, target burst capacity 211, scale-to-zero grace 30 s; the multiscaler
  ticks every 2 s (``pkg/autoscaler/scaling/multiscaler.go``).

Adaptation: Knative scrapes every second independently of its 2 s tick; we only observe when called,
so seconds between two calls are filled with the newer observation (sample-and-hold) rather than
left empty (which would halve the averages at a 2 s call interval). A call whose scrape fails (no
fresh sample) fills nothing, and the next successful one fills only the seconds after it, so a
scrape outage leaves the gap Knative would see. Concurrency per pod is
``running + waiting`` (what queue-proxy counts). Stale samples are not scraped (excluded), and the
explanation says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from pydantic import Field

from xds_control.core.model import Decision, ServiceSignals
from xds_control.loadindex import compute_load
from xds_control.policies.common import Notes, fmt
from xds_control.policies.specs import PolicySpecBase

__all__ = ["KpaSpec", "KpaState", "decide", "total_and_target", "window_average"]


class KpaSpec(PolicySpecBase):
    """Knative Pod Autoscaler with upstream defaults."""

    policy: Literal["kpa"] = "kpa"
    metric: Literal["concurrency", "rps"] = Field(
        "concurrency", description="Scaling metric: in-flight requests per pod, or requests/s. Default concurrency."
    )
    target: float | None = Field(
        None, gt=0.0, le=1e6,
        description="Per-pod target (the autoscaling.knative.dev/target annotation). Null: the configmap default, "
        "container-concurrency-target-default 100 for concurrency (or container_concurrency when > 0), "
        "requests-per-second-target-default 200 for rps. Default null.",
    )
    target_utilization: float = Field(
        0.7, gt=0.0, le=1.0, description="Fraction of target aimed for (container-concurrency-target-percentage 70)."
    )
    container_concurrency: int = Field(
        0, ge=0, le=100_000,
        description="Hard per-pod concurrency limit; 0 = unlimited. Caps the concurrency target; ignored for rps "
        "(ResolveMetricTarget). Default 0.",
    )
    stable_window_s: float = Field(60.0, ge=6.0, le=3600.0, description="Stable window, seconds. Default 60 s.")
    panic_window_percentage: float = Field(
        10.0, ge=1.0, le=100.0, description="Panic window as % of the stable window. Default 10 (= 6 s)."
    )
    panic_threshold_percentage: float = Field(
        200.0, ge=110.0, le=1000.0, description="Panic when desired panic pods / ready >= this %. Default 200."
    )
    max_scale_up_rate: float = Field(1000.0, gt=1.0, le=1e6, description="Max ratio up per tick. Default 1000.")
    max_scale_down_rate: float = Field(2.0, gt=1.0, le=1e6, description="Max ratio down per tick. Default 2.")
    target_burst_capacity: float = Field(
        211.0, ge=-1.0, le=1e6, description="TBC for excess-burst-capacity reporting; -1 = unlimited. Default 211."
    )
    scale_down_delay_s: float = Field(
        0.0, ge=0.0, le=3600.0, description="Hold scale-downs for this long (max over window). Default 0."
    )
    activation_scale: int = Field(1, ge=1, le=100_000, description="Minimum pods once active. Default 1.")
    scale_to_zero_grace_s: float = Field(
        30.0, ge=0.0, le=3600.0, description="Desired 0 must persist this long before scaling to zero. Default 30 s."
    )
    tick_interval_s: float = Field(2.0, gt=0.0, le=60.0, description="Decider tick, seconds. Knative: 2 s.")


@dataclass(frozen=True, slots=True)
class KpaState:
    #: Per-second buckets (second index, revision total) covering at most the stable window.
    buckets: tuple[tuple[int, float], ...] = ()
    #: First write of the current data series (second index), for partial-window averages.
    first_sec: int | None = None
    panic_time: float | None = None
    max_panic_pods: int = 0
    #: (time, desired) for the scale-down delay window.
    delay: tuple[tuple[float, int], ...] = ()
    next_tick_at: float | None = None
    zero_since: float | None = None
    initialized: bool = False
    #: Last second a scrape was attempted (successful or not); the next success fills only later seconds.
    scraped_through: int | None = None


def total_and_target(spec: KpaSpec) -> tuple[float, float]:
    """(total value per pod, target value per pod): target.go ``ResolveMetricTarget``."""
    if spec.metric == "rps":
        # RPS: total = the rps target (annotation, else requests-per-second-target-default 200); no cc.
        total = spec.target if spec.target is not None else 200.0
    else:
        # Without a target: containerConcurrency, or "if containerConcurrency is 0 we'll always target the
        # default" (100). An explicit target is capped at containerConcurrency (when that is set).
        cc = float(spec.container_concurrency)
        explicit = spec.target if spec.target is not None else (cc if cc > 0 else 100.0)
        total = min(explicit, cc) if cc > 0 else explicit
    return total, max(0.01, total * spec.target_utilization)  # autoscaling.TargetMin = 0.01


def window_average(buckets: tuple[tuple[int, float], ...], first_sec: int | None, now_sec: int, window: float) -> float:
    """bucketing.go ``TimedFloat64Buckets.WindowAverage`` of a ``window``-second bucket set at ``now_sec``.

    ``buckets`` are the written seconds (ascending; unwritten seconds are absent), ``first_sec`` the
    first write of the series. NaN when nothing was ever written.

    * the window's own first write is reset after a gap of >= ``window`` seconds (``Record``);
    * last write at ``now_sec``: sum of the window / min(last - first + 1, window);
    * last write ``d`` seconds ago, ``0 < d < window``: sum of the buckets still in the window /
      min(last - first + 1, window - d) -- the trailing empty seconds are not counted;
    * ``d >= window``: 0.
    """
    if first_sec is None or not buckets:
        return math.nan
    n_b = max(1, math.ceil(window - 1e-9))  # NewTimedFloat64Buckets: ceil(window / granularity) buckets
    first = first_sec
    prev: int | None = None
    for s, _ in buckets:
        if prev is not None and s - prev >= n_b:
            first = s  # Record: no writes for a whole window -> firstWrite = this bucket
        prev = s
    first = max(first, first_sec)
    last = buckets[-1][0]
    d = now_sec - last
    if d >= n_b:
        return 0.0  # "Nothing for more than a window time, just 0."
    lo = now_sec - n_b + 1
    total = sum(v for s, v in buckets if lo <= s <= now_sec)
    n_valid = min(last - first + 1, n_b - max(0, d))
    return round(total / max(1, n_valid), 6)  # roundToNDigits(precision = 6)


def decide(signals: ServiceSignals, state: KpaState | None, spec: KpaSpec, now: float) -> tuple[Decision, KpaState]:
    frame = signals.frame
    notes = Notes()
    current = signals.current_replicas
    ready_orig = signals.ready_count
    rep = compute_load(frame, spec.load_index, now)

    if state is None or not state.initialized:
        # newAutoscaler: start in panic when more than one pod is ready (metric history is lost on restart)
        state = KpaState(
            panic_time=now if ready_orig > 1 else None, max_panic_pods=ready_orig, initialized=True,
        )
        if ready_orig > 1:
            notes.add("initial_panic", f"new autoscaler with {ready_orig} ready pods starts in panic")

    # ---- record this observation (collector / scraper) ----
    fresh = frame.ready & ~rep.stale
    col = frame.in_flight if spec.metric == "concurrency" else frame.rps
    vals = col[fresh]
    vals = vals[~np.isnan(vals)]
    n_stale = int(np.count_nonzero(frame.ready & rep.stale))
    if n_stale:
        notes.add("stale_not_scraped", f"{n_stale} ready pods with stale/no samples not scraped",
                  "staleness", float(n_stale))
    if vals.size:
        observed = float(vals.mean()) * ready_orig
    elif ready_orig == 0 and signals.request_rate is not None:
        observed = float(signals.request_rate)  # activator-reported load while at zero
    else:
        observed = math.nan
    now_sec = int(math.floor(now))
    n_stable = max(1, math.ceil(spec.stable_window_s - 1e-9))
    buckets, first_sec = state.buckets, state.first_sec
    if not math.isnan(observed):
        last_sec = buckets[-1][0] if buckets else None
        if last_sec is not None and now_sec - last_sec >= n_stable:
            # bucketing.go Record: "no writes for the duration of `window`" -> reset firstWrite and the buckets.
            buckets, first_sec, start = (), None, now_sec
        else:
            # Fill the seconds since the last scrape attempt (sample-and-hold), not those of a failed scrape.
            scraped = state.scraped_through
            start = now_sec if scraped is None else min(scraped + 1, now_sec)
            start = max(start, now_sec - n_stable + 1)
        kept = tuple(b for b in buckets if b[0] < start and b[0] > now_sec - n_stable)
        buckets = kept + tuple((s, observed) for s in range(start, now_sec + 1))
        first_sec = first_sec if first_sec is not None else start
    state = replace(state, buckets=buckets, first_sec=first_sec, initialized=True,
                    scraped_through=now_sec if state.scraped_through is None else max(state.scraped_through, now_sec))

    def out(target: int, st: KpaState, mode: str, head: str) -> tuple[Decision, KpaState]:
        return (
            Decision(
                policy="kpa", service=signals.service, now=now, current_replicas=current, target_replicas=target,
                explanation=notes.explanation(head), reasons=tuple(notes.reasons), mode=mode,
                load_index=None if math.isnan(rep.service) else rep.service,
                stale=rep.stale_keys(frame.keys, limit=100, raw=True, within=frame.ready), load=rep,
            ),
            st,
        )

    if state.next_tick_at is not None and now < state.next_tick_at:
        notes.add("between_ticks", f"next tick in {fmt(state.next_tick_at - now, 1)}s")
        return out(current, state, "panic" if state.panic_time is not None else "hold", f"KPA {current}->{current}")
    next_tick = now + spec.tick_interval_s if state.next_tick_at is None else max(
        state.next_tick_at + spec.tick_interval_s, now
    )
    state = replace(state, next_tick_at=next_tick)

    panic_window = spec.stable_window_s * spec.panic_window_percentage / 100.0
    # collector.go StableAndPanic*: ErrNoData when the stable buckets saw no write within the stable window
    # (bucketing.go IsEmpty: now - lastWrite > window); Scale then returns invalidSR and nothing changes.
    if not buckets or now_sec - buckets[-1][0] > n_stable:
        notes.add("no_data", "no data to scale on yet" if not buckets else
                  f"no data in the last {fmt(spec.stable_window_s, 0)}s")
        return out(current, state, "hold", f"KPA {current}->{current}")
    stable_val = window_average(buckets, first_sec, now_sec, spec.stable_window_s)
    panic_val = window_average(buckets, first_sec, now_sec, panic_window)
    if buckets[-1][0] < now_sec:
        notes.add("data_gap", f"no fresh data for {now_sec - buckets[-1][0]}s: window averages over the "
                  "seconds covered (bucketing.go WindowAverage)", "gap_s", float(now_sec - buckets[-1][0]))

    total_value, target_value = total_and_target(spec)
    ready = max(1.0, float(ready_orig))
    max_up = math.ceil(spec.max_scale_up_rate * ready)
    max_down = math.floor(ready / spec.max_scale_down_rate)
    dspc = math.ceil(stable_val / target_value)
    dppc = math.ceil(panic_val / target_value)
    desired_stable = int(min(max(dspc, max_down), max_up))
    desired_panic = int(min(max(dppc, max_down), max_up))
    if spec.activation_scale > 1:
        if dspc > 0 and spec.activation_scale > desired_stable:
            desired_stable = spec.activation_scale
        if dppc > 0 and spec.activation_scale > desired_panic:
            desired_panic = spec.activation_scale
    notes.add(
        "observed",
        f"{spec.metric} stable {fmt(stable_val)} / panic {fmt(panic_val)} vs {fmt(target_value)} per pod -> "
        f"stable {desired_stable}, panic {desired_panic} ({ready_orig} ready)",
        spec.metric, stable_val, target_value,
    )

    threshold = spec.panic_threshold_percentage / 100.0
    over = dppc / ready >= threshold
    panic_time, max_panic = state.panic_time, state.max_panic_pods
    if panic_time is None and over:
        panic_time = now
        notes.add("panic_enter", f"panic: {dppc}/{int(ready)} >= {fmt(threshold)}", "panic", dppc / ready, threshold)
    elif over:
        panic_time = now
    elif panic_time is not None and panic_time + spec.stable_window_s < now:
        panic_time, max_panic = None, 0
        notes.add("panic_exit", "un-panicking after a stable window under threshold")

    desired = desired_stable
    mode = "stable"
    if panic_time is not None:
        mode = "panic"
        desired = max(desired, desired_panic)
        if desired > max_panic:
            max_panic = desired
        elif desired < max_panic:
            notes.add("panic_hold", f"in panic: skipping decrease {max_panic}->{desired}")
        desired = max_panic

    delay = state.delay
    if spec.scale_down_delay_s > 0:
        delay = tuple(d for d in delay if d[0] > now - spec.scale_down_delay_s) + ((now, desired),)
        delayed = max(d for _, d in delay)
        if delayed != desired:
            notes.add("scale_down_delay", f"delaying scale to {desired}, staying at {delayed}")
            desired = delayed

    if spec.target_burst_capacity == 0:
        ebc = 0.0
    elif spec.target_burst_capacity > 0:
        ebc = math.floor(ready_orig * total_value - spec.target_burst_capacity - panic_val)
    else:
        ebc = -1.0
    notes.add("excess_burst_capacity", f"EBC {ebc:.0f}", "ebc", ebc)

    # PodAutoscaler bounds (min/max scale) and scale-to-zero grace.
    target = min(max(desired, spec.min_replicas), spec.max_replicas)
    zero_since = state.zero_since
    if target == 0:
        zero_since = now if zero_since is None else zero_since
        if current > 0 and now - zero_since < spec.scale_to_zero_grace_s:
            target = max(1, min(current, spec.max_replicas))
            notes.add("zero_grace", f"scale-to-zero grace {fmt(spec.scale_to_zero_grace_s, 0)}s")
    else:
        zero_since = None
    if target != desired:
        notes.add("bounds", f"bounded {desired}->{target} by [{spec.min_replicas}, {spec.max_replicas}]")
    new_state = replace(state, panic_time=panic_time, max_panic_pods=max_panic, delay=delay, zero_since=zero_since)
    return out(target, new_state, mode, f"KPA {current}->{target} ({mode})")
