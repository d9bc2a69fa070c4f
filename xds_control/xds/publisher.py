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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from xds_control.core.errors import InconsistentSnapshot
from xds_control.core.traffic import PoolPlan, TrafficPlan
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
class Rejection:
    node: str
    type: str
    version: int
    message: str
    at: float


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
        res = await self.tracker.wait_acked(snap.version, timeout=60)
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

    def _on_nack(self, proxy: ProxyStatus, type_url: str, version: int, message: str) -> None:
        self.rejections.append(Rejection(proxy.node_id, T.SHORT.get(type_url, type_url), version, message,
                                         time.time()))
        st = proxy.types.get(type_url)
        accepted_before = st is not None and st.acked_version is not None and st.acked_version < version
        snap = self.cache.snapshot
        if not self.rollback_on_nack or not accepted_before or snap is None or snap.version != version:
            return
        good = self.last_good
        if good is None or good.plan is None or good.plan == snap.plan:
            log.error("%s rejected v%d (%s) and there is no earlier good version to roll back to",
                      proxy.node_id, version, message)
            return
        if snap.plan is not None:
            self.bad_plans.append(snap.plan)
        if self._rollback_task is None or self._rollback_task.done():
            self._rollback_task = asyncio.get_running_loop().create_task(
                self._rollback(good, proxy.node_id, type_url, version, message), name="xds-rollback"
            )

    async def _rollback(self, good: Snapshot, node: str, type_url: str, version: int, message: str) -> None:
        assert good.plan is not None
        reason = (f"rollback to the content of v{good.version}: {node} rejected {T.SHORT.get(type_url, type_url)} "
                  f"v{version}: {message}")
        log.error(reason)
        self.metrics.rollbacks.inc()
        self._pending = None
        self._apply(good.plan, reason)
