"""The admin gRPC service (grpc.aio) on its own port: read, act and watch, with auth, health and reflection.

``start_admin(cp, port)`` mounts :class:`AdminServicer` for a running control plane, seen only through its
:class:`~xds_control.admin.port.ControlPlanePort` (read views and operator commands; the runtime implements it),
on ``config.admin.address``:``port`` (TLS/mTLS when ``admin.tls`` is set) and returns an :class:`AdminServer`
(``.port``, ``await .stop()``).

Status codes: INVALID_ARGUMENT names the request field; NOT_FOUND for an unknown service, pool or endpoint
(another tenant's service is indistinguishable from a missing one); FAILED_PRECONDITION for acting on a
paused, draining or non-autoscaled target; PERMISSION_DENIED for a role that may not do it; UNAUTHENTICATED
from the interceptor. An unexpected exception is logged and answered INTERNAL; the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xds_control.admin.auth import (
    PRINCIPAL,
    Authenticator,
    AuthInterceptor,
    Principal,
    admin_bind_problem,
    is_loopback,
)
from xds_control.admin.events import EventLog
from xds_control.admin.port import ControlPlanePort, PoolView
from xds_control.admin.proto import load
from xds_control.config.policy import merge_overrides, resolve_policy
from xds_control.config.schema import ServiceConfig
from xds_control.core.errors import SpecError
from xds_control.core.traffic import HealthStatus
from xds_control.policies import POLICIES, PolicySpec, load_policy_spec
from xds_control.snapshot import types as T
from xds_control.xds.tls import add_port

pb, pb_grpc = load()
log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name

_TYPES = {
    "cds": T.CLUSTER, "clusters": T.CLUSTER, "cluster": T.CLUSTER,
    "eds": T.ENDPOINT, "endpoints": T.ENDPOINT, "endpoint": T.ENDPOINT,
    "lds": T.LISTENER, "listeners": T.LISTENER, "listener": T.LISTENER,
    "rds": T.ROUTE, "routes": T.ROUTE, "route": T.ROUTE,
}
_MAX_TEXT = 500
#: What a tenant-scoped caller reads instead of a NACK's text when the change also concerns other tenants.
class _NoFilter:
    """A WatchEvents request with no kinds/service filter (for the per-tenant visibility check)."""

    kinds: tuple[str, ...] = ()
    service = ""


_NO_FILTER = _NoFilter()
_WITHHELD = "a proxy rejected a change that includes services outside yours (details withheld)"


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, why: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {why}")


def not_found(what: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, what)


def precondition(why: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, why)


def rpc(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Authorize (role), map ApiError to its status, and never let an exception crash the call."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        async def handler(self: AdminServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            principal = PRINCIPAL.get()
            try:
                if principal is None:
                    raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "not authenticated")
                if not principal.can(role):
                    raise ApiError(grpc.StatusCode.PERMISSION_DENIED,
                                   f"{fn.__name__} needs the {role} role; {principal} has {principal.role}")
                return fn(self, principal, request)
            except ApiError as e:
                err = e
            except Exception:  # noqa: BLE001 - logged; the caller gets INTERNAL, the server lives on
                log.exception("admin %s failed", fn.__name__)
                err = ApiError(grpc.StatusCode.INTERNAL, f"{fn.__name__} failed unexpectedly (see the server log)")
            await context.abort(err.code, err.message)

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return wrap


def _opt(x: float | None) -> dict[str, float]:
    return {} if x is None or (isinstance(x, float) and not math.isfinite(x)) else {"v": float(x)}


def _check_text(field: str, value: str, required: bool = False, limit: int = 253) -> str:
    if required and not value:
        raise invalid(field, "is required")
    if len(value) > limit:
        raise invalid(field, f"is {len(value)} characters long; at most {limit}")
    if any(not c.isprintable() for c in value):
        raise invalid(field, "contains non-printable characters")
    return value


def _check_endpoint(value: str) -> str:
    _check_text("endpoint", value, required=True)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise invalid("endpoint", f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8000)")
    return value


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, bool)) or v is None:
        return v
    if isinstance(v, (int, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    return str(v)


def _struct(d: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(_jsonable(d))
    return s


def _from_struct(s: struct_pb2.Struct) -> dict[str, Any]:
    """Struct -> dict, with integral numbers as ints (Struct only has doubles)."""

    def fix(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(json_format.MessageToDict(s))


@dataclass
class _Target:
    service: ServiceConfig
    pool: str
    health: str  # published health ("" when not published)
    draining: bool


class AdminServicer(pb_grpc.AdminServicer):  # type: ignore[name-defined]  # stubs generated at import (admin/proto.py)
    def __init__(self, cp: ControlPlanePort, events: EventLog) -> None:
        self.cp = cp
        self.events = events
        #: (event seq, tenant) -> (visible to that tenant, its message or None). Every watcher of one tenant
        #: gets the same event message, so it is built once, not once per watcher (200 watchers of one event
        #: each building it held ACK processing up for tens of milliseconds).
        self._event_cache: OrderedDict[tuple[int, str], tuple[bool, Any]] = OrderedDict()

    # -- lookups ------------------------------------------------------------------------------------
    def _services(self, p: Principal) -> list[ServiceConfig]:
        return [s for s in self.cp.config.services if p.sees(s.tenant)]

    def _service(self, p: Principal, name: str) -> ServiceConfig:
        _check_text("service", name, required=True)
        for s in self.cp.config.services:
            if s.name == name and p.sees(s.tenant):
                return s
        raise not_found(f"service {name!r} not found")

    def _pools(self, svc: ServiceConfig, pool: str) -> list[PoolView]:
        """The autoscaled pools of ``svc`` an action targets (``pool`` empty = all of them)."""
        _check_text("pool", pool)
        names = [p.name for p in svc.pools]
        if pool and pool not in names:
            raise not_found(f"pool {pool!r} not found in service {svc.name!r}")
        views = [v for n in ([pool] if pool else names) if (v := self.cp.pool_view(n)) is not None]
        if not views:
            raise precondition(f"{'pool ' + repr(pool) if pool else 'service ' + repr(svc.name)} is not autoscaled")
        return views

    def _published(self) -> Any:
        snap = self.cp.snapshot()
        return snap.plan if snap is not None else None

    def _target(self, p: Principal, service: str, endpoint: str, pool: str = "") -> _Target:
        svc = self._service(p, service)
        key = _check_endpoint(endpoint)
        _check_text("pool", pool)
        if pool and pool not in {pc.name for pc in svc.pools}:
            raise not_found(f"pool {pool!r} not found in service {svc.name!r}")
        plan = self._published()
        drains = self.cp.overrides().drains
        found: list[_Target] = []
        for pc in svc.pools:
            if pool and pc.name != pool:
                continue
            pub = plan.pool(pc.name) if plan is not None else None
            pe = next((e for e in (pub.endpoints if pub else ()) if e.key == key), None)
            pv = self.cp.pool_view(pc.name)
            phase = pv.phases.get(key) if pv is not None else None
            static = any(f"{e.address}:{e.port}" == key for e in pc.endpoints)
            if pe is None and phase is None and not static:
                continue
            health = pe.health.value if pe is not None else ""
            draining = ((pc.name, key) in drains or health == HealthStatus.DRAINING.value
                        or phase in ("draining", "removable"))
            found.append(_Target(svc, pc.name, health, draining))
        if not found:
            raise not_found(f"endpoint {key!r} not found in " + (f"pool {pool!r}" if pool else f"service {svc.name!r}"))
        if len(found) > 1:
            raise invalid("pool", f"endpoint {key} is in pools {', '.join(t.pool for t in found)}; name one")
        return found[0]

    def _record(self, p: Principal, kind: str, message: str, reason: str, **detail: Any) -> int:
        _check_text("reason", reason, limit=_MAX_TEXT)
        ev = {"kind": "action", "action": kind, "actor": str(p), "message": message, **detail}
        if reason:
            ev["reason"] = reason
        self.events.append(ev)
        log.info("admin: %s by %s%s", message, p, f" ({reason})" if reason else "")
        return int(ev["seq"])

    def _service_of_pool(self, pool: str) -> ServiceConfig | None:
        for s in self.cp.config.services:
            if any(p.name == pool for p in s.pools):
                return s
        return None

    def _scope(self, p: Principal, attributed: bool, services: Any, type_: str, resources: Any) -> str:
        """How much of an ACK/NACK a caller sees: ``all``; ``withheld`` (it concerns the caller's services and
        others': no text); ``hidden`` (none of the caller's services, or not attributable)."""
        if p.all_tenants:
            return "all"
        if not attributed:
            return "hidden"
        names = {str(x) for x in services or ()}
        if type_ in ("CDS", "EDS"):
            names.update(s.name for r in resources or () if (s := self._service_of_pool(str(r))) is not None)
        tenants = {s.tenant for s in self.cp.config.services if s.name in names}
        if len(tenants) < 1 or names - {s.name for s in self.cp.config.services}:
            tenants.add("\0unknown")  # a service the config no longer has: not the caller's
        mine = {t for t in tenants if p.sees(t)}
        if not mine:
            return "hidden"
        return "all" if mine == tenants else "withheld"

    def _own_text(self, p: Principal, text: str) -> str:
        """``text`` (a refused publish) for ``p``: shown to a tenant-scoped caller only when every name it
        quotes is one of the caller's services or pools; else nothing."""
        if not text or p.all_tenants:
            return text
        mine = {n for s in self._services(p) for n in (s.name, *(pc.name for pc in s.pools))}
        quoted = set(re.findall(r"'([^']*)'", text))
        return text if quoted and quoted <= mine else ""

    # -- Read ---------------------------------------------------------------------------------------
    @rpc("viewer")
    def GetStatus(self, p: Principal, req: Any) -> Any:
        st = self.cp.xds_status()
        out = pb.Status(version=st.version, last_good_version=st.last_good_version, leader=self.cp.is_leader(),
                        instance=self.cp.instance(), last_error=self._own_text(p, st.last_error), caller=str(p))
        alerts = self.cp.signal_alerts()
        for svc in self._services(p):
            for pc in svc.pools:
                if pc.name in alerts:
                    out.alerts.append(f"signals lost for pool {pc.name}: {alerts[pc.name]}")
                pv = self.cp.pool_view(pc.name)
                if pv is not None:
                    out.policies.add(service=svc.name, pool=pc.name, policy=pv.spec.policy, paused=pv.paused,
                                     min_replicas=pv.spec.min_replicas, max_replicas=pv.spec.max_replicas)
        # A tenant-scoped caller sees only rejections of its own services; text naming others' is withheld.
        scoped = [(n, self._scope(p, n.attributed, n.services, n.type, n.resources)) for n in st.rejections]
        by_version: dict[tuple[str, str, int | None], str] = {(n.node, n.type, n.version): sc for n, sc in scoped}
        last_nack = {n.node: (n, sc) for n, sc in scoped if sc != "hidden"}
        for px in st.proxies:
            pr = out.proxies.add(node_id=px.node, cluster=px.cluster, protocol=px.protocol, peer=px.peer)
            for ty in px.types:
                state, error = ty.state, ty.error
                if error and not p.all_tenants:
                    sc = by_version.get((px.node, ty.type, ty.error_version), "hidden")
                    if sc == "hidden":  # not the caller's change: the proxy just has not taken the newest yet
                        state, error = ("STALE" if state == "ERROR" else state), ""
                    elif sc == "withheld":
                        error = _WITHHELD
                ts = pr.types.add(type=ty.type, state=state, nonce=ty.nonce, error=error)
                if ty.sent_version is not None:
                    ts.sent_version = ty.sent_version
                if ty.acked_version is not None:
                    ts.acked_version = ty.acked_version
            hit = last_nack.get(px.node)
            if hit is not None:
                n, sc = hit
                pr.last_nack.CopyFrom(pb.Nack(type=n.type, version=n.version,
                                              message=n.message if sc == "all" else _WITHHELD, at=n.at))
        return out

    @rpc("viewer")
    def ListServices(self, p: Principal, req: Any) -> Any:
        plan = self._published()
        out = pb.ListServicesResponse()
        for svc in self._services(p):
            si = out.services.add(name=svc.name, tenant=svc.tenant)
            for pc in svc.pools:
                pub = plan.pool(pc.name) if plan is not None else None
                in_rot = sum(1 for e in (pub.endpoints if pub else ()) if e.health is HealthStatus.HEALTHY)
                pi = si.pools.add(name=pc.name, weight=pc.weight, autoscaled=pc.autoscale is not None,
                                  in_rotation=in_rot)
                pv = self.cp.pool_view(pc.name)
                if pv is not None:
                    pi.policy, pi.paused = pv.spec.policy, pv.paused
                    pi.min_replicas, pi.max_replicas = pv.spec.min_replicas, pv.spec.max_replicas
                    if pv.last_tick is not None:
                        pi.replicas, pi.target, pi.ready = pv.last_tick.current, pv.last_tick.target, pv.last_tick.ready
                else:
                    pi.policy = "static"
                    pi.replicas = pi.target = len(pc.endpoints)
                    pi.ready = in_rot
        return out

    @rpc("viewer")
    def ListEndpoints(self, p: Principal, req: Any) -> Any:
        services = [self._service(p, req.service)] if req.service else self._services(p)
        plan = self._published()
        ov = self.cp.overrides()
        out = pb.ListEndpointsResponse()
        for svc in services:
            for pc in svc.pools:
                pub = {e.key: e for e in (plan.pool(pc.name).endpoints if plan and plan.pool(pc.name) else ())}
                pv = self.cp.pool_view(pc.name)
                tick = pv.last_tick if pv is not None else None
                rows: list[tuple[str, dict[str, Any]]] = []
                if pc.autoscale is not None and tick is not None:
                    for view in tick.endpoints:
                        rows.append((view.key, dict(state=view.state, phase=view.phase, zone=view.zone, load=view.load,
                                                    latency=view.latency_s, running=view.running,
                                                    waiting=view.waiting)))
                else:
                    for e in pc.endpoints:
                        k = f"{e.address}:{e.port}"
                        pe = pub.get(k)
                        rows.append((k, dict(state="static", zone=e.zone,
                                             phase="draining" if pe is not None and pe.health is HealthStatus.DRAINING
                                             else "serving")))
                for key, d in rows:
                    pe = pub.get(key)
                    ep = out.endpoints.add(
                        service=svc.name, pool=pc.name, address=key, state=d["state"], phase=d["phase"],
                        weight=pe.weight if pe is not None and pe.health is HealthStatus.HEALTHY else 0,
                        health=pe.health.value if pe is not None else "", zone=d.get("zone", ""),
                        operator_drain=(pc.name, key) in ov.drains)
                    for field, name in (("load_index", "load"), ("latency_s", "latency"), ("running", "running"),
                                        ("waiting", "waiting")):
                        v = _opt(d.get(name))
                        if v:
                            setattr(ep, field, v["v"])
                    if (pc.name, key) in ov.weights:
                        ep.weight_override = ov.weights[(pc.name, key)]
        return out

    @rpc("viewer")
    def GetPlan(self, p: Principal, req: Any) -> Any:
        services = [self._service(p, req.service)] if req.service else self._services(p)
        snap = self.cp.snapshot()
        out = pb.Plan(version=snap.version if snap else 0, reason=(snap.reason if snap and p.all_tenants else ""))
        plan = snap.plan if snap is not None else None
        if plan is None:
            return out
        for svc in services:
            sp = next((s for s in plan.services if s.name == svc.name), None)
            route_w = dict(sp.pools) if sp is not None else {}
            for pc in svc.pools:
                pp = plan.pool(pc.name)
                if pp is None:
                    continue
                po = out.pools.add(service=svc.name, name=pc.name, route_weight=route_w.get(pc.name, 0),
                                   lb_policy=pp.lb_policy.value)
                for e in pp.endpoints:
                    po.endpoints.add(address=e.key, weight=e.weight, health=e.health.value, locality=e.locality.key)
                pv = self.cp.pool_view(pc.name)
                if pv is not None and pv.planned_replicas is not None:
                    po.target_replicas = pv.planned_replicas
                    po.explanation = pv.plan_explanation
                for sh in pv.shadows if pv is not None else ():
                    po.shadows.add(policy=sh.policy, target=sh.target, current=sh.current,
                                   explanation=sh.explanation, would_replica_seconds=sh.would_replica_seconds,
                                   actual_replica_seconds=sh.actual_replica_seconds, mode=sh.mode)
        return out

    @rpc("viewer")
    def GetConfigDump(self, p: Principal, req: Any) -> Any:
        want = _check_text("type", req.type.strip())
        types: tuple[str, ...]
        if not want:
            types = T.ORDER if p.all_tenants else (T.CLUSTER, T.ENDPOINT)
        else:
            t = _TYPES.get(want.lower()) or (want if want in T.ORDER else None)
            if t is None:
                raise invalid("type", f"{want!r} is not one of CDS, EDS, LDS, RDS (or clusters, endpoints, "
                                      "listeners, routes, or a type URL)")
            if t in (T.LISTENER, T.ROUTE) and not p.all_tenants:
                raise ApiError(grpc.StatusCode.PERMISSION_DENIED,
                               f"{T.SHORT[t]} resources are shared by every tenant; {p} sees only its clusters "
                               "and endpoints")
            types = (t,)
        snap = self.cp.snapshot()
        out = pb.ConfigDump(version=snap.version if snap else 0)
        if snap is None:
            return out
        mine = {pc.name for s in self._services(p) for pc in s.pools}
        for t in types:
            tr = out.types.add(type_url=t, type=T.SHORT[t])
            for name, r in sorted(snap.of(t).items()):
                if t in (T.CLUSTER, T.ENDPOINT) and not p.all_tenants and name not in mine:
                    continue
                res = tr.resources.add(name=name, version=r.version)
                res.resource.type_url = t
                res.resource.value = r.body
        return out

    @rpc("viewer")
    def ListDecisions(self, p: Principal, req: Any) -> Any:
        svc = self._service(p, req.service) if req.service else None
        if req.limit > 1000:
            raise invalid("limit", f"{req.limit} is above 1000")
        limit = req.limit or 50
        out = pb.ListDecisionsResponse()
        visible = {s.name for s in self._services(p)}
        picked = []
        for rec in reversed(self.cp.decisions()):
            if rec.service not in visible or (svc is not None and rec.service != svc.name):
                continue
            if req.changes_only and rec.target == rec.current:
                continue
            picked.append(rec)
            if len(picked) >= limit:
                break
        for rec in reversed(picked):
            d = out.decisions.add(at=rec.at, service=rec.service, pool=rec.pool, policy=rec.policy,
                                  current=rec.current, target=rec.target, ready=rec.ready, mode=rec.mode,
                                  explanation=rec.explanation, version=rec.version)
            if _opt(rec.load_index):
                d.load_index = rec.load_index
        return out

    # -- Act ----------------------------------------------------------------------------------------
    def _pause(self, p: Principal, req: Any, paused: bool) -> Any:
        svc = self._service(p, req.service)
        pools = self._pools(svc, req.pool)
        todo = [v.pool for v in pools if v.paused != paused]
        if not todo:
            raise precondition(f"autoscaling of {', '.join(v.pool for v in pools)} is already "
                               f"{'paused' if paused else 'running'}")
        _check_text("reason", req.reason, limit=_MAX_TEXT)
        for pool in todo:
            if paused:
                self.cp.pause(pool)
            else:
                self.cp.resume(pool)
        verb = "paused" if paused else "resumed"
        msg = f"autoscaling {verb} for {svc.name}/{','.join(todo)}"
        seq = self._record(p, "pause" if paused else "resume", msg, req.reason, service=svc.name, pools=todo)
        return pb.ActionResult(event_seq=seq, message=msg)

    @rpc("operator")
    def PauseAutoscaling(self, p: Principal, req: Any) -> Any:
        return self._pause(p, req, True)

    @rpc("operator")
    def ResumeAutoscaling(self, p: Principal, req: Any) -> Any:
        return self._pause(p, req, False)

    def _set_spec(self, pools: list[PoolView], build: Callable[[PoolView], PolicySpec], prefix: str,
                  default: str) -> list[PolicySpec]:
        """Validate a new spec for every pool first (all or nothing), then put them in force."""
        specs = []
        for v in pools:
            try:
                specs.append(build(v))
            except SpecError as e:
                raise invalid(*_spec_problem(e, v.pool, prefix, default)) from None
        for v, spec in zip(pools, specs, strict=True):
            self.cp.set_policy(v.pool, spec)
        return specs

    @rpc("admin")
    def SetPolicy(self, p: Principal, req: Any) -> Any:
        svc = self._service(p, req.service)
        name = _check_text("policy", req.policy.strip())
        if name and name not in POLICIES:
            raise invalid("policy", f"{name!r} is not a preset; one of {', '.join(POLICIES)}")
        overrides = _from_struct(req.overrides)
        if "policy" in overrides:
            raise invalid("overrides.policy", "set the policy with the policy field")
        if not name and not overrides:
            raise invalid("policy", "give a policy, overrides, or both")
        pools = self._pools(svc, req.pool)

        def build(v: PoolView) -> PolicySpec:
            if name:  # a preset with the request's overrides: the same resolution as the config file's
                return resolve_policy(name, overrides)
            # overrides on the spec in force
            return load_policy_spec(merge_overrides(v.spec.model_dump(mode="python"), overrides))

        specs = self._set_spec(pools, build, "overrides.", "overrides")
        names = [v.pool for v in pools]
        msg = (f"policy of {svc.name}/{','.join(names)} set to {specs[0].policy}"
               + (f" with {json.dumps(overrides, sort_keys=True)}" if overrides else ""))
        seq = self._record(p, "set_policy", msg, req.reason, service=svc.name, pools=names,
                           policy=specs[0].policy, overrides=overrides)
        return pb.ActionResult(event_seq=seq, message=msg)

    @rpc("operator")
    def SetReplicaBounds(self, p: Principal, req: Any) -> Any:
        svc = self._service(p, req.service)
        upd: dict[str, int] = {}
        if req.HasField("min_replicas"):
            upd["min_replicas"] = req.min_replicas
        if req.HasField("max_replicas"):
            upd["max_replicas"] = req.max_replicas
        if not upd:
            raise invalid("min_replicas", "set min_replicas, max_replicas or both")
        pools = self._pools(svc, req.pool)
        self._set_spec(pools, lambda v: load_policy_spec({**v.spec.model_dump(mode="python"), **upd}), "",
                       next(iter(upd)))
        names = [v.pool for v in pools]
        msg = (f"replica bounds of {svc.name}/{','.join(names)} set: "
               + ", ".join(f"{k}={v}" for k, v in upd.items()))
        seq = self._record(p, "set_replica_bounds", msg, req.reason, service=svc.name, pools=names, **upd)
        return pb.ActionResult(event_seq=seq, message=msg)

    @rpc("operator")
    def SetWeightOverride(self, p: Principal, req: Any) -> Any:
        t = self._target(p, req.service, req.endpoint, req.pool)
        if not 1 <= req.weight <= 1_000_000:
            raise invalid("weight", f"{req.weight} is outside 1..1000000 (drain the endpoint to take it out)")
        if t.draining:
            raise precondition(f"endpoint {req.endpoint} is draining; its weight cannot be set")
        _check_text("reason", req.reason, limit=_MAX_TEXT)
        self.cp.set_weight_override(t.pool, req.endpoint, req.weight)
        msg = f"weight of {req.endpoint} ({t.service.name}/{t.pool}) pinned to {req.weight}"
        self.cp.publish_static(msg)
        seq = self._record(p, "weight_set", msg, req.reason, service=t.service.name, pool=t.pool,
                           endpoint=req.endpoint, weight=req.weight)
        return pb.ActionResult(event_seq=seq, message=msg)

    @rpc("operator")
    def ClearWeightOverride(self, p: Principal, req: Any) -> Any:
        t = self._target(p, req.service, req.endpoint, req.pool)
        if (t.pool, req.endpoint) not in self.cp.overrides().weights:
            raise precondition(f"endpoint {req.endpoint} has no weight override")
        _check_text("reason", req.reason, limit=_MAX_TEXT)
        self.cp.clear_weight_override(t.pool, req.endpoint)
        msg = f"weight override of {req.endpoint} ({t.service.name}/{t.pool}) cleared"
        self.cp.publish_static(msg)
        seq = self._record(p, "weight_clear", msg, req.reason, service=t.service.name, pool=t.pool,
                           endpoint=req.endpoint)
        return pb.ActionResult(event_seq=seq, message=msg)

    @rpc("operator")
    def DrainEndpoint(self, p: Principal, req: Any) -> Any:
        t = self._target(p, req.service, req.endpoint, req.pool)
        if t.draining:
            raise precondition(f"endpoint {req.endpoint} is already draining")
        _check_text("reason", req.reason, limit=_MAX_TEXT)
        self.cp.drain(t.pool, req.endpoint)
        then = ("it is removed once idle and replaced" if self.cp.pool_view(t.pool) is not None
                else "it stays DRAINING until undrained")
        msg = f"draining {req.endpoint} ({t.service.name}/{t.pool}): {then}"
        self.cp.publish_static(msg)
        seq = self._record(p, "drain", msg, req.reason, service=t.service.name, pool=t.pool, endpoint=req.endpoint)
        return pb.ActionResult(event_seq=seq, message=msg)

    @rpc("operator")
    def UndrainEndpoint(self, p: Principal, req: Any) -> Any:
        t = self._target(p, req.service, req.endpoint, req.pool)
        if (t.pool, req.endpoint) not in self.cp.overrides().drains:
            raise precondition(f"endpoint {req.endpoint} was not drained by an operator")
        _check_text("reason", req.reason, limit=_MAX_TEXT)
        self.cp.undrain(t.pool, req.endpoint)
        msg = f"drain of {req.endpoint} ({t.service.name}/{t.pool}) cancelled"
        self.cp.publish_static(msg)
        seq = self._record(p, "undrain", msg, req.reason, service=t.service.name, pool=t.pool,
                           endpoint=req.endpoint)
        return pb.ActionResult(event_seq=seq, message=msg)

    # -- Watch --------------------------------------------------------------------------------------
    def _tenant_view(self, p: Principal, ev: Mapping[str, Any]) -> tuple[bool, Any]:
        """Whether ``p``'s tenant may see ``ev``, and the message it gets (cached per event and tenant)."""
        key = (int(ev["seq"]), p.tenant)
        hit = self._event_cache.get(key)
        if hit is not None:
            return hit
        visible = self._event_visible(p, ev, _NO_FILTER)
        out = (visible, self._event_pb(p, ev) if visible else None)
        self._event_cache[key] = out
        while len(self._event_cache) > 4096:
            self._event_cache.popitem(last=False)
        return out

    @staticmethod
    def _event_wanted(ev: Mapping[str, Any], req: Any, msg: Any) -> bool:
        """The request's own filters (kinds, service) on an event its tenant may see."""
        if req.kinds and ev.get("kind") not in req.kinds:
            return False
        if not req.service:
            return True
        if ev.get("kind") in ("ack", "nack"):
            return req.service in (ev.get("services") or ())
        return bool(msg.service == req.service)

    def _event_visible(self, p: Principal, ev: Mapping[str, Any], req: Any) -> bool:
        if ev.get("kind") in ("ack", "nack"):
            if self._xds_scope(p, ev) == "hidden":
                return False
            if req.kinds and ev.get("kind") not in req.kinds:
                return False
            return not req.service or req.service in (ev.get("services") or ())
        svc_name = ev.get("service")
        if not svc_name and ev.get("pool"):
            s = self._service_of_pool(str(ev["pool"]))
            svc_name = s.name if s is not None else None
        if svc_name:
            s = next((x for x in self.cp.config.services if x.name == svc_name), None)
            if s is not None and not p.sees(s.tenant):
                return False
        if req.kinds and ev.get("kind") not in req.kinds:
            return False
        return not (req.service and svc_name != req.service)

    def _xds_scope(self, p: Principal, ev: Mapping[str, Any]) -> str:
        return self._scope(p, bool(ev.get("attributed")), ev.get("services"), str(ev.get("type") or ""),
                           ev.get("resources"))

    def _event_pb(self, p: Principal, ev: Mapping[str, Any]) -> Any:
        svc = ev.get("service") or ""
        if not svc and ev.get("pool"):
            s = self._service_of_pool(str(ev["pool"]))
            svc = s.name if s is not None else ""
        message = str(ev.get("message") or ev.get("explanation") or ev.get("reason") or _describe(ev))
        if ev.get("kind") == "push" and not p.all_tenants:
            message = f"v{ev.get('version')}"  # a push's reason may carry other tenants' decisions
        skip = {"seq", "at", "kind", "service", "pool", "endpoint", "actor", "message"}
        detail = {k: v for k, v in ev.items() if k not in skip and not (k == "reason" and ev.get("kind") == "push")}
        if ev.get("kind") in ("ack", "nack") and not p.all_tenants:
            own = {x.name for x in self._services(p)}
            svcs = [x for x in detail.get("services") or () if x in own]
            detail["services"] = svcs
            if len(svcs) == 1:
                svc = svcs[0]
            if self._xds_scope(p, ev) != "all":
                detail.pop("resources", None)
                if ev.get("kind") == "nack":
                    message = _WITHHELD
        return pb.Event(seq=int(ev["seq"]), at=float(ev.get("at", 0.0)), kind=str(ev.get("kind", "")), service=svc,
                        pool=str(ev.get("pool") or ""), endpoint=str(ev.get("endpoint") or ""),
                        actor=str(ev.get("actor") or ""), message=message, detail=_struct(detail))

    async def WatchEvents(self, req: Any, context: grpc.aio.ServicerContext) -> Any:
        p = PRINCIPAL.get()
        try:
            if p is None:
                raise ApiError(grpc.StatusCode.UNAUTHENTICATED, "not authenticated")
            if req.service:
                self._service(p, req.service)
            for k in req.kinds:
                _check_text("kinds", k, required=True, limit=63)
            if req.after_seq > self.events.seq:
                raise ApiError(grpc.StatusCode.OUT_OF_RANGE,
                               f"after_seq: {req.after_seq} is beyond the newest event {self.events.seq} "
                               f"(the server restarted?); resume from 0")
        except ApiError as e:
            await context.abort(e.code, e.message)
            return
        after = req.after_seq
        while True:
            first = self.events.first_seq
            if after + 1 < first:
                yield pb.Event(seq=first - 1, at=time.time(), kind="gap",
                               message=f"events {after + 1}..{first - 1} are no longer buffered")
                after = first - 1
            for ev in self.events.after(after):
                after = int(ev["seq"])
                visible, msg = self._tenant_view(p, ev)
                if visible and self._event_wanted(ev, req, msg):
                    yield msg
            if not req.follow:
                return
            await self.events.wait_beyond(after)


