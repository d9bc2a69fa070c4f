"""The live loop: the only place where signals, decisions, plans, pushes and scaling meet.

One :meth:`Controller.tick` (every ``controller.tick_s``, default 1 s) does, for each
autoscaled pool::

    scaler.list() -> signals.read(ready endpoints) -> SignalFrame -> policy.decide
      -> planning.plan_service (coordination: pending -> warming -> ramping -> serving
         -> draining -> removable) -> apply_to_pool
    then: one TrafficPlan -> publisher (snapshot, push) ; scaler: start what is missing,
    stop only what planning reports removable, reap crashed replicas.

Guarantees, inherited from planning and checked here:

* weight moves onto a new endpoint only once it is ready and every connected proxy has
  ACKed the version that contains it (``acked_through`` is the ``now`` of the newest plan
  all proxies ACKed);
* an endpoint is stopped only after planning reports it removable: a version with it
  DRAINING was ACKed everywhere and its in-flight count reached 0 (or the drain timeout
  passed);
* a failed or stale signal read counts as saturated in the load index (never as idle),
  so it cannot cause a scale-down or zero a weight.

Time is ``clock()`` (monotonic seconds), passed into the pure core as ``now``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from xds_control.control.operator import OperatorState
from xds_control.config import Config, to_traffic_plan
from xds_control.config.policy import resolve_policy
from xds_control.config.schema import PoolConfig, ReplicaTemplateConfig
from xds_control.core.model import Decision, EndpointPhase, ServiceSignals, SignalFrame
from xds_control.core.traffic import HealthStatus, Locality, TrafficPlan
from xds_control.planning import CoordinationTable, ServicePlanResult, apply_to_pool, plan_service
from xds_control.policies import PolicySpec, decide
from xds_control.actuators.base import ReplicaInfo, ReplicaOptions, ReplicaState, Scaler
from xds_control.signals.base import SignalReport, SignalSource
from xds_control.xds.publisher import Publisher
from xds_control.xds.status import SyncTracker

log = logging.getLogger(__name__)


@dataclass
class PoolRuntime:
    """What the controller keeps per autoscaled pool between ticks (state values are immutable)."""

    service: str
    pool: str
    spec: PolicySpec
    template: ReplicaTemplateConfig
    state: Any = None
    table: CoordinationTable | None = None
    zone_of: dict[str, str] = field(default_factory=dict)
    started: int = 0
    paused: bool = False
    last_decision: Decision | None = None
    last_result: ServicePlanResult | None = None
    last_report: SignalReport | None = None


@dataclass(frozen=True)
class EndpointView:
    key: str
    replica_id: str
    state: str
    phase: str
    weight: int
    zone: str
    load: float | None
    latency_s: float | None
    running: float | None
    waiting: float | None


@dataclass(frozen=True)
class TickRecord:
    """One tick of one pool, for logs, the live view and the admin API."""

    now: float
    service: str
    pool: str
    policy: str
    current: int
    target: int
    ready: int
    mode: str
    load_index: float | None
    explanation: str
    endpoints: tuple[EndpointView, ...]
    version: int | None
    failed_reads: int


class Controller:
    def __init__(
        self,
        config: Config,
        publisher: Publisher,
        tracker: SyncTracker,
        scaler: Scaler,
        source: SignalSource,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publisher = publisher
        self.tracker = tracker
        self.scaler = scaler
        self.source = source
        self.clock = clock
        #: Only the leader decides and scales (leader election; a scaler without ``is_leader`` is always it).
        #: A follower keeps reading signals and planning, so it serves the same endpoints, but holds the
        #: replica count and never actuates.
        self.is_leader: Callable[[], bool] = getattr(scaler, "is_leader", None) or (lambda: True)
        self.runtimes: dict[str, PoolRuntime] = {}
        self.acked_through: float | None = None
        self._pending_acks: deque[tuple[int, float]] = deque()
        self._last_plan: TrafficPlan | None = None
        self.history: deque[TickRecord] = deque(maxlen=600)
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        self.scale_ups = 0
        self.scale_downs = 0
        self._stopping: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Operator weight overrides, drains and policy specs (the admin API writes it; the app may share one).
        self.operator = OperatorState()
        #: Nothing is published until every replica started (or found) at start-up is ready or failed, or
        #: this many seconds passed: a restarted control plane must not push a plan with fewer endpoints
        #: than the proxies hold; while it waits, reconnecting proxies get no response and keep their config.
        self.initial_hold_s = 120.0
        self._holding = True
        self._started_at: float | None = None
        #: pool -> why its signals are lost (empty when every pool's source answers); see ``tick``.
        self.signal_alerts: dict[str, str] = {}
        self.set_config(config)

    # -- configuration ------------------------------------------------------------------------
    def set_config(self, config: Config) -> None:
        """Adopt a (re)loaded config; pools keep their policy state when their policy is unchanged."""
        self.config = config
        self.base_plan = to_traffic_plan(config)
        runtimes: dict[str, PoolRuntime] = {}
        for svc in config.services:
            for pool in svc.pools:
                if pool.autoscale is None:
                    continue
                spec = self.operator.specs.get(pool.name) or resolve_policy(pool.autoscale.policy,
                                                                            pool.autoscale.overrides)
                old = self.runtimes.get(pool.name)
                rt = PoolRuntime(svc.name, pool.name, spec, pool.autoscale.replica)
                if old is not None:
                    rt.table, rt.zone_of, rt.started, rt.paused = old.table, old.zone_of, old.started, old.paused
                    if type(old.spec) is type(spec):
                        rt.state = old.state
                runtimes[pool.name] = rt
        self.runtimes = runtimes
        self._last_plan = None

    def _pool_config(self, name: str) -> PoolConfig | None:
        for s in self.config.services:
            for p in s.pools:
                if p.name == name:
                    return p
        return None

    def event(self, kind: str, **detail: Any) -> None:
        self.events.append({"at": time.time(), "kind": kind, **detail})

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start each pool's initial replicas and publish the first plan."""
        for rt in self.runtimes.values():
            pc = self._pool_config(rt.pool)
            n = pc.autoscale.initial_replicas if pc and pc.autoscale and pc.autoscale.initial_replicas is not None \
                else rt.spec.min_replicas
            # Replicas that already exist (a Kubernetes Deployment) count; a follower starts none.
            n -= sum(1 for r in self.scaler.list() if r.pool == rt.pool) + _pending(self.scaler, rt.pool)
            for _ in range(n if self.is_leader() else 0):
                await self._start_replica(rt)
        # No "initial plan" with empty autoscaled pools: the first tick after the fleet settled publishes
        # (its ready replicas adopted as SERVING), so a restart never shrinks what the proxies hold.
        self._started_at = self.clock()

    def _fleet_settled(self, now: float) -> bool:
        if self._started_at is not None and now - self._started_at >= self.initial_hold_s:
            log.warning("replicas still starting after %.0f s; publishing anyway", self.initial_hold_s)
            return True
        if any(_pending(self.scaler, p) for p in self.runtimes):
            return False
        return not any(r.state == ReplicaState.STARTING and r.pool in self.runtimes for r in self.scaler.list())

    async def run(self) -> None:
        """Tick forever (one named task of the app)."""
        tick_s = self.config.controller.tick_s
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad tick must not stop the loop; it is logged
                log.exception("controller tick failed; the last published plan stays in force")
            next_at += tick_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() - next_at > 5 * tick_s:
                next_at = loop.time()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except BaseException:  # noqa: BLE001
                pass

    # -- the tick -------------------------------------------------------------------------------------
    async def tick(self) -> list[TickRecord]:
        now = self.clock()
        if self._holding:
            if not self._fleet_settled(now):
                return []
            self._holding = False
        self._update_acked()
        pools = {}
        records: list[TickRecord] = []
        for rt in list(self.runtimes.values()):
            infos = [r for r in self.scaler.list() if r.pool == rt.pool]
            await self._reap(rt, infos)
            live = [r for r in infos if r.state in (ReplicaState.STARTING, ReplicaState.READY)
                    and r.id not in self._stopping]
            keys = tuple(r.key for r in live)
            ready = {r.key: r.state == ReplicaState.READY for r in live}
            report = await self.source.read([k for k in keys if ready[k]], now)
            rt.last_report = report
            lost = self._signals_lost(rt, report, [k for k in keys if ready[k]])
            samples = report.samples()
            frame = SignalFrame.from_samples(
                {k: samples.get(k) for k in keys}, ready=ready,
                locality={r.key: Locality(zone=r.zone or rt.zone_of.get(r.id, "")).key for r in live},
            )
            n_starting = sum(1 for r in live if r.state == ReplicaState.STARTING)
            # Replicas being drained are already decided away: they are not part of the current count,
            # or the policy would "hold" them back into service on the next tick.
            leaving = {int(EndpointPhase.DRAINING), int(EndpointPhase.REMOVABLE)}
            phases = dict(zip(rt.table.keys, rt.table.phase.tolist())) if rt.table is not None else {}
            n_leaving = sum(1 for k in keys if phases.get(k) in leaving)
            signals = ServiceSignals(rt.service, frame, current_replicas=len(live) - n_leaving,
                                     pending_replicas=n_starting)
            if lost and rt.last_decision is not None:
                # Stale data must not feed the policy's windows either: its state is kept as it was.
                decision, new_state = replace(rt.last_decision, now=now, current_replicas=signals.current_replicas,
                                              mode="hold", stale=()), rt.state
            else:
                decision, new_state = decide(signals, rt.state, rt.spec, now)
            if lost:
                # The source is lost (e.g. Prometheus down): hold the count (only the bounds still apply) and,
                # below, the published weights, until it answers again. Membership still follows the scaler.
                cur = decision.current_replicas
                decision = replace(decision, target_replicas=min(max(cur, rt.spec.min_replicas), rt.spec.max_replicas),
                                   explanation=f"signals lost, holding: {self.signal_alerts[rt.pool]}")
            if rt.paused:
                decision = replace(decision, target_replicas=decision.current_replicas,
                                   explanation="autoscaling paused by an operator; " + decision.explanation)
            elif not self.is_leader():
                decision = replace(decision, target_replicas=decision.current_replicas,
                                   explanation="follower: only the leader decides; " + decision.explanation)
            rt.state = new_state
            result = plan_service(decision, signals, rt.table, rt.spec.traffic, now, self.acked_through,
                                  force_drain=self.operator.drained(rt.pool))
            rt.table = result.table
            rt.last_decision, rt.last_result = decision, result
            self._log_decision(rt, decision, result)
            if self.is_leader():
                await self._actuate(rt, live, result)
            base = self.base_plan.pool(rt.pool)
            if base is not None:
                pools[rt.pool] = apply_to_pool(base, result)
                prev = self._last_plan.pool(rt.pool) if self._last_plan is not None else None
                if lost and prev is not None:
                    pools[rt.pool] = _keep_weights(pools[rt.pool], prev)
            records.append(self._record(rt, now, decision, result, live, frame, report))
        plan = replace(self.base_plan, pools=tuple(pools.get(p.name, p) for p in self.base_plan.pools))
        plan = self.operator.apply(plan, [(r.pool, k) for r in self.runtimes.values() if r.table is not None
                                          for k in r.table.keys])
        version = self._publish(plan, "; ".join(r.explanation for r in records)[:500], now)
        for rec in records:
            self.history.append(replace(rec, version=version))
        return records

    def _signals_lost(self, rt: PoolRuntime, report: SignalReport, ready_keys: list[str]) -> bool:
        """Whether no ready endpoint of the pool got a good reading; keeps the alert, metric and events current."""
        lost = report.error is not None or (
            bool(ready_keys) and not any(report.readings.get(k) is not None and report.readings[k].ok
                                         for k in ready_keys))
        metrics = getattr(self.publisher, "metrics", None)
        if lost:
            first = next((r.error for r in report.readings.values() if r.error), None)
            why = (report.error or first or "every reading stale")[:300]
            if rt.pool not in self.signal_alerts:
                log.error("%s: signals lost (%s); holding replicas and weights", rt.pool, why)
                self.event("signals_lost", pool=rt.pool, reason=why)
            self.signal_alerts[rt.pool] = why
        elif rt.pool in self.signal_alerts:
            del self.signal_alerts[rt.pool]
            log.warning("%s: signals are back", rt.pool)
            self.event("signals_restored", pool=rt.pool)
        if metrics is not None:
            metrics.signals_up.labels(rt.pool).set(0 if lost else 1)
            if lost:
                metrics.signal_failures.labels(rt.pool).inc()
        return lost

    def _log_decision(self, rt: PoolRuntime, d: Decision, res: ServicePlanResult) -> None:
        level = logging.INFO if d.direction != "hold" or res.transitions else logging.DEBUG
        log.log(level, "%s/%s [%s %s] %d -> %d: %s | %s", rt.service, rt.pool, d.policy, d.mode,
                d.current_replicas, d.target_replicas, d.explanation, res.explanation)
        if d.direction != "hold":
            self.event("decision", service=rt.service, pool=rt.pool, policy=d.policy, current=d.current_replicas,
                       target=d.target_replicas, explanation=d.explanation)

    async def _reap(self, rt: PoolRuntime, infos: list[ReplicaInfo]) -> None:
        for r in infos:
            if r.state == ReplicaState.FAILED:
                log.warning("replica %s (%s) failed: %s; it will be replaced", r.id, r.key, r.reason or r.exit_code)
                self.event("replica_failed", pool=rt.pool, replica=r.id, endpoint=r.key, reason=r.reason)
                await self.scaler.stop_replica(r.id)
                rt.zone_of.pop(r.id, None)

    async def _actuate(self, rt: PoolRuntime, live: list[ReplicaInfo], res: ServicePlanResult) -> None:
        by_key = {r.key: r for r in live}
        for key in res.removable:
            info = by_key.get(key)
            if info is not None and info.id not in self._stopping:
                self._stopping.add(info.id)
                self.scale_downs += 1
                self.event("scale_down", pool=rt.pool, replica=info.id, endpoint=key)
                log.info("%s: stopping drained replica %s (%s)", rt.pool, info.id, key)
                self._spawn(self._stop(info.id, rt), f"stop-{info.id}")
        missing = res.scaler_replicas - len(live) - _pending(self.scaler, rt.pool)
        for _ in range(max(0, missing)):
            await self._start_replica(rt)
            self.scale_ups += 1

    async def _stop(self, rid: str, rt: PoolRuntime) -> None:
        try:
            await self.scaler.stop_replica(rid)
        finally:
            self._stopping.discard(rid)
            rt.zone_of.pop(rid, None)

    async def _start_replica(self, rt: PoolRuntime) -> ReplicaInfo:
        t = rt.template
        opts = ReplicaOptions(load_delay_s=t.load_delay_s, slow_factor=t.slow_factor, fail_rate=t.fail_rate,
                              max_num_seqs=t.max_num_seqs, max_queue=t.max_queue)
        info = await self.scaler.start_replica(rt.pool, t.profile, opts)
        zone = t.zones[rt.started % len(t.zones)] if t.zones else ""
        rt.zone_of[info.id] = zone
        rt.started += 1
        self.event("scale_up", pool=rt.pool, replica=info.id, endpoint=info.key, zone=zone)
        log.info("%s: starting replica %s on %s%s", rt.pool, info.id, info.key, f" in {zone}" if zone else "")
        return info

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- pushing and ACKs ---------------------------------------------------------------------------
    def _publish(self, plan: TrafficPlan, reason: str, now: float) -> int | None:
        if plan == self._last_plan:
            return self.publisher.cache.snapshot.version if self.publisher.cache.snapshot else None
        snap = self.publisher.publish_now(plan, reason=reason)
        self._last_plan = plan
        self._pending_acks.append((snap.version, now))
        return snap.version

    def _update_acked(self) -> None:
        """Advance ``acked_through`` to the newest published plan every proxy has ACKed."""
        newest: tuple[int, float] | None = None
        for v, t in self._pending_acks:
            res = self.tracker.result(v)
            if res.complete and not res.rejected:
                newest = (v, t)
        if newest is not None:
            self.acked_through = newest[1] if self.acked_through is None else max(self.acked_through, newest[1])
            while self._pending_acks and self._pending_acks[0][0] <= newest[0]:
                self._pending_acks.popleft()

    # -- views --------------------------------------------------------------------------------------
    def _record(self, rt: PoolRuntime, now: float, d: Decision, res: ServicePlanResult, live: list[ReplicaInfo],
                frame: SignalFrame, report: SignalReport) -> TickRecord:
        by_key = {r.key: r for r in live}
        load = None
        rep = d.load
        if rep is not None and getattr(rep, "endpoint", None) is not None and len(rep.endpoint) == len(res.keys):
            load = rep.endpoint
        views = []
        for i, key in enumerate(res.keys):
            info = by_key.get(key)
            views.append(EndpointView(
                key=key,
                replica_id=info.id if info else "",
                state=info.state.value if info else "gone",
                phase=EndpointPhase(int(res.phase[i])).name.lower(),
                weight=int(res.weight[i]),
                zone=(info.zone or rt.zone_of.get(info.id, "")) if info else "",
                load=_num(load[i]) if load is not None else None,
                latency_s=_num(frame.latency_s[i]),
                running=_num(frame.running[i]),
                waiting=_num(frame.waiting[i]),
            ))
        return TickRecord(now=now, service=rt.service, pool=rt.pool, policy=d.policy, current=d.current_replicas,
                          target=d.target_replicas, ready=signals_ready(frame), mode=d.mode,
                          load_index=d.load_index, explanation=d.explanation, endpoints=tuple(views), version=None,
                          failed_reads=len(report.failed))


def _keep_weights(pool: Any, prev: Any) -> Any:
    """``pool`` with the weights ``prev`` gave the endpoints that were already in rotation there."""
    old = {e.key: e.weight for e in prev.endpoints if e.health is HealthStatus.HEALTHY}
    eps = tuple(replace(e, weight=old[e.key]) if e.health is HealthStatus.HEALTHY and e.key in old
                and e.weight != old[e.key] else e for e in pool.endpoints)
    return replace(pool, endpoints=eps)


def _pending(scaler: Any, pool: str) -> int:
    """Replicas a scaler was asked for that have no endpoint yet (Kubernetes pods being scheduled)."""
    fn = getattr(scaler, "pending", None)
    return int(fn(pool)) if fn is not None else 0


def signals_ready(frame: SignalFrame) -> int:
    return int(frame.ready.sum())


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if f != f else f
