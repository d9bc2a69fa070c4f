"""From a decision and the fleet to a plan: replicas, endpoint weights, localities, outlier detection.

Contract:

* :func:`plan_service` is pure: ``(decision, signals, table, spec, now, acked_through) ->
  ServicePlanResult``. Keep ``result.table`` and pass it back next tick; ``None`` adopts the current
  fleet (ready endpoints SERVING).
* Invariants (property-tested): integer weights >= 1 on every endpoint in rotation and 0 elsewhere;
  weight only on ready RAMPING/SERVING endpoints; serving weights sum to ``weight_scale`` x their
  count before ramp scaling and the final weights sum to the rounded real total (largest remainder);
  no weight above ``floor(hotspot_cap x weight_scale)``; an endpoint is only reported removable after
  it drained (see :mod:`xds_control.planning.coordination`).
* :func:`apply_to_pool` maps a result onto an existing :class:`~xds_control.core.traffic.PoolPlan`
  with ``dataclasses.replace`` (endpoints in rotation HEALTHY with their weight, draining ones
  DRAINING with weight 1 since Envoy rejects 0, others left out).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

import numpy as np

from xds_control.core.model import Decision, ServiceSignals
from xds_control.core.model import EndpointPhase as P
from xds_control.core.traffic import (
    EndpointPlan,
    HealthStatus,
    Locality,
    OutlierDetectionPlan,
    PoolPlan,
    ShedPlan,
)
from xds_control.planning.coordination import _P, CoordinationTable, Transition, advance, ramp_fraction, select_drains
from xds_control.planning.weights import capped_allocation, headroom, largest_remainder
from xds_control.policies.specs import OutlierSpec, TrafficSpec

__all__ = [
    "ServicePlanResult",
    "plan_service",
    "endpoint_weights",
    "locality_plan",
    "outlier_plan",
    "apply_to_pool",
]


@dataclass(frozen=True, eq=False, slots=True)
class ServicePlanResult:
    service: str
    now: float
    #: Replicas the service should have (the decision's target).
    target_replicas: int
    #: What to set on the scaler (Deployment spec.replicas): target + endpoints still draining, so the
    #: scaler never kills an undrained pod. Delete the ``removable`` ones explicitly.
    scaler_replicas: int
    keys: tuple[str, ...]
    #: Per-endpoint EndpointPhase after this step.
    phase: np.ndarray
    #: Per-endpoint integer weight; 0 = not in rotation.
    weight: np.ndarray
    #: Per-endpoint index into ``localities`` (locality keys).
    locality_index: np.ndarray
    localities: tuple[str, ...]
    locality_weights: tuple[tuple[str, int], ...] | None
    locality_priorities: tuple[tuple[str, int], ...] | None
    outlier: OutlierDetectionPlan | None
    #: Prefill-backlog shedding (``TrafficSpec.shed_prefill_backlog_s``), or None.
    shed: ShedPlan | None
    slow_start_window_s: float | None
    slow_start_aggression: float
    slow_start_min_weight_percent: float
    transitions: tuple[Transition, ...]
    removable: tuple[str, ...]
    table: CoordinationTable
    explanation: str

    @property
    def in_eds(self) -> np.ndarray:
        out: np.ndarray = (self.phase == _P.RAMPING) | (self.phase == _P.SERVING) | (self.phase == _P.DRAINING)
        return out


def endpoint_weights(
    phase: np.ndarray,
    ready: np.ndarray,
    load: np.ndarray | None,
    ramp_elapsed: np.ndarray,
    spec: TrafficSpec,
) -> np.ndarray:
    """Integer weights for ready RAMPING/SERVING endpoints (0 elsewhere).

    Full weights: ``weight_scale`` each (equal) or headroom-proportional with the hotspot cap
    (capped allocation of ``weight_scale x n``); ramping endpoints are scaled by their ramp fraction;
    largest-remainder rounding keeps the total and the cap.
    """
    n = phase.size
    out = np.zeros(n, dtype=np.int64)
    rot = ready & ((phase == _P.RAMPING) | (phase == _P.SERVING))
    idx = np.flatnonzero(rot)
    m = idx.size
    if m == 0:
        return out
    scale = spec.weight_scale
    hi = math.floor(spec.hotspot_cap * scale)
    if spec.weighting == "headroom" and load is not None:
        h = headroom(load[idx], spec.saturation, spec.headroom_floor)
        full = capped_allocation(h, float(scale * m), 1.0, float(hi))
    else:
        full = np.full(m, float(scale))
    ramping = phase[idx] == _P.RAMPING
    if ramping.any():
        frac = ramp_fraction(ramp_elapsed[idx], spec)
        full = np.where(ramping, full * frac, full)
        full = np.maximum(full, 1.0)
    total = int(round(float(full.sum())))
    out[idx] = np.maximum(largest_remainder(full, total), 1)
    return out


def locality_plan(
    frame_locality: np.ndarray,
    localities: tuple[str, ...],
    weight: np.ndarray,
    locality_load: Mapping[str, float],
    spec: TrafficSpec,
) -> tuple[tuple[tuple[str, int], ...] | None, tuple[tuple[str, int], ...] | None]:
    """Locality weights (sum of endpoint weights in rotation, i.e. headroom) and spill priorities.

    Weights are only emitted for headroom weighting with more than one locality in rotation. With
    ``local_locality`` set, priority 0 holds the local locality plus, while each added one is
    saturated (mean L >= spill_threshold, or no ready endpoints), the next in spill order; the rest
    get priorities 1, 2, ... in order.
    """
    sums = np.bincount(frame_locality, weights=weight, minlength=len(localities))
    present = [(localities[i], int(sums[i])) for i in range(len(localities)) if sums[i] > 0]
    lw = None
    if spec.weighting == "headroom" and len(present) > 1:
        raw = np.array([w for _, w in present], dtype=float)
        total = 100 * len(present)
        ints = np.maximum(largest_remainder(raw * (total / raw.sum()), total), 1)
        lw = tuple((k, int(v)) for (k, _), v in zip(present, ints, strict=True))
    lp = None
    if spec.local_locality is not None:
        names = [k for k in localities]
        order = [spec.local_locality] + [k for k in spec.locality_order if k != spec.local_locality]
        order += sorted(k for k in names if k not in order)
        prio: list[tuple[str, int]] = []
        p = 0
        spilling = True
        for k in order:
            if k not in names and k != spec.local_locality:
                continue
            if p == 0 and spilling:
                prio.append((k, 0))
                spilling = locality_load.get(k, math.inf) >= spec.spill_threshold
                if not spilling:
                    p = 1
                continue
            p = max(p, 1)
            prio.append((k, p))
            p += 1
        lp = tuple(prio)
    return lw, lp


def outlier_plan(spec: OutlierSpec | None, n: int) -> OutlierDetectionPlan | None:
    if spec is None:
        return None
    mep = spec.max_ejection_percent
    if spec.allow_single_ejection and n > 0:
        mep = max(mep, min(100, math.ceil(100 / n)))
    return OutlierDetectionPlan(
        consecutive_5xx=spec.consecutive_5xx,
        interval_s=spec.interval_s,
        base_ejection_time_s=spec.base_ejection_time_s,
        max_ejection_percent=mep,
        success_rate_minimum_hosts=spec.success_rate_minimum_hosts,
        success_rate_request_volume=spec.success_rate_request_volume,
        success_rate_stdev_factor=int(round(spec.success_rate_stdev_factor * 1000)),
        failure_percentage_threshold=spec.failure_percentage_threshold,
        failure_percentage_minimum_hosts=spec.failure_percentage_minimum_hosts,
        failure_percentage_request_volume=spec.failure_percentage_request_volume,
    )


def plan_service(
    decision: Decision,
    signals: ServiceSignals,
    table: CoordinationTable | None,
    spec: TrafficSpec,
    now: float,
    acked_through: float | None = None,
    force_drain: Collection[str] = (),
    follow_drains: Collection[str] | None = None,
    peers_routing: Collection[str] | None = None,
) -> ServicePlanResult:
    """Turn a decision into coordination transitions, weights, localities and outlier settings.

    ``acked_through``: the ``now`` of the newest plan every proxy ACKed (None: none yet).
    ``force_drain``: endpoint keys an operator asked to drain: they drain (and are never undrained) whatever
    the target, and ``scaler_replicas`` counts them as draining so a replacement starts.
    ``follow_drains``: a follower instance's plan: exactly these keys (the leader's draining endpoints, with
    ``force_drain``) drain, every other draining endpoint that is ready is undrained; the decision's target
    chooses nothing. ``peers_routing``: keys other instances' proxies may still send new requests to (None: no
    other instance); a draining endpoint among them is not removable before the drain timeout.
    """
    frame = signals.frame
    keys = frame.keys
    if table is None:
        table = CoordinationTable.adopt(keys, frame.ready, now)
    table, vanished = table.align(keys, now)
    in_flight = frame.in_flight
    if follow_drains is not None:
        follow = set(follow_drains) | set(force_drain)
        forced_all = np.fromiter((k in follow for k in keys), dtype=bool, count=len(keys))
        drain = forced_all & (table.phase <= _P.SERVING)
        undrain = (table.phase == _P.DRAINING) & frame.ready & ~forced_all
    elif force_drain:
        forced_all = np.fromiter((k in force_drain for k in keys), dtype=bool, count=len(keys))
        forced = forced_all & (table.phase <= _P.SERVING)
        live_target = decision.target_replicas + int(np.count_nonzero(forced))
        drain, undrain = select_drains(table, live_target, in_flight, frame.ready)
        drain, undrain = drain | forced, undrain & ~forced_all
    else:
        drain, undrain = select_drains(table, decision.target_replicas, in_flight, frame.ready)
    peers_done = None
    if peers_routing is not None:
        peers_done = np.fromiter((k not in peers_routing for k in keys), dtype=bool, count=len(keys))
    table, transitions = advance(table, frame.ready, in_flight, acked_through, now, spec, drain, undrain,
                                 peers_done)
    load = None
    rep = decision.load
    if rep is not None and getattr(rep, "endpoint", None) is not None and len(rep.endpoint) == len(keys):
        load = rep.endpoint
    phase = table.phase
    elapsed = now - table.acked_at  # NaN until the ramp's ACK is seen
    weight = endpoint_weights(phase, frame.ready, load, elapsed, spec)
    weight.setflags(write=False)
    loc_load = {k: v for k, v, _ in rep.locality} if rep is not None and hasattr(rep, "locality") else {}
    lw, lp = locality_plan(frame.locality, frame.localities, weight, loc_load, spec)
    n_rot = int(np.count_nonzero(weight))
    removable_idx = np.flatnonzero(phase == _P.REMOVABLE)
    removable = tuple(keys[i] for i in removable_idx)
    n_draining = int(np.count_nonzero(phase == _P.DRAINING))
    counts = np.bincount(phase, minlength=6)
    expl = (
        f"{decision.service}: target {decision.target_replicas}; "
        + ", ".join(f"{P(i).name.lower()} {int(c)}" for i, c in enumerate(counts) if c)
        + f"; {len(transitions)} transitions"
        + (f"; {len(vanished)} endpoints vanished" if vanished else "")
        + f"; weights {spec.weighting} over {n_rot} endpoints"
    )
    return ServicePlanResult(
        service=decision.service,
        now=now,
        target_replicas=decision.target_replicas,
        scaler_replicas=decision.target_replicas + n_draining,
        keys=keys,
        phase=phase,
        weight=weight,
        locality_index=frame.locality,
        localities=frame.localities,
        locality_weights=lw,
        locality_priorities=lp,
        outlier=outlier_plan(spec.outlier, n_rot),
        shed=spec.shed_plan(),
        slow_start_window_s=spec.envoy_slow_start_window_s,
        slow_start_aggression=spec.ramp_aggression,
        slow_start_min_weight_percent=100.0 * spec.ramp_min_fraction,
        transitions=transitions,
        removable=removable,
        table=table,
        explanation=expl,
    )


def _locality_from_key(key: str) -> Locality:
    parts = (key.split("/") + ["", "", ""])[:3]
    return Locality(*parts)


def apply_to_pool(pool: PoolPlan, result: ServicePlanResult) -> PoolPlan:
    """Return ``pool`` with endpoints, weights, health, localities, outlier, shedding and slow start from ``result``.

    Endpoints already in ``pool`` keep their address, port and locality; endpoints new to the pool are
    built from their ``address:port`` key and locality key. Endpoints not in EDS (pending, warming,
    removable) are left out; draining ones are DRAINING with weight 1.
    """
    inventory = {e.key: e for e in pool.endpoints}
    loc_cache = [_locality_from_key(k) for k in result.localities]
    healthy, draining_h = HealthStatus.HEALTHY, HealthStatus.DRAINING
    keys = result.keys
    phase, weight, loc_idx = result.phase.tolist(), result.weight.tolist(), result.locality_index.tolist()
    draining_code = int(_P.DRAINING)
    eps = []
    for i in np.flatnonzero(result.in_eds).tolist():
        key = keys[i]
        if phase[i] == draining_code:
            w, health = 1, draining_h
        else:
            w, health = weight[i], healthy
            if w < 1:  # not ready: keep out of rotation
                continue
        base = inventory.get(key)
        if base is None:
            addr, _, port = key.rpartition(":")
            eps.append(EndpointPlan(addr, int(port), loc_cache[loc_idx[i]], w, health))
        elif base.weight == w and base.health is health:
            eps.append(base)  # unchanged: reuse (frozen dataclass construction dominates at 10k endpoints)
        else:
            eps.append(EndpointPlan(base.address, base.port, base.locality, w, health))
    out = replace(
        pool,
        endpoints=tuple(eps),
        locality_weights=result.locality_weights,
        locality_priorities=result.locality_priorities,
        outlier_detection=result.outlier if result.outlier is not None else pool.outlier_detection,
        shed=result.shed,
    )
    if result.slow_start_window_s is not None:  # Envoy does the ramp: same shape as planning's own
        out = replace(
            out,
            slow_start_window_s=result.slow_start_window_s,
            slow_start_aggression=result.slow_start_aggression,
            slow_start_min_weight_percent=result.slow_start_min_weight_percent,
        )
    return out