def _describe(ev: Mapping[str, Any]) -> str:
    """A one-line message for controller events that carry none."""
    kind, rid = ev.get("kind"), ev.get("replica", "")
    if kind == "scale_up":
        return f"starting replica {rid}" + (f" in {ev['zone']}" if ev.get("zone") else "")
    if kind == "scale_down":
        return f"stopping drained replica {rid}"
    if kind == "replica_failed":
        return f"replica {rid} failed" + (f": {ev['reason']}" if ev.get("reason") else "; it will be replaced")
    return ""


def _spec_problem(e: SpecError, pool: str, prefix: str, default: str) -> tuple[str, str]:
    """(field, message) for INVALID_ARGUMENT from a policy SpecError: the first bad key names the field."""
    probs = list(e.problems)
    key = probs[0].key if probs else ""
    field = f"{prefix}{key}" if key and key.replace("_", "").replace(".", "").isalnum() else default
    text = "; ".join(str(x) for x in probs) or str(e)
    return field, f"invalid for pool {pool}: {text}"


class AdminServer:
    def __init__(self, server: grpc.aio.Server, port: int, events: EventLog, unsubscribe: Callable[[], None]) -> None:
        self.server = server
        self.port = port
        self.events = events
        self._unsubscribe = unsubscribe

    async def stop(self, grace: float = 0.5) -> None:
        self._unsubscribe()
        await self.server.stop(grace)


