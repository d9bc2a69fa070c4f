"""From plans to snapshots in the cache: debounce, make-before-break removal, rollback.

The publisher is the only writer of the :class:`SnapshotCache`.

* ``submit(plan)`` is cheap and may be called as often as one likes: plans are
  merged (the latest wins) and applied after ``debounce_s`` of quiet, or at most
  ``max_delay_s`` after the first pending one (Istio: PILOT_DEBOUNCE_AFTER/MAX).
* A cluster that the new plan no longer has is kept in the snapshot (not routed
  to) until every connected proxy has ACKed the listeners and routes that stopped
  using it, or ``removal_timeout_s`` passed; then a follow-up snapshot drops it.
  Requests in flight on the old routes therefore always find their cluster.
* When a proxy that had accepted the previous version rejects a new one (NACK), the
  plan is marked bad and the last version every proxy ACKed is published again
  (as a new version). A proxy that rejects everything does not trigger rollbacks:
  it is reported in the sync status and left on its last good config.
* A rejected listener or route change is remembered by content: the services (and listeners) whose plan
  changed in the rejected version are kept at their last good content in every later plan while the
  rejected content persists (an autoscaled pool's controller publishes a new plan every time the fleet
  changes; those endpoint changes go through, the rejected route is never sent again). A changed service
  plan (the config was fixed) is published as usual.
* Every snapshot keeps a small digest (resource versions, which services each resource serves), so an
  ACK or NACK can be told which resources and services it concerns (:meth:`Publisher.concerns`): the admin
  API shows tenants only what concerns their services.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from xds_control.core.errors import InconsistentSnapshot
from xds_control.core.traffic import ListenerPlan, PoolPlan, ServicePlan, TrafficPlan
from xds_control.snapshot import Snapshot, build_snapshot
from xds_control.snapshot import types as T
from xds_control.xds.cache import SnapshotCache
from xds_control.xds.metrics import XdsMetrics
from xds_control.xds.status import ProxyStatus, SyncTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishEvent:
    version: int
    reason: str
    at: float
    counts: dict[str, int]


@dataclass(frozen=True)
class Concern:
    """What an ACK or NACK of one type concerns: the resources of that type that changed since the version the
    proxy held, and the services they serve. ``known`` is False when the versions are no longer remembered."""

    resources: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    known: bool = True


@dataclass(frozen=True)
class Rejection:
    node: str
    type: str
    version: int
    message: str
    at: float
    #: Resources of ``type`` the rejected version changed (for the proxy), and the services they serve.
    resources: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    #: False when the rejected change could not be attributed (then only all-tenant callers see the message).
    attributed: bool = False


@dataclass(frozen=True)
class _Digest:
    """Per snapshot version: resource content versions and which services each resource serves."""

    versions: dict[str, dict[str, str]]
    #: service -> its plan (for telling which services of a shared route configuration changed)
    services: dict[str, ServicePlan]
    on_listener: dict[str, tuple[str, ...]]
    routed_by: dict[str, tuple[str, ...]]
    pools: frozenset[str] = field(default=frozenset())


def _digest(snap: Snapshot) -> _Digest:
    plan = snap.plan or TrafficPlan()
    routed: dict[str, list[str]] = {}
    for s in plan.services:
        for pool, _w in s.pools:
            routed.setdefault(pool, []).append(s.name)
    return _Digest(
        versions={t: {n: r.version for n, r in snap.of(t).items()} for t in T.ORDER},
        services={s.name: s for s in plan.services},
        on_listener={lst.name: tuple(lst.services) for lst in plan.listeners},
        routed_by={p: tuple(v) for p, v in routed.items()},
        pools=frozenset(p.name for p in plan.pools),
    )


#: Snapshot digests remembered for attributing ACKs and NACKs (a proxy further behind is attributed to nothing).
DIGESTS_KEPT = 64
#: Rejected service/listener contents remembered (oldest forgotten first).
BAD_KEPT = 100


class Publisher:
    def __init__(
        self,
        cache: SnapshotCache,
        tracker: SyncTracker,
        metrics: XdsMetrics | None = None,
        *,
        debounce_s: float = 0.1,
        max_delay_s: float = 1.0,
        removal_timeout_s: float = 30.0,
        rollback_on_nack: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.tracker = tracker
        self.metrics = metrics or XdsMetrics()
        self.debounce_s = debounce_s
        self.max_delay_s = max_delay_s
        self.removal_timeout_s = removal_timeout_s
        self.rollback_on_nack = rollback_on_nack
        self._clock = clock
        self._pending: tuple[TrafficPlan, str] | None = None
        self._first_pending_at = 0.0
        self._last_submit_at = 0.0
        self._wake = asyncio.Event()
        self._retained: dict[str, PoolPlan] = {}
        self._removal_task: asyncio.Task[None] | None = None
        self._rollback_task: asyncio.Task[None] | None = None
        self.last_good: Snapshot | None = None
        self.bad_plans: list[TrafficPlan] = []
        self.rejections: deque[Rejection] = deque(maxlen=100)
        self.history: deque[PublishEvent] = deque(maxlen=200)
        self.last_error: str | None = None
        self._digests: OrderedDict[int, _Digest] = OrderedDict()
        self._recent: deque[Snapshot] = deque(maxlen=4)
        #: name -> (rejected content, last good content or None when the last good version had none)
        self.bad_services: OrderedDict[str, tuple[ServicePlan, ServicePlan | None]] = OrderedDict()
        self.bad_listeners: OrderedDict[str, tuple[ListenerPlan, ListenerPlan | None]] = OrderedDict()
        tracker.on_nack_event(self._on_nack)

    # -- input ----------------------------------------------------------------------------------
    def submit(self, plan: TrafficPlan, reason: str = "") -> None:
        """Queue ``plan``; it replaces any plan still waiting for the debounce."""
        now = self._clock()
        if self._pending is None:
            self._first_pending_at = now
        self._pending = (plan, reason)
        self._last_submit_at = now
        self._wake.set()

    def publish_now(self, plan: TrafficPlan, reason: str = "") -> Snapshot:
        """Build and set a snapshot immediately (no debounce). Raises InconsistentSnapshot."""
        return self._apply(plan, reason)

    async def run(self) -> None:
        """The debounce loop; run it as one named task for the app's lifetime."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending is not None:
                now = self._clock()
                quiet_left = self._last_submit_at + self.debounce_s - now
                max_left = self._first_pending_at + self.max_delay_s - now
                wait = min(quiet_left, max_left)
                if wait > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait)
                    except TimeoutError:
                        pass
                    continue
                plan, reason = self._pending
                self._pending = None
                try:
                    await self._apply_off_loop(plan, reason)
                except InconsistentSnapshot as e:
                    log.error("plan refused, the current version stays in force: %s", e)

    # -- snapshots ------------------------------------------------------------------------------
    def _next_version(self) -> int:
        cur = self.cache.snapshot
        return (cur.version if cur is not None else 0) + 1

    async def _apply_off_loop(self, plan: TrafficPlan, reason: str) -> Snapshot:
        """:meth:`_apply` with the snapshot built in a thread (10,000 endpoints take ~100 ms to build and
        serialize), so ADS streams, ACKs and the admin API keep being served meanwhile. If another snapshot
        was set while it was built (``publish_now``), it is built again on the loop against that one."""
        prev = self.cache.snapshot
        plan = self.without_rejected(plan)
        extra = self._extra_pools(plan, prev)
        try:
            snap = await asyncio.to_thread(build_snapshot, plan, self._next_version(), prev, reason=reason,
                                           extra_pools=extra)
        except InconsistentSnapshot as e:
            self.metrics.snapshots_refused.inc()
            self.last_error = str(e)
            raise
        if self.cache.snapshot is not prev:
            return self._apply(plan, reason)
        self._retained = {p.name: p for p in extra}
        self._set(snap)
        if extra:
            self._schedule_removal(snap)
        return snap

    def _extra_pools(self, plan: TrafficPlan, prev: Snapshot | None) -> list[PoolPlan]:
        """Clusters no longer routed to that stay until every proxy ACKed the routes (make-before-break)."""
        if prev is None or not self.tracker.proxies():
            return []
        new_names = {p.name for p in plan.pools}
        known = {p.name: p for p in (prev.plan.pools if prev.plan else ())}
        known.update(self._retained)
        return [p for n, p in sorted(known.items()) if n not in new_names and n in prev.of(T.CLUSTER)]

    def _apply(self, plan: TrafficPlan, reason: str) -> Snapshot:
        prev = self.cache.snapshot
        plan = self.without_rejected(plan)
        extra = self._extra_pools(plan, prev)
        try:
            snap = build_snapshot(plan, self._next_version(), prev, reason=reason, extra_pools=extra)
        except InconsistentSnapshot as e:
            self.metrics.snapshots_refused.inc()
            self.last_error = str(e)
            raise
        self._retained = {p.name: p for p in extra}
        self._set(snap)
        if extra:
            self._schedule_removal(snap)
        return snap

    def _set(self, snap: Snapshot) -> None:
        self._digests[snap.version] = _digest(snap)
        while len(self._digests) > DIGESTS_KEPT:
            self._digests.popitem(last=False)
        self._recent.append(snap)
        self.cache.set_snapshot(snap)
        self.tracker.current_version = snap.version
        self.metrics.snapshot_version.set(snap.version)
        for t in T.ORDER:
            self.metrics.config_size.labels(T.SHORT[t]).set(sum(len(r.body) for r in snap.of(t).values()))
        self.history.append(PublishEvent(snap.version, snap.reason, time.time(), snap.summary()))
        log.info("snapshot v%d set (%s): %s%s", snap.version, snap.reason or "update",
                 " ".join(f"{k}={v}" for k, v in snap.summary().items()),
                 f" (keeping {sorted(snap.retained)} until routes are ACKed)" if snap.retained else "")
        if not self.tracker.proxies():
            self._maybe_good(snap)
        asyncio.get_running_loop().create_task(self._observe_push(snap), name=f"xds-push-time-v{snap.version}")

    async def _observe_push(self, snap: Snapshot) -> None:
        """Push-time metric, and the "last good" version: one every connected proxy ACKed."""
        if not self.tracker.proxies():
            return
        start = self._clock()
        deadline = start + 60
        while True:
            res = await self.tracker.wait_acked(snap.version, timeout=max(0.0, deadline - self._clock()))
            # A proxy that asked for another type after the wait's ACK came in is pending again: wait on
            # (while this snapshot is current), else the first snapshot is never "good" and cannot be rolled back to.
            if res.complete or self._clock() >= deadline or self.cache.snapshot is not snap:
                break
        if res.complete:
            self.metrics.push_time.observe(self._clock() - start)
        if res.ok and (self.last_good is None or self.last_good.version < snap.version):
            self._maybe_good(snap)

    def _schedule_removal(self, snap: Snapshot) -> None:
        if self._removal_task is not None and not self._removal_task.done():
            self._removal_task.cancel()
        self._removal_task = asyncio.get_running_loop().create_task(
            self._remove_after_ack(snap), name=f"xds-remove-clusters-v{snap.version}"
        )

    async def _remove_after_ack(self, snap: Snapshot) -> None:
        res = await self.tracker.wait_acked(snap.version, timeout=self.removal_timeout_s,
                                            types=(T.LISTENER, T.ROUTE))
        if self.cache.snapshot is not snap or snap.plan is None:
            return  # a newer snapshot took over; it carries its own retention
        if not res.complete:
            log.warning("removing clusters %s after %.0fs although %s did not ACK v%d",
                        sorted(snap.retained), self.removal_timeout_s, list(res.pending), snap.version)
        self._retained = {}
        new = build_snapshot(snap.plan, self._next_version(), snap,
                             reason=f"remove clusters {', '.join(sorted(snap.retained))} no longer routed")
        self._set(new)

    # -- ACK / NACK ---------------------------------------------------------------------------------
    def _maybe_good(self, snap: Snapshot) -> None:
        if snap.plan is not None and not snap.retained:
            self.last_good = snap

    def concerns(self, type_url: str, since: int | None, version: int) -> Concern:
        """The resources of ``type_url`` that differ between snapshot ``since`` (what the proxy held; None:
        nothing) and ``version``, and the services they serve. For a route configuration or listener shared by
        several services, only the services whose plan changed (all of its services if the listener itself or
        the set of clusters changed). Unknown (``known`` False) when ``version`` is no longer remembered."""
        d = self._digests.get(version)
        if d is None:
            return Concern(known=False)
        # ``since`` forgotten (or None): compare with nothing, everything of the type concerns the proxy
        base = self._digests.get(since) if since is not None else None
        cur, old = d.versions.get(type_url, {}), (base.versions.get(type_url, {}) if base is not None else {})
        changed = sorted(n for n in set(cur) | set(old) if cur.get(n) != old.get(n))
        services: set[str] = set()
        for n in changed:
            if type_url in (T.CLUSTER, T.ENDPOINT):
                services.update(d.routed_by.get(n, ()))
                if base is not None:
                    services.update(base.routed_by.get(n, ()))
                continue
            on = set(d.on_listener.get(n, ())) | (set(base.on_listener.get(n, ())) if base is not None else set())
            if base is None or type_url == T.LISTENER or d.on_listener.get(n) != base.on_listener.get(n):
                services.update(on)
                continue
            diff = {sv for sv in on if d.services.get(sv) != base.services.get(sv)}
            if not diff:  # the route changed with the set of clusters: the services routing to those pools
                moved = d.pools ^ base.pools
                diff = {sv for sv in on for x in (d.services.get(sv), base.services.get(sv)) if x is not None
                        for p, _w in x.pools if p in moved}
            services.update(diff or on)
        return Concern(tuple(changed), tuple(sorted(services)))

    def without_rejected(self, plan: TrafficPlan) -> TrafficPlan:
        """``plan`` with every service and listener whose content proxies rejected put back to its last good
        content (dropped when it had none); ``plan`` itself when none is there."""
        if not self.bad_services and not self.bad_listeners:
            return plan
        services: list[ServicePlan] = []
        dropped: set[str] = set()
        changed = False
        for sv in plan.services:
            bad = self.bad_services.get(sv.name)
            if bad is not None and bad[0] == sv:
                changed = True
                if bad[1] is None:
                    dropped.add(sv.name)
                    continue
                sv = bad[1]
            services.append(sv)
        listeners: list[ListenerPlan] = []
        for lst in plan.listeners:
            badl = self.bad_listeners.get(lst.name)
            if badl is not None and badl[0] == lst:
                changed = True
                if badl[1] is None:
                    continue
                lst = badl[1]
            if dropped and any(x in dropped for x in lst.services):
                lst = replace(lst, services=tuple(x for x in lst.services if x not in dropped))
            listeners.append(lst)
        if not changed:
            return plan
        return replace(plan, services=tuple(services), listeners=tuple(listeners))

    def _remember_rejected(self, bad: TrafficPlan, good: TrafficPlan, type_url: str,
                           resources: Iterable[str]) -> bool:
        """Remember the services/listeners of ``bad`` behind the rejected ``resources`` (listener names) that
        differ from ``good``. Returns whether anything was remembered."""
        names = set(resources)
        good_s = {s.name: s for s in good.services}
        good_l = {x.name: x for x in good.listeners}
        added = False
        for lst in bad.listeners:
            if lst.name not in names:
                continue
            if type_url == T.LISTENER and good_l.get(lst.name) != lst:
                self.bad_listeners[lst.name] = (lst, good_l.get(lst.name))
                added = True
            for sv in bad.services:
                if sv.name in lst.services and good_s.get(sv.name) != sv:
                    self.bad_services[sv.name] = (sv, good_s.get(sv.name))
                    added = True
        for d in (self.bad_services, self.bad_listeners):
            while len(d) > BAD_KEPT:
                d.popitem(last=False)
        return added

    def _on_nack(self, proxy: ProxyStatus, type_url: str, version: int, message: str) -> None:
        st = proxy.types.get(type_url)
        concern = self.concerns(type_url, st.acked_version if st is not None else None, version)
        self.rejections.append(Rejection(proxy.node_id, T.SHORT.get(type_url, type_url), version, message,
                                         time.time(), concern.resources, concern.services, concern.known))
        accepted_before = st is not None and st.acked_version is not None and st.acked_version < version
        snap = self.cache.snapshot
        if not self.rollback_on_nack or not accepted_before or snap is None:
            return
        rejected = next((x for x in self._recent if x.version == version), None)
        good = self.last_good
        if (type_url in (T.LISTENER, T.ROUTE) and rejected is not None and rejected.plan is not None
                and good is not None and good.plan is not None
                and self._remember_rejected(rejected.plan, good.plan, type_url, concern.resources)):
            # Keep the rejected route out of this and every later plan; the rest (endpoints) goes through.
            if snap.plan is not None and self.without_rejected(snap.plan) is not snap.plan:
                self.bad_plans.append(snap.plan)
                if self._rollback_task is None or self._rollback_task.done():
                    self._rollback_task = asyncio.get_running_loop().create_task(
                        self._rollback(snap, good, proxy.node_id, type_url, version, message,
                                       resources=concern.resources, whole=False), name="xds-rollback")
            return
        if snap.version != version:
            return
        if good is None or good.plan is None or good.plan == snap.plan:
            log.error("%s rejected v%d (%s) and there is no earlier good version to roll back to",
                      proxy.node_id, version, message)
            return
        if snap.plan is not None:
            self.bad_plans.append(snap.plan)
        if self._rollback_task is None or self._rollback_task.done():
            self._rollback_task = asyncio.get_running_loop().create_task(
                self._rollback(good, good, proxy.node_id, type_url, version, message), name="xds-rollback"
            )

    async def _rollback(self, base: Snapshot, good: Snapshot, node: str, type_url: str, version: int, message: str,
                        resources: tuple[str, ...] = (), whole: bool = True) -> None:
        """Publish ``base``'s plan without the rejected content (``base`` is ``good`` for a whole-plan rollback)."""
        what = f"{T.SHORT.get(type_url, type_url)} {', '.join(resources)}" if resources else "the content"
        reason = (f"rollback of {what} to the content of v{good.version}: {node} rejected "
                  f"{T.SHORT.get(type_url, type_url)} v{version}: {message}")
        log.error(reason)
        self.metrics.rollbacks.inc()
        if not whole:  # the newest plan, which may be newer than the one rejected
            cur = self.cache.snapshot
            if cur is None or cur.plan is None or self.without_rejected(cur.plan) is cur.plan:
                return  # a newer plan was already published without the rejected content
            base = cur
        assert base.plan is not None
        if whole:
            self._pending = None  # a plan still waiting is as new as the rejected one
        self._apply(base.plan, reason)
