"""The runtime side of the admin API: :class:`RuntimeAdminPort` implements
:class:`~xds_control.admin.port.ControlPlanePort` for a :class:`~xds_control.runtime.app.ControlPlane`.

It reads the live controller (``cp.controller``, None for static pools), the snapshot cache, the publisher and
the sync tracker, and hands out immutable views; operator commands go through the controller's and the
:class:`~xds_control.control.operator.OperatorState`'s methods.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from xds_control.admin.port import (
    DecisionView,
    EventListener,
    OverridesView,
    PoolView,
    ProxyView,
    ShadowView,
    TickView,
    TypeSyncView,
    XdsStatus,
)
from xds_control.config import Config, to_traffic_plan
from xds_control.policies import PolicySpec
from xds_control.snapshot import types as T
from xds_control.snapshot.snapshot import Snapshot

if TYPE_CHECKING:
    from xds_control.runtime.app import ControlPlane


class RuntimeAdminPort:
    """The admin API's view of ``cp`` (see :class:`~xds_control.admin.port.ControlPlanePort`)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self._host_pid = f"{socket.gethostname()}:{os.getpid()}"

    # -- read ---------------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self.cp.config

    def instance(self) -> str:
        elector = getattr(self.cp, "elector", None)  # Lease election (Kubernetes), when enabled
        return str(getattr(elector, "identity", None) or self._host_pid)

    def is_leader(self) -> bool:
        c = self.cp.controller
        if c is not None:
            return bool(c.is_leader())
        elector = getattr(self.cp, "elector", None)
        return bool(elector.is_leader()) if elector is not None else True

    def snapshot(self) -> Snapshot | None:
        return self.cp.cache.snapshot

    def xds_status(self) -> XdsStatus:
        snap = self.cp.cache.snapshot
        pub = self.cp.publisher
        proxies = []
        for px in self.cp.tracker.syncz():
            types = tuple(
                TypeSyncView(type=str(t), state=str(st["state"]), nonce=str(st["nonce"] or ""),
                             error=str(st["error"] or ""), sent_version=st["sent"], acked_version=st["acked"],
                             error_version=st["error_version"] if st["error"] else None)
                for t, st in px["types"].items()  # type: ignore[attr-defined]  # syncz() rows are loosely typed dicts
            )
            proxies.append(ProxyView(node=str(px["node"]), cluster=str(px["cluster"]), protocol=str(px["protocol"]),
                                     peer=str(px["peer"]), types=types))
        return XdsStatus(
            version=snap.version if snap is not None else 0,
            last_good_version=pub.last_good.version if pub.last_good is not None else 0,
            last_error=pub.last_error or "",
            rejections=tuple(pub.rejections),  # Rejection values are frozen: shared, not copied
            proxies=tuple(proxies),
        )

    def signal_alerts(self) -> Mapping[str, str]:
        c = self.cp.controller
        return MappingProxyType(dict(getattr(c, "signal_alerts", None) or {}))

    def pool_view(self, pool: str) -> PoolView | None:
        c = self.cp.controller
        rt = c.runtimes.get(pool) if c is not None else None
        if rt is None:
            return None
        rec = next((r for r in reversed(c.history) if r.pool == pool), None)
        tick = None if rec is None else TickView(
            current=rec.current, target=rec.target, ready=rec.ready,
            endpoints=tuple(rec.endpoints))
        table = rt.table
        phases = {} if table is None else {k: p.name.lower() for k in table.keys
                                           if (p := table.phase_of(k)) is not None}
        res = rt.last_result
        configured = {name for name, _ in rt.shadows}
        shadows = tuple(
            ShadowView(policy=name, target=d.target_replicas, current=d.current_replicas, explanation=d.explanation,
                       would_replica_seconds=ss.would_replica_seconds,
                       actual_replica_seconds=ss.actual_replica_seconds, mode=d.mode)
            for name, ss in (rt.shadow_states or {}).items()
            if name in configured and (d := ss.last_decision) is not None)
        return PoolView(service=rt.service, pool=rt.pool, spec=rt.spec, paused=rt.pool in c.operator.paused,
                        phases=MappingProxyType(phases),
                        planned_replicas=res.target_replicas if res is not None else None,
                        plan_explanation=res.explanation if res is not None else "", last_tick=tick,
                        shadows=shadows)

    def decisions(self) -> tuple[DecisionView, ...]:
        c = self.cp.controller
        if c is None:
            return ()
        clock = getattr(c, "clock", time.monotonic)
        offset = time.time() - clock()  # history stamps are the controller's clock (monotonic)
        return tuple(DecisionView(at=r.now + offset, service=r.service, pool=r.pool, policy=r.policy,
                                  current=r.current, target=r.target, ready=r.ready, mode=r.mode,
                                  load_index=r.load_index, explanation=r.explanation, version=r.version or 0)
                     for r in c.history)

    def overrides(self) -> OverridesView:
        op = self.cp.operator
        return OverridesView(weights=MappingProxyType(dict(op.weights)), drains=frozenset(op.drains))

    def subscribe_events(self, listener: EventListener) -> Callable[[], None]:
        live = [True]

        def send(ev: dict[str, Any]) -> None:
            if live[0]:
                listener(ev)

        c = self.cp.controller
        detach_controller: Callable[[], None] = _nothing
        if c is not None:
            for ev in list(c.events):  # what happened before the subscription (e.g. the initial scale-ups)
                send(dict(ev))
            detach_controller = c.add_event_listener(lambda ev: send(dict(ev)))

        def on_push(snap: Any) -> None:
            send({"kind": "push", "version": snap.version, "reason": snap.reason,
                  "message": f"v{snap.version}: {snap.reason}", "resources": snap.summary()})

        pub = self.cp.publisher

        def on_ack(proxy: Any, type_url: str, version: int) -> None:
            t = T.SHORT.get(type_url, type_url)
            st = proxy.types.get(type_url)
            c = pub.concerns(type_url, st.prev_acked_version if st is not None else None, version)
            send({"kind": "ack", "node": proxy.node_id, "type": t, "version": version,
                  "message": f"{proxy.node_id} ACKed {t} v{version}", "resources": list(c.resources),
                  "services": list(c.services), "attributed": c.known})

        def on_nack(proxy: Any, type_url: str, version: int, message: str) -> None:
            # the publisher heard it first (its listener is older): its rejection says what the change concerns
            r = pub.rejections[-1] if pub.rejections else None
            if r is None or r.node != proxy.node_id or r.version != version:
                st = proxy.types.get(type_url)
                c = pub.concerns(type_url, st.acked_version if st is not None else None, version)
                resources, services, known = c.resources, c.services, c.known
            else:
                resources, services, known = r.resources, r.services, r.attributed
            send({"kind": "nack", "node": proxy.node_id, "type": T.SHORT.get(type_url, type_url),
                  "version": version, "message": message, "resources": list(resources),
                  "services": list(services), "attributed": known})

        unsub_push = self.cp.cache.subscribe(on_push)
        self.cp.tracker.on_ack_event(on_ack)  # the tracker keeps its listeners; ``live`` silences them
        self.cp.tracker.on_nack_event(on_nack)

        def unsubscribe() -> None:
            live[0] = False
            unsub_push()
            detach_controller()

        return unsubscribe

    # -- operator commands --------------------------------------------------------------------------
    def set_weight_override(self, pool: str, endpoint: str, weight: int) -> None:
        self.cp.operator.pin(pool, endpoint, weight)

    def clear_weight_override(self, pool: str, endpoint: str) -> None:
        self.cp.operator.unpin(pool, endpoint)

    def drain(self, pool: str, endpoint: str) -> None:
        self.cp.operator.drain(pool, endpoint)

    def undrain(self, pool: str, endpoint: str) -> None:
        self.cp.operator.undrain(pool, endpoint)

    def pause(self, pool: str) -> None:
        self._set_paused(pool, True)

    def resume(self, pool: str) -> None:
        self._set_paused(pool, False)

    def set_policy(self, pool: str, spec: PolicySpec) -> None:
        self.cp.operator.set_spec(pool, spec)  # survives a config reload
        # the control step starts another policy from fresh state (its state is keyed by the policy name)
        self._controller().set_spec(pool, spec)

    def publish_static(self, reason: str) -> None:
        if self.cp.controller is None:
            self.cp.publisher.submit(self.cp.operator.apply(to_traffic_plan(self.cp.config)), reason=reason)

    # -- helpers ------------------------------------------------------------------------------------
    def _controller(self) -> Any:
        c = self.cp.controller
        if c is None:
            raise LookupError("no pool is autoscaled: there is no controller to command")
        return c

    def _set_paused(self, pool: str, paused: bool) -> None:
        self._controller().set_paused(pool, paused)


def _nothing() -> None:
    pass


__all__ = ["RuntimeAdminPort"]