def attach_events(cp: ControlPlanePort, events: EventLog) -> Callable[[], None]:
    """Feed the control plane's events (controller events, pushes, ACKs, NACKs) into ``events``; returns the
    detach function."""
    return cp.subscribe_events(events.append)


async def start_admin(cp: ControlPlanePort, port: int = 0) -> AdminServer:
    """Serve the admin API for ``cp`` on ``config.admin.address``:``port`` (0 = any free port)."""
    problem = admin_bind_problem(cp.config)
    if problem:
        raise ValueError(problem)
    a = cp.config.admin
    cache: list[Any] = [None, None]

    def authenticator() -> Authenticator:
        if cache[0] is not cp.config.admin:  # rebuilt when a config reload changed the admin section
            cache[0], cache[1] = cp.config.admin, Authenticator(cp.config.admin)
        return cache[1]

    authenticator()
    events = EventLog()
    detach = attach_events(cp, events)
    server = grpc.aio.server(interceptors=[AuthInterceptor(authenticator)])
    pb_grpc.add_AdminServicer_to_server(AdminServicer(cp, events), server)
    hs = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    try:
        bound = add_port(server, f"{a.address}:{port}", a.tls)
    except OSError as e:
        detach()
        await server.stop(None)
        raise OSError(f"admin API: {e}") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    if a.tls is None and not is_loopback(a.address):
        log.warning("admin API on %s:%d without TLS: bearer tokens cross the network in clear", a.address, bound)
    log.info("admin API on %s:%d%s%s", a.address, bound, " (TLS" + (", mTLS)" if a.tls.client_ca else ")")
             if a.tls else "", "" if authenticator()._entries else " (no tokens: open on loopback)")
    return AdminServer(server, bound, events, detach)




__all__ = ["AdminServer", "AdminServicer", "ApiError", "start_admin", "attach_events", "SERVICE_NAME"]
