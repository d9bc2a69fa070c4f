"""The live loop: gathers what one tick observes, calls the control step, carries its actions out.

Every ``controller.tick_s`` (default 1 s) :meth:`Controller.tick` does::

    scaler.list() + signals.read(ready endpoints) + rates.read_rates(pools) + ACK progress
      + operator overrides + leadership  ->  control.step.Observation
    control_step(observation, state, spec) -> StepResult        (pure: every decision is made there)
    then: publisher.publish_now(result.plan) when it changed; scaler: reap failed replicas, stop the
    removable ones, start what is missing; log, record and emit the step's events; report the shadow
    policies' decisions (DEBUG log, ``/metrics``, a ``shadow_decision`` event when one differs from the real target).

The decision rules (lost-signal hold, pause, follower hold, keeping weights, drains out of the count and
out of the policy's ready set, the operator overlay, the initial hold after a restart) live in
:func:`xds_control.control.step.control_step`, which the simulator drives too. Nothing here decides.

``acked_through`` is the ``now`` of the newest plan every connected proxy ACKed. Time is ``clock()``
(monotonic seconds), passed into the step as ``now``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from xds_control.actuators.base import ReplicaInfo, ReplicaOptions, ReplicaState, Scaler
from xds_control.actuators.peers import PeerBoard
from xds_control.config import Config, to_traffic_plan
from xds_control.config.schema import PoolConfig, ReplicaTemplateConfig
from xds_control.control.operator import OperatorState
from xds_control.control.step import (
    ControlSpec,
    ControlState,
    Observation,
    PoolActions,
    PoolObs,
    PoolSpec,
    PoolState,
    ReplicaObs,
    ReplicaStatus,
    ShadowState,
    StepResult,
    control_step,
)
from xds_control.control.views import EndpointView
from xds_control.core.model import Decision, EndpointPhase, SignalFrame
from xds_control.core.traffic import TrafficPlan
from xds_control.planning import CoordinationTable, ServicePlanResult
from xds_control.policies import PolicySpec
from xds_control.signals.base import SignalReport, SignalSource
from xds_control.xds.publisher import Publisher
from xds_control.xds.status import SyncTracker

log = logging.getLogger(__name__)


@dataclass
class PoolRuntime:
    """A view of one autoscaled pool for the admin API and logs, refreshed every tick (values immutable)."""

    service: str
    pool: str
    spec: PolicySpec
    template: ReplicaTemplateConfig
    state: Any = None
    table: CoordinationTable | None = None
    #: A copy of ``pool in operator.paused`` for views (the step reads the operator state).
    paused: bool = False
    last_decision: Decision | None = None
    last_result: ServicePlanResult | None = None
    last_report: SignalReport | None = None
    #: Shadow policies of the config, (name, spec): they decide every tick, never actuate.
    shadows: tuple[tuple[str, PolicySpec], ...] = ()
    #: Each shadow's state after the last tick (its last decision and replica-seconds), read-only.
    shadow_states: Mapping[str, ShadowState] | None = None


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
    #: Gateway arrival rate of the pool (requests/s, Envoy's statistics) the step saw; None when unknown.
    request_rate: float | None = None


class Controller:
    def __init__(
        self,
        config: Config,
        publisher: Publisher,
        tracker: SyncTracker,
        scaler: Scaler,
        source: SignalSource,
        *,
        rates: Any = None,
        clock: Callable[[], float] = time.monotonic,
        operator: OperatorState | None = None,
        board: PeerBoard | None = None,
    ) -> None:
        self.publisher = publisher
        #: Shared with the other control-plane instances (Kubernetes, leader election): what the leader drains
        #: and what each instance's proxies still route to. None: a single instance.
        self.board = board
        self.tracker = tracker
        self.scaler = scaler
        self.source = source
        #: Gateway request rates per pool (Envoy's statistics); None = unknown to the policies.
        self.rates = rates
        self.clock = clock
        #: Only the leader decides and scales (leader election; a scaler without ``is_leader`` is always it).
        self.is_leader: Callable[[], bool] = getattr(scaler, "is_leader", None) or (lambda: True)
        self.runtimes: dict[str, PoolRuntime] = {}
        self.acked_through: float | None = None
        self._pending_acks: deque[tuple[int, float]] = deque()
        self.history: deque[TickRecord] = deque(maxlen=600)
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.scale_ups = 0
        self.scale_downs = 0
        self._stopping: set[str] = set()
        self._zone_of: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Operator weight overrides, drains, pauses and policy specs (the admin API writes it; the app shares its
        #: own, restored from the operator state store before the first tick).
        self.operator = operator if operator is not None else OperatorState()
        #: Nothing is published until every replica started (or found) at start-up is ready or failed, or
        #: this many seconds passed: a restarted control plane must not push a plan with fewer endpoints
        #: than the proxies hold; while it waits, reconnecting proxies get no response and keep their config.
        self.initial_hold_s = 120.0
        self.state = ControlState()
        #: pool -> why its signals are lost (empty when every pool's source answers); see ``tick``.
        self.signal_alerts: dict[str, str] = {}
        #: Called after every tick that planned with (result, records, reports): the controller metrics.
        self.observer: Callable[[StepResult, list[TickRecord], dict[str, SignalReport]], None] | None = None
        #: (pool, shadow) -> the shadow's target last reported as differing from the real one (None: agreed).
        self._shadow_seen: dict[tuple[str, str], int | None] = {}
        #: (pool, shadow) -> replica-seconds already added to the shadow counter on /metrics.
        self._shadow_exported: dict[tuple[str, str], float] = {}
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
                spec = self.operator.specs.get(pool.name) or pool.autoscale.spec
                old = self.runtimes.get(pool.name)
                rt = PoolRuntime(svc.name, pool.name, spec, pool.autoscale.replica, shadows=pool.autoscale.shadows)
                rt.paused = pool.name in self.operator.paused
                if old is not None:
                    rt.table, rt.state = old.table, old.state
                    rt.shadow_states = old.shadow_states
                    rt.last_decision, rt.last_result, rt.last_report = old.last_decision, old.last_result, \
                        old.last_report
                runtimes[pool.name] = rt
        self.runtimes = runtimes
        # The next plan is compared with nothing: it is published even if equal to the last one.
        self.state = replace(self.state, last_plan=None)

    def control_spec(self) -> ControlSpec:
        """The pools as the step sees them (the operator's policy wins over the config's)."""
        pools = tuple(PoolSpec(rt.service, rt.pool, rt.spec, tuple(rt.template.zones), shadows=rt.shadows)
                      for rt in self.runtimes.values())
        return ControlSpec(pools, self.base_plan, initial_hold_s=self.initial_hold_s)

    def set_paused(self, pool: str, paused: bool) -> None:
        """Pause (hold the count of) or resume autoscaling of ``pool`` (kept in the operator state)."""
        self.operator.set_paused(pool, paused)
        self.runtimes[pool].paused = paused  # the view's copy; the step reads the operator state

    def set_spec(self, pool: str, spec: PolicySpec) -> None:
        """Run ``pool`` with ``spec`` from the next tick on (kept over config reloads and in the operator state)."""
        self.operator.set_spec(pool, spec)
        self.runtimes[pool].spec = spec

    def add_event_listener(self, fn: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``fn`` with every event from now on; returns the function that unsubscribes it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _pool_config(self, name: str) -> PoolConfig | None:
        for s in self.config.services:
            for p in s.pools:
                if p.name == name:
                    return p
        return None

    def event(self, kind: str, **detail: Any) -> None:
        ev = {"at": time.time(), "kind": kind, **detail}
        self.events.append(ev)
        for fn in list(self._listeners):
            try:
                fn(ev)
            except Exception:  # noqa: BLE001 - a listener must not break the loop
                log.exception("event listener failed on %s", kind)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start each pool's initial replicas; the first tick after the fleet settled publishes."""
        started: dict[str, PoolState] = {}
        for rt in self.runtimes.values():
            pc = self._pool_config(rt.pool)
            n = pc.autoscale.initial_replicas if pc and pc.autoscale and pc.autoscale.initial_replicas is not None \
                else rt.spec.min_replicas
            # Replicas that already exist (a Kubernetes Deployment) count; a follower starts none.
            infos = self.scaler.list()
            n -= sum(1 for r in infos if r.pool == rt.pool) + _pending(self.scaler, rt.pool, infos)
            zones = tuple(rt.template.zones)
            n = max(0, n) if self.is_leader() else 0
            for i in range(n):
                await self._start_replica(rt, zones[i % len(zones)] if zones else "")
            started[rt.pool] = PoolState(started=n)  # the step goes on spreading new replicas from here
        self.state = replace(self.state, pools={**self.state.pools, **started})

    async def run(self) -> None:
        """Tick forever (one named task of the app); ``controller.tick_s`` is re-read every tick (reloadable)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            tick_s = self.config.controller.tick_s
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

    # -- the tick: observe, step, act ---------------------------------------------------------------
    async def observe(self, now: float) -> tuple[Observation, dict[str, SignalReport]]:
        """Everything the step needs, gathered from the scaler, the sources and the tracker."""
        self._update_acked()
        infos = self.scaler.list()
        reports: dict[str, SignalReport] = {}
        pools: dict[str, PoolObs] = {}
        rates: dict[str, float | None] = {}
        if self.rates is not None and self.runtimes:
            rep = await self.rates.read_rates(list(self.runtimes), now)
            rates = {p: rep.rate(p) for p in self.runtimes}
        for rt in self.runtimes.values():
            mine = [r for r in infos if r.pool == rt.pool and r.id not in self._stopping
                    and r.state in (ReplicaState.STARTING, ReplicaState.READY, ReplicaState.FAILED)]
            replicas = tuple(ReplicaObs(r.id, r.key, _STATUS[r.state], zone=r.zone or self._zone_of.get(r.id, ""),
                                        reason=str(r.reason or r.exit_code or "")) for r in mine)
            ready_keys = [r.key for r in mine if r.state == ReplicaState.READY]
            report = await self.source.read(ready_keys, now)
            reports[rt.pool] = report
            first = next((r.error for r in report.readings.values() if r.error), None)
            pools[rt.pool] = PoolObs(rt.pool, replicas, pending=_pending(self.scaler, rt.pool, infos),
                                     samples=report.samples(), source_error=report.error, reading_error=first,
                                     request_rate=rates.get(rt.pool))
        drains = frozenset(self.operator.drains)
        leader = bool(self.is_leader())
        board = self.board
        obs = Observation(now, pools, acked_through=self.acked_through, is_leader=leader,
                          paused=frozenset(p for p in self.operator.paused if p in self.runtimes),
                          pins=dict(self.operator.weights), drains=drains,
                          leader_drains=board.leader_drains() if board is not None and not leader else None,
                          peers_routing=board.peers_routing() if board is not None and leader else None)
        return obs, reports

    async def tick(self) -> list[TickRecord]:
        now = self.clock()
        obs, reports = await self.observe(now)
        result = control_step(obs, self.state, self.control_spec())
        self.state = result.state
        if result.plan is None:
            return []
        if self.board is not None:
            self.board.share(leader=obs.is_leader, drains={a.pool: a.draining for a in result.pools},
                             routing={a.pool: a.routing for a in result.pools})
        await self.act(result, reports)
        # Pins and drains of endpoints that are gone are forgotten (a new replica reusing a port inherits none).
        present = {(p.name, e.key) for p in result.plan.pools for e in p.endpoints}
        present.update((a.pool, k) for a in result.pools for k in a.plan.keys)
        self.operator.prune(present)
        records = [self._record(a, now, reports.get(a.pool), obs.pools[a.pool].request_rate if a.pool in obs.pools
                                else None) for a in result.pools]
        version = self._current_version()
        if result.changed or version is None:
            version = self._publish(result.plan, "; ".join(r.explanation for r in records)[:500], now)
        elif self._pending_acks and self._pending_acks[-1][0] == version:
            # The plan as of ``now`` is the one in force: once it is ACKed, so is ``now`` (the simulator's
            # ACK-by-the-next-tick is this too). One entry per version, so a proxy that never ACKs grows nothing.
            self._pending_acks[-1] = (version, now)
        else:
            self._pending_acks.append((version, now))
        for rec in records:
            self.history.append(replace(rec, version=version))
        if self.observer is not None:
            self.observer(result, records, reports)
        return records

    async def act(self, result: StepResult, reports: dict[str, SignalReport]) -> None:
        """Carry out the step's actions (and keep the views, alerts and metrics current)."""
        for ev in result.events:
            self.event(ev.kind, **dict(ev.detail))
            if ev.kind == "signals_lost":
                log.error("%s: signals lost (%s); holding replicas and weights", ev.detail["pool"],
                          ev.detail["reason"])
            elif ev.kind == "signals_restored":
                log.warning("%s: signals are back", ev.detail["pool"])
        infos = {r.id: r for r in self.scaler.list()}
        metrics = getattr(self.publisher, "metrics", None)
        for a in result.pools:
            rt = self.runtimes.get(a.pool)
            if rt is None:
                continue
            ps = result.state.pools.get(a.pool)
            rt.state, rt.table = (ps.policy_state, ps.table) if ps is not None else (None, None)
            rt.last_decision, rt.last_result, rt.last_report = a.decision, a.plan, reports.get(a.pool)
            if a.signals_lost is not None:
                self.signal_alerts[a.pool] = a.signals_lost
            else:
                self.signal_alerts.pop(a.pool, None)
            if metrics is not None:
                metrics.signals_up.labels(a.pool).set(0 if a.signals_lost is not None else 1)
                if a.signals_lost is not None:
                    metrics.signal_failures.labels(a.pool).inc()
            self._log_decision(rt, a)
            rt.shadow_states = ps.shadows if ps is not None else None
            self._report_shadows(rt, a, metrics)
            for rid in a.reap:
                info = infos.get(rid)
                log.warning("replica %s (%s) failed: %s; it will be replaced", rid, info.key if info else "?",
                            (info.reason or info.exit_code) if info else "")
                self.event("replica_failed", pool=a.pool, replica=rid, endpoint=info.key if info else "",
                           reason=info.reason if info else "")
                await self.scaler.stop_replica(rid)
                self._zone_of.pop(rid, None)
            for rid in a.stop:
                if rid in self._stopping:
                    continue
                info = infos.get(rid)
                self._stopping.add(rid)
                self.scale_downs += 1
                key = info.key if info else ""
                self.event("scale_down", pool=a.pool, replica=rid, endpoint=key)
                log.info("%s: stopping drained replica %s (%s)", a.pool, rid, key)
                self._spawn(self._stop(rid), f"stop-{rid}")
            for zone in a.start:
                await self._start_replica(rt, zone)
                self.scale_ups += 1
        shown = {(a.pool, name) for a in result.pools for name, _ in a.shadows}
        for gone in [k for k in self._shadow_exported if k not in shown]:  # a shadow or pool was removed
            self._shadow_exported.pop(gone, None)
            self._shadow_seen.pop(gone, None)
            if metrics is not None:
                for m in (metrics.shadow_target, metrics.shadow_replica_seconds):
                    try:
                        m.remove(*gone)
                    except KeyError:
                        pass

    def _report_shadows(self, rt: PoolRuntime, a: PoolActions, metrics: Any) -> None:
        """Log each shadow's decision (DEBUG), export it on /metrics, and emit ``shadow_decision`` when its
        target differs from the real one (once per change of the shadow's target)."""
        real = a.decision.target_replicas
        states = rt.shadow_states or {}
        for name, d in a.shadows:
            key = (a.pool, name)
            log.debug("%s/%s shadow %s [%s %s] %d -> %d (real %d): %s", rt.service, rt.pool, name, d.policy, d.mode,
                      d.current_replicas, d.target_replicas, real, d.explanation)
            differs = d.target_replicas if d.target_replicas != real else None
            if differs is not None and self._shadow_seen.get(key) != differs:
                self.event("shadow_decision", service=rt.service, pool=a.pool, policy=name,
                           current=d.current_replicas, target=d.target_replicas, real_target=real,
                           explanation=d.explanation,
                           message=f"shadow {name} would scale {a.pool} to {d.target_replicas} "
                                   f"(real target {real}): {d.explanation}")
            self._shadow_seen[key] = differs
            ss = states.get(name)
            total = ss.would_replica_seconds if ss is not None else 0.0
            done = self._shadow_exported.get(key, 0.0)
            self._shadow_exported[key] = total
            if metrics is not None:
                metrics.shadow_target.labels(a.pool, name).set(d.target_replicas)
                # the state's integral only grows; if it restarted (new state), count it from there
                metrics.shadow_replica_seconds.labels(a.pool, name).inc(total - done if total >= done else total)

    def _log_decision(self, rt: PoolRuntime, a: PoolActions) -> None:
        d, res = a.decision, a.plan
        level = logging.INFO if d.direction != "hold" or res.transitions else logging.DEBUG
        log.log(level, "%s/%s [%s %s] %d -> %d: %s | %s", rt.service, rt.pool, d.policy, d.mode,
                d.current_replicas, d.target_replicas, d.explanation, res.explanation)

    async def _stop(self, rid: str) -> None:
        try:
            await self.scaler.stop_replica(rid)
        finally:
            self._stopping.discard(rid)
            self._zone_of.pop(rid, None)

    async def _start_replica(self, rt: PoolRuntime, zone: str) -> ReplicaInfo:
        t = rt.template
        opts = ReplicaOptions(load_delay_s=t.load_delay_s, slow_factor=t.slow_factor, fail_rate=t.fail_rate,
                              max_num_seqs=t.max_num_seqs, max_queue=t.max_queue)
        info = await self.scaler.start_replica(rt.pool, t.profile, opts)
        self._zone_of[info.id] = zone
        self.event("scale_up", pool=rt.pool, replica=info.id, endpoint=info.key, zone=zone)
        log.info("%s: starting replica %s on %s%s", rt.pool, info.id, info.key, f" in {zone}" if zone else "")
        return info

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- pushing and ACKs ---------------------------------------------------------------------------
    def _current_version(self) -> int | None:
        snap = self.publisher.cache.snapshot
        return snap.version if snap else None

    def _publish(self, plan: TrafficPlan, reason: str, now: float) -> int | None:
        snap = self.publisher.publish_now(plan, reason=reason)
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
    def _record(self, a: PoolActions, now: float, report: SignalReport | None,
                request_rate: float | None = None) -> TickRecord:
        d, res, frame = a.decision, a.plan, a.frame
        rt = self.runtimes[a.pool]
        infos = {r.key: r for r in self.scaler.list() if r.pool == a.pool}
        load = None
        rep = d.load
        if rep is not None and getattr(rep, "endpoint", None) is not None and len(rep.endpoint) == len(res.keys):
            load = rep.endpoint
        views = []
        for i, key in enumerate(res.keys):
            info = infos.get(key)
            views.append(EndpointView(
                key=key,
                replica_id=info.id if info else "",
                state=info.state.value if info else "gone",
                phase=EndpointPhase(int(res.phase[i])).name.lower(),
                weight=int(res.weight[i]),
                zone=(info.zone or self._zone_of.get(info.id, "")) if info else "",
                load=_num(load[i]) if load is not None else None,
                latency_s=_num(frame.latency_s[i]) if frame is not None else None,
                running=_num(frame.running[i]) if frame is not None else None,
                waiting=_num(frame.waiting[i]) if frame is not None else None,
            ))
        return TickRecord(now=now, service=rt.service, pool=rt.pool, policy=d.policy, current=d.current_replicas,
                          target=d.target_replicas, ready=signals_ready(frame) if frame is not None else 0,
                          mode=d.mode, load_index=d.load_index, explanation=d.explanation, endpoints=tuple(views),
                          version=None, failed_reads=len(report.failed) if report is not None else 0,
                          request_rate=request_rate)


_STATUS = {ReplicaState.STARTING: ReplicaStatus.STARTING, ReplicaState.READY: ReplicaStatus.READY,
           ReplicaState.FAILED: ReplicaStatus.FAILED}


def _pending(scaler: Any, pool: str, infos: list[ReplicaInfo]) -> int:
    """Replicas a scaler was asked for that have no endpoint yet (Kubernetes pods being scheduled), counted
    against ``infos``, the same list the live replicas were taken from."""
    fn = getattr(scaler, "pending", None)
    return int(fn(pool, infos)) if fn is not None else 0


def signals_ready(frame: SignalFrame) -> int:
    return int(frame.ready.sum())


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if f != f else f
