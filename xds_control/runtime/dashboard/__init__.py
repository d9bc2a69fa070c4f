"""The live dashboard, served by the control plane on its metrics port.

``GET /`` is one hand-written HTML page (``index.html``, ``dashboard.css``, ``dashboard.js``: package data, no
CDN, no third-party code); the page polls ``GET /api/state`` every second and draws its plots as plain SVG.

``/api/state`` is built from the frozen views of the admin port (:class:`~xds_control.runtime.admin_port.
RuntimeAdminPort`: pools, decisions, signal alerts, every proxy's sync state, events) plus the controller
metrics' short history and last readings (:mod:`xds_control.runtime.metrics`: request rate, TTFT, SLO
attainment, KV cache). Every number is finite or null.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from xds_control.runtime.admin_port import RuntimeAdminPort

if TYPE_CHECKING:
    from xds_control.admin.port import ControlPlanePort
    from xds_control.runtime.app import ControlPlane
    from xds_control.runtime.metrics import ControllerMetrics

#: The page's files: name -> content type.
ASSETS = {"index.html": "text/html", "dashboard.js": "text/javascript", "dashboard.css": "text/css"}
#: Event kinds kept for the page (ACKs are left out: one per proxy per type per push).
EVENT_KINDS = frozenset({"scale_up", "scale_down", "replica_failed", "signals_lost", "signals_restored",
                         "shadow_decision", "nack"})
DECISIONS_SHOWN = 60
EVENTS_KEPT = 100


def asset(name: str) -> bytes:
    """One of :data:`ASSETS`, read from the package."""
    return resources.files(__name__).joinpath(name).read_bytes()


class Dashboard:
    """The state the page shows, from ``port`` (and ``metrics`` when the control plane autoscales)."""

    def __init__(self, port: ControlPlanePort, metrics: Any = None) -> None:
        self.port = port
        self.metrics: ControllerMetrics | None = metrics
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self._unsubscribe = port.subscribe_events(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("kind") in EVENT_KINDS:
            ev.setdefault("at", time.time())
            self.events.append({k: _json(v) for k, v in ev.items() if k != "resources"})

    def state(self) -> dict[str, Any]:
        port = self.port
        alerts = dict(port.signal_alerts())
        snap = port.snapshot()
        pools = []
        for svc in port.config.services:
            for pc in svc.pools:
                pools.append(self._pool(svc.name, pc.name, snap, alerts.get(pc.name)))
        xs = port.xds_status()
        decisions = port.decisions()[-DECISIONS_SHOWN:]
        return _json({
            "at": time.time(),
            "instance": port.instance(),
            "leader": port.is_leader(),
            "alerts": [{"pool": p, "message": m} for p, m in sorted(alerts.items())],
            "pools": pools,
            "decisions": [asdict(d) for d in reversed(decisions)],
            "events": list(reversed(self.events)),
            "xds": {"version": xs.version, "last_good_version": xs.last_good_version, "last_error": xs.last_error,
                    "rejections": [asdict(r) for r in xs.rejections[-10:]],
                    "proxies": [asdict(p) for p in xs.proxies]},
        })

    def _pool(self, service: str, pool: str, snap: Any, alert: str | None) -> dict[str, Any]:
        view = self.port.pool_view(pool)
        out: dict[str, Any] = {"service": service, "pool": pool, "autoscaled": view is not None, "alert": alert}
        if view is None:  # a static pool: the endpoints as published
            plan = snap.plan.pool(pool) if snap is not None else None
            out["endpoints"] = [
                {"replica": "", "key": e.key, "zone": e.locality.zone, "state": e.health.name.lower(),
                 "phase": "static", "weight": e.weight} for e in (plan.endpoints if plan is not None else ())]
            return out
        tick = view.last_tick
        m = self.metrics
        hist = m.history.get(pool) if m is not None else None
        signals = m.signals.get(pool, {}) if m is not None else {}
        endpoints = []
        for e in tick.endpoints if tick is not None else ():
            s = signals.get(e.key)
            ttft = e.latency_s if e.latency_s is not None else (s.ttft_s if s is not None else None)
            endpoints.append({"replica": e.replica_id, "key": e.key, "zone": e.zone, "state": e.state,
                              "phase": e.phase, "weight": e.weight, "load": e.load, "running": e.running,
                              "waiting": e.waiting, "kv_cache": s.kv_cache if s is not None else None,
                              "ttft_s": ttft})
        spec = view.spec
        li = getattr(spec, "load_index", None)
        out.update({
            "policy": spec.policy, "paused": view.paused, "min_replicas": spec.min_replicas,
            "max_replicas": spec.max_replicas,
            "current": tick.current if tick else None, "target": tick.target if tick else None,
            "ready": tick.ready if tick else None, "planned_replicas": view.planned_replicas,
            "plan_explanation": view.plan_explanation,
            "ttft_target_s": getattr(li, "latency_target_s", None),
            "request_rate": hist.request_rate[-1] if hist and hist.t else None,
            "slo_attainment": hist.slo[-1] if hist and hist.t else None,
            "endpoints": endpoints,
            "shadows": [asdict(s) for s in getattr(view, "shadows", ())],
            "series": hist.as_json() if hist is not None else None,
        })
        return out


def add_dashboard_routes(app: web.Application, cp: ControlPlane) -> None:
    """Serve the dashboard of ``cp`` on ``app``: ``/``, its assets and ``/api/state``."""
    holder: dict[str, Dashboard] = {}

    def dashboard() -> Dashboard:
        # built on first use: the controller (and its metrics) exist by then, the event feed is subscribed once
        if "d" not in holder:
            holder["d"] = Dashboard(RuntimeAdminPort(cp), cp.controller_metrics)
        return holder["d"]

    async def page(req: web.Request) -> web.Response:
        name = req.match_info.get("name") or "index.html"
        if name not in ASSETS:
            raise web.HTTPNotFound(text=f"no dashboard asset {name!r}\n")
        return web.Response(body=asset(name), content_type=ASSETS[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def api_state(_req: web.Request) -> web.Response:
        return web.json_response(dashboard().state(), headers={"Cache-Control": "no-store"})

    async def cleanup(_app: web.Application) -> None:
        if "d" in holder:
            holder.pop("d").close()

    app.router.add_get("/", page)
    app.router.add_get("/{name:dashboard\\.(?:js|css)}", page)
    app.router.add_get("/api/state", api_state)
    app.on_cleanup.append(cleanup)


def _json(v: Any) -> Any:
    """``v`` with tuples as lists, mappings as dicts, enums and other objects as strings, NaN/inf as None."""
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, deque)):
        return [_json(x) for x in v]
    if hasattr(v, "items"):
        return {str(k): _json(x) for k, x in v.items()}
    return str(v)


__all__ = ["ASSETS", "Dashboard", "add_dashboard_routes", "asset"]
