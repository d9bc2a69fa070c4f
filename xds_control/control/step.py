"""The control step: what one tick observes in, every action it takes out. Pure.

``control_step(obs, state, spec) -> StepResult`` is the whole controller. Two worlds drive it:

* the live runtime (:mod:`xds_control.runtime.loop`) builds an :class:`Observation` from the scaler's replica
  list, the signal source's report, Envoy's request rates and ACK progress, the operator's overrides and the
  leader lease, calls this function, and carries the actions out (start/stop processes or pods, publish the
  plan, log, emit events);
* the simulator (:mod:`xds_control.sim.adapter`) builds the same :class:`Observation` from the simulated fleet
  and applies the same actions to it.

If the two worlds behave differently for the same observations, that is a bug in one of the adapters.

Contract (what a caller may rely on):

* nothing here reads a clock, does I/O or mutates an input; ``obs.now`` is the only time;
* the policy state and the coordination table come in through ``state`` and go out in
  :attr:`StepResult.state`; pass that back next tick (``ControlState()`` starts fresh);
* a crashed replica (FAILED) is reaped and still counted until its replacement starts (as a ReplicaSet does);
* replicas being drained (phase DRAINING or REMOVABLE) are already decided away: they count neither in the
  policy's ``current_replicas`` nor in its ready set, or it would hold them back into service next tick;
* a pool whose signals are lost (the source failed, or no ready replica has a good reading) holds its replica
  count (only the spec's bounds still apply), its policy state and its published weights until they return;
* a paused pool, and every pool on a follower (not the leader), holds its count; a follower never starts or
  stops replicas, but it plans the same endpoints, ramps and drains, so every instance serves the same plan;
* weight moves onto a new endpoint only once it is ready and every proxy ACKed a plan containing it
  (``obs.acked_through``), and a replica is stopped only once planning reports it removable (drained and
  ACKed, in-flight 0, or the drain timeout passed) -- both inherited from :mod:`xds_control.planning`;
* until every replica that existed or was asked for at start is ready (or ``initial_hold_s`` passed since the
  first tick), nothing is decided or published: a restarted control plane never pushes a smaller plan than the
  proxies hold;
* with several control-plane instances (Kubernetes, leader election) a follower drains exactly the endpoints
  the leader shares as draining (``obs.leader_drains``; it undrains the rest) instead of choosing its own, and
  the leader removes a drained endpoint only once no other instance's proxies may still send to it
  (``obs.peers_routing``) and its in-flight count is 0, or the drain timeout passed; every step reports what
  it drains and what its proxies may still send to (:attr:`PoolActions.draining`, :attr:`PoolActions.routing`);
* shadow policies (:attr:`PoolSpec.shadows`) decide every step on exactly the policy signals the real policy saw,
  each with its own state (:class:`ShadowState`), and only report (:attr:`PoolActions.shadows`): they never change
  the plan, the starts or the stops. While the pool's signals are lost they hold like the real policy (their state
  is kept, not fed stale data); pause and follower holds do not apply to them (they show what they would decide).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Any

import numpy as np

from xds_control.control.operator import apply_overrides
from xds_control.core.model import Decision, EndpointPhase, EndpointSample, ServiceSignals, SignalFrame
from xds_control.core.traffic import HealthStatus, Locality, PoolPlan, TrafficPlan
from xds_control.loadindex import compute_load
from xds_control.planning import CoordinationTable, ServicePlanResult, apply_to_pool, plan_service
from xds_control.policies import PolicySpec, decide

__all__ = [
    "ReplicaStatus",
    "ReplicaObs",
    "PoolObs",
    "Observation",
    "PoolSpec",
    "ControlSpec",
    "PoolState",
    "ShadowState",
    "ControlState",
    "PoolActions",
    "Event",
    "StepResult",
    "control_step",
]

_LEAVING = (int(EndpointPhase.DRAINING), int(EndpointPhase.REMOVABLE))


class ReplicaStatus(str, Enum):
    """A replica as the world reports it (replicas being stopped are not reported at all)."""

    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ReplicaObs:
    """One replica of a pool: its stable id, its endpoint key (``host:port``) and status."""

    id: str
    key: str
    status: ReplicaStatus
    #: Zone the replica runs in ("" when unknown); becomes its Envoy locality.
    zone: str = ""
    #: Why it failed (FAILED only).
    reason: str = ""


@dataclass(frozen=True)
class PoolObs:
    """What one tick saw of one autoscaled pool."""

    pool: str
    #: Live replicas in a stable order (the actuator's), failed ones included until reaped.
    replicas: tuple[ReplicaObs, ...] = ()
    #: Replicas asked for that have no endpoint yet (Kubernetes pods being scheduled).
    pending: int = 0
    #: Per ready replica key: its sample, or None when the read failed or was stale (never zeros).
    samples: Mapping[str, EndpointSample | None] = field(default_factory=dict)
    #: The whole source failed (e.g. Prometheus unreachable): the pool's signals are lost.
    source_error: str | None = None
    #: The first per-endpoint read error, for the explanation when every reading failed.
    reading_error: str | None = None
    #: Gateway arrival rate for the pool, requests/s (Envoy's statistics), None when unknown.
    request_rate: float | None = None


@dataclass(frozen=True)
class Observation:
    """Everything one tick observes."""

    now: float
    pools: Mapping[str, PoolObs]
    #: The ``now`` of the newest plan every connected proxy ACKed (None: none yet).
    acked_through: float | None = None
    #: Only the leader changes replica counts (leader election); a single instance always is.
    is_leader: bool = True
    #: Pools an operator paused.
    paused: frozenset[str] = frozenset()
    #: Operator weight pins: (pool, key) -> weight while the endpoint is in rotation.
    pins: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: Operator drains: (pool, key) pairs.
    drains: frozenset[tuple[str, str]] = frozenset()
    #: Several control-plane instances: by pool, the endpoint keys the leader drains, as it shared them (a
    #: follower drains exactly these and undrains the rest). None: none known (one instance, or not read yet).
    leader_drains: Mapping[str, frozenset[str]] | None = None
    #: Several instances, on the leader: by pool, the keys other instances' proxies may still send new requests
    #: to (their :attr:`PoolActions.routing`); a drained endpoint among them is not removable before the drain
    #: timeout. None: no other instance.
    peers_routing: Mapping[str, frozenset[str]] | None = None


@dataclass(frozen=True)
class PoolSpec:
    """One autoscaled pool, resolved from the config (and the operator's policy, when one was set)."""

    service: str
    pool: str
    policy: PolicySpec
    #: Zones new replicas are spread over, round robin ("" = unspecified).
    zones: tuple[str, ...] = ()
    #: Shadow policies, (name, spec) in config order: they decide on the same signals, never actuate.
    shadows: tuple[tuple[str, PolicySpec], ...] = ()


@dataclass(frozen=True)
class ControlSpec:
    """The configuration a step works against: the autoscaled pools and the static rest of the plan."""

    pools: tuple[PoolSpec, ...]
    #: The plan of the config (static pools as configured; autoscaled pools without endpoints).
    base_plan: TrafficPlan
    #: Longest wait for the fleet present at start to become ready before the first publish.
    initial_hold_s: float = 120.0

    def pool(self, name: str) -> PoolSpec | None:
        return next((p for p in self.pools if p.pool == name), None)


@dataclass(frozen=True)
class ShadowState:
    """What one shadow policy of a pool carries from one step to the next.

    ``would_replica_seconds`` integrates the shadow's target over time and ``actual_replica_seconds`` the pool's
    current replicas (the real policy's ``current_replicas``) over the same steps: each step adds the previous
    step's value times the ``now`` difference (the first step adds nothing). The shadow's integral assumes its
    target were in place at once (no cold start), so it is what its decisions would have cost at best.
    """

    #: Name of the policy ``policy_state`` belongs to (a different policy starts fresh).
    policy: str | None = None
    policy_state: Any = None
    last_decision: Decision | None = None
    #: ``now`` of the previous step this shadow ran in (None before the first).
    last_at: float | None = None
    would_replica_seconds: float = 0.0
    actual_replica_seconds: float = 0.0


_NO_SHADOWS: Mapping[str, ShadowState] = MappingProxyType({})


@dataclass(frozen=True)
class PoolState:
    """What one pool carries from one tick to the next."""

    #: Name of the policy ``policy_state`` belongs to (a different policy starts fresh).
    policy: str | None = None
    policy_state: Any = None
    table: CoordinationTable | None = None
    #: Replicas started so far (spreads new ones over the zones).
    started: int = 0
    last_decision: Decision | None = None
    #: Why the pool's signals are lost, while they are.
    signals_lost: str | None = None
    #: Shadow name -> its state (read-only mapping, in the spec's order).
    shadows: Mapping[str, ShadowState] = field(default_factory=lambda: _NO_SHADOWS)


@dataclass(frozen=True)
class ControlState:
    pools: Mapping[str, PoolState] = field(default_factory=dict)
    #: The plan of the previous step (None before the first publish).
    last_plan: TrafficPlan | None = None
    #: Still waiting for the fleet present at start (see the module docstring).
    holding: bool = True
    #: ``now`` of the first step (for ``initial_hold_s``).
    first_at: float | None = None


@dataclass(frozen=True)
class Event:
    """Something an operator may want to see (decisions, lost/restored signals)."""

    kind: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolActions:
    """Every action for one pool."""

    service: str
    pool: str
    decision: Decision
    plan: ServicePlanResult
    #: Start one replica per entry, in that zone ("" = any).
    start: tuple[str, ...] = ()
    #: Replica ids to stop: drained and removable.
    stop: tuple[str, ...] = ()
    #: Replica ids that failed: acknowledge (stop) them; they are replaced through ``start``.
    reap: tuple[str, ...] = ()
    #: Why the pool's signals are lost (None when they are not).
    signals_lost: str | None = None
    #: The frame the pool was planned on (all live replicas), for views.
    frame: SignalFrame | None = None
    #: What each shadow policy decided on this step's signals, (name, decision) in the spec's order.
    shadows: tuple[tuple[str, Decision], ...] = ()
    #: Keys this step's plan drains (DRAINING or REMOVABLE): what a leader shares with the other instances.
    draining: frozenset[str] = frozenset()
    #: Keys this instance's proxies may still send new requests to: every live endpoint but the drained ones
    #: whose drain the proxies ACKed. Every instance shares it, so the leader knows when a drain is done everywhere.
    routing: frozenset[str] = frozenset()


@dataclass(frozen=True)
class StepResult:
    state: ControlState
    pools: tuple[PoolActions, ...] = ()
    #: The plan to serve (operator overrides applied); None while holding.
    plan: TrafficPlan | None = None
    #: ``plan`` differs from the previous step's: publish it.
    changed: bool = False
    events: tuple[Event, ...] = ()
    #: Why nothing was decided (holding), else "".
    held: str = ""


def control_step(obs: Observation, state: ControlState, spec: ControlSpec) -> StepResult:
    """One tick of the controller. See the module docstring for the contract."""
    now = obs.now
    first_at = state.first_at if state.first_at is not None else now
    events: list[Event] = []
    if state.holding:
        waiting = _unsettled(obs, spec)
        if waiting and now - first_at < spec.initial_hold_s:
            return StepResult(replace(state, first_at=first_at), held=waiting)
        if waiting:
            events.append(Event("hold_expired", {"after_s": now - first_at}))
    pools_out: list[PoolActions] = []
    new_pools: dict[str, PoolState] = {}
    planned: dict[str, PoolPlan] = {}
    for ps in spec.pools:
        po = obs.pools.get(ps.pool, PoolObs(ps.pool))
        st = state.pools.get(ps.pool, PoolState())
        act, st2, evs = _pool_step(ps, po, st, obs)
        events.extend(evs)
        new_pools[ps.pool] = st2
        pools_out.append(act)
        base = spec.base_plan.pool(ps.pool)
        if base is not None:
            pool_plan = apply_to_pool(base, act.plan)
            prev = state.last_plan.pool(ps.pool) if state.last_plan is not None else None
            if act.signals_lost is not None and prev is not None:
                pool_plan = _keep_weights(pool_plan, prev)
            planned[ps.pool] = pool_plan
    plan = replace(spec.base_plan, pools=tuple(planned.get(p.name, p) for p in spec.base_plan.pools))
    plan = apply_overrides(plan, obs.pins, obs.drains)
    changed = plan != state.last_plan
    new_state = ControlState(pools=new_pools, last_plan=plan, holding=False, first_at=first_at)
    return StepResult(new_state, tuple(pools_out), plan, changed, tuple(events))


def _unsettled(obs: Observation, spec: ControlSpec) -> str:
    """Why the fleet present at start is not settled yet ("" when it is)."""
    for ps in spec.pools:
        po = obs.pools.get(ps.pool)
        if po is None:
            continue
        if po.pending:
            return f"{ps.pool}: {po.pending} replicas asked for, not created yet"
        n = sum(1 for r in po.replicas if r.status is ReplicaStatus.STARTING)
        if n:
            return f"{ps.pool}: {n} replicas starting"
    return ""


def _pool_step(ps: PoolSpec, po: PoolObs, st: PoolState, obs: Observation
               ) -> tuple[PoolActions, PoolState, list[Event]]:
    now = obs.now
    events: list[Event] = []
    failed = tuple(r.id for r in po.replicas if r.status is ReplicaStatus.FAILED)
    live = [r for r in po.replicas if r.status is not ReplicaStatus.FAILED]
    keys = [r.key for r in live]
    ready = {r.key: r.status is ReplicaStatus.READY for r in live}
    locality = {r.key: _zone_locality(r.zone) for r in live}
    leaving: set[str] = set()
    if st.table is not None and len(st.table.keys):
        gone = (st.table.phase == _LEAVING[0]) | (st.table.phase == _LEAVING[1])
        if gone.any():
            live_keys = set(keys)
            leaving = {k for k, g in zip(st.table.keys, gone.tolist(), strict=True) if g and k in live_keys}

    # Signals: lost when the source failed or no ready replica has a good reading.
    ready_keys = [k for k in keys if ready[k]]
    lost: str | None = None
    if po.source_error is not None:
        lost = po.source_error[:300]
    elif ready_keys and not any(po.samples.get(k) is not None for k in ready_keys):
        lost = (po.reading_error or "every reading stale")[:300]
    if lost is not None and st.signals_lost is None:
        events.append(Event("signals_lost", {"pool": ps.pool, "reason": lost}))
    elif lost is None and st.signals_lost is not None:
        events.append(Event("signals_restored", {"pool": ps.pool}))

    # The policy sees the ready replicas that are not leaving; planning sees every live replica.
    full = SignalFrame.from_samples({k: po.samples.get(k) for k in keys}, ready=ready, locality=locality)
    policy_keys = [k for k in ready_keys if k not in leaving]
    if len(policy_keys) == len(keys):
        pframe = full
    else:
        keep = set(policy_keys)
        pframe = full.take([i for i, k in enumerate(keys) if k in keep])
    n_starting = sum(1 for r in live if r.status is ReplicaStatus.STARTING)
    # A crashed replica is still wanted (as a ReplicaSet keeps spec.replicas): it counts, as pending, until
    # its replacement exists; so the policy holds the count and the replacement starts below.
    current = len(live) + len(failed) - len(leaving)
    psig = ServiceSignals(ps.service, pframe, current_replicas=current,
                          pending_replicas=n_starting + po.pending + len(failed), request_rate=po.request_rate)
    lsig = psig if pframe is full else replace(psig, frame=full)

    policy = ps.policy
    pstate = st.policy_state if st.policy == policy.policy else None
    if lost is not None and st.last_decision is not None:
        # Stale data must not feed the policy's windows either: its state is kept as it was.
        decision = replace(st.last_decision, now=now, current_replicas=current, mode="hold", stale=())
        new_pstate = pstate
    else:
        decision, new_pstate = decide(psig, pstate, policy, now)
    if lost is not None:
        target = min(max(current, policy.min_replicas), policy.max_replicas)
        decision = replace(decision, target_replicas=target, explanation=f"signals lost, holding: {lost}")
    if ps.pool in obs.paused:
        decision = replace(decision, target_replicas=decision.current_replicas,
                           explanation="autoscaling paused by an operator; " + decision.explanation)
    elif not obs.is_leader:
        decision = replace(decision, target_replicas=decision.current_replicas,
                           explanation="follower: only the leader decides; " + decision.explanation)
    if decision.direction != "hold":
        events.append(Event("decision", {"service": ps.service, "pool": ps.pool, "policy": decision.policy,
                                         "current": decision.current_replicas, "target": decision.target_replicas,
                                         "explanation": decision.explanation}))
    plan_decision = decision
    li = getattr(policy, "load_index", None)
    if li is not None and lsig is not psig:
        # Planning weighs every live endpoint: the per-endpoint load over its frame.
        plan_decision = replace(decision, load=compute_load(full, li, now))
    drained = frozenset(k for p, k in obs.drains if p == ps.pool)
    follow = None
    if not obs.is_leader and obs.leader_drains is not None:
        follow = obs.leader_drains.get(ps.pool, frozenset())
    peers = None
    if obs.is_leader and obs.peers_routing is not None:
        peers = obs.peers_routing.get(ps.pool, frozenset())
    result = plan_service(plan_decision, lsig, st.table, policy.traffic, now, obs.acked_through,
                          force_drain=drained, follow_drains=follow, peers_routing=peers)
    draining, routing = _shared_view(result.table)

    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    started = st.started
    if obs.is_leader:
        by_key = {r.key: r for r in live}
        stop = tuple(by_key[k].id for k in result.removable if k in by_key)
        missing = result.scaler_replicas - len(live) - po.pending
        zones: list[str] = []
        for _ in range(max(0, missing)):
            zones.append(ps.zones[started % len(ps.zones)] if ps.zones else "")
            started += 1
        start = tuple(zones)
    shadow_out, shadow_states = _shadows(ps, psig, st.shadows, lost, now)
    new_st = PoolState(policy=policy.policy, policy_state=new_pstate, table=result.table, started=started,
                       last_decision=decision, signals_lost=lost, shadows=shadow_states)
    act = PoolActions(ps.service, ps.pool, decision, result, start=start, stop=stop, reap=failed,
                      signals_lost=lost, frame=full, shadows=shadow_out, draining=draining, routing=routing)
    return act, new_st, events


def _shared_view(table: CoordinationTable) -> tuple[frozenset[str], frozenset[str]]:
    """(draining, routing) of :class:`PoolActions` from the coordination table."""
    phase = table.phase
    leaving = (phase == _LEAVING[0]) | (phase == _LEAVING[1])
    done = (phase == _LEAVING[1]) | ((phase == _LEAVING[0]) & ~np.isnan(table.acked_at))
    keys = table.keys
    return (frozenset(k for k, g in zip(keys, leaving.tolist(), strict=True) if g),
            frozenset(k for k, d in zip(keys, done.tolist(), strict=True) if not d))


def _shadows(ps: PoolSpec, psig: ServiceSignals, states: Mapping[str, ShadowState], lost: str | None, now: float
             ) -> tuple[tuple[tuple[str, Decision], ...], Mapping[str, ShadowState]]:
    """Each shadow's decision on the policy signals ``psig`` and its next state (see :class:`ShadowState`)."""
    if not ps.shadows:
        return (), _NO_SHADOWS
    current = psig.current_replicas
    out: list[tuple[str, Decision]] = []
    new: dict[str, ShadowState] = {}
    for name, spec in ps.shadows:
        ss = states.get(name, ShadowState())
        pstate = ss.policy_state if ss.policy == spec.policy else None
        if lost is not None:
            # As the real policy: stale data must not feed the shadow's windows; it holds the count.
            target = min(max(current, spec.min_replicas), spec.max_replicas)
            base = ss.last_decision if ss.last_decision is not None else Decision(
                spec.policy, ps.service, now, current, target, "")
            d = replace(base, now=now, current_replicas=current, target_replicas=target, mode="hold", stale=(),
                        explanation=f"signals lost, holding: {lost}", load=None)
            new_pstate = pstate
        else:
            d, new_pstate = decide(psig, pstate, spec, now)
        would, actual = ss.would_replica_seconds, ss.actual_replica_seconds
        if ss.last_at is not None and ss.last_decision is not None and now > ss.last_at:
            dt = now - ss.last_at
            would += ss.last_decision.target_replicas * dt
            actual += ss.last_decision.current_replicas * dt
        new[name] = ShadowState(policy=spec.policy, policy_state=new_pstate, last_decision=d, last_at=now,
                                would_replica_seconds=would, actual_replica_seconds=actual)
        out.append((name, d))
    return tuple(out), MappingProxyType(new)


@functools.lru_cache(maxsize=256)
def _zone_locality(zone: str) -> str:
    """The Envoy locality key of a replica in ``zone`` (no region or sub-zone)."""
    return Locality(zone=zone).key


def _keep_weights(pool: PoolPlan, prev: PoolPlan) -> PoolPlan:
    """``pool`` with the weights ``prev`` gave the endpoints that were already in rotation there."""
    old = {e.key: e.weight for e in prev.endpoints if e.health is HealthStatus.HEALTHY}
    eps = tuple(replace(e, weight=old[e.key]) if e.health is HealthStatus.HEALTHY and e.key in old
                and e.weight != old[e.key] else e for e in pool.endpoints)
    return replace(pool, endpoints=eps)
