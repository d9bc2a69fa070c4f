"""Versioned, immutable, consistency-checked snapshots of Envoy resources. Pure.

Contract:

* :func:`build_snapshot` never returns an inconsistent snapshot: every cluster a
  route names exists, every EDS cluster has an assignment, every route
  configuration a listener names exists. Otherwise it raises
  :class:`~xds_control.core.errors.InconsistentSnapshot` naming the dangling reference.
* A resource whose plan value is equal to the one in ``previous`` is not rebuilt
  or re-serialized: its :class:`Resource` object (and bytes) are reused.
* ``Snapshot.type_versions[t]`` is the snapshot version at which type ``t`` last
  changed, so an unchanged type keeps its SotW ``version_info`` across snapshots.
* Each resource's ``version`` is a hash of its serialized bytes (the Delta xDS
  per-resource version); equal content gives equal versions, also across restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

from xds_control.core.errors import InconsistentSnapshot
from xds_control.core.traffic import PoolPlan, RetryPlan, ServicePlan, TrafficPlan
from xds_control.snapshot import resources as build
from xds_control.snapshot import types as T
from xds_control.snapshot.wire import any_bytes, delta_resource_bytes


@dataclass(frozen=True, slots=True, eq=False)
class Resource:
    """One serialized resource. ``refs`` are the names it depends on in the next type."""

    type_url: str
    name: str
    version: str
    body: bytes
    #: ``google.protobuf.Any`` wrapping ``body``: an element of DiscoveryResponse.resources.
    packed: bytes
    #: ``discovery.v3.Resource`` (name, version, Any): an element of DeltaDiscoveryResponse.resources.
    delta: bytes
    refs: frozenset[str] = frozenset()
    #: The plan value it was built from; equal source -> reuse.
    source: object = None


def make_resource(
    type_url: str, name: str, msg: Message, refs: Iterable[str] = (), source: object = None
) -> Resource:
    body = msg.SerializeToString(deterministic=True)
    version = hashlib.blake2b(body, digest_size=8).hexdigest()
    packed = any_bytes(type_url, body)
    return Resource(
        type_url=type_url,
        name=name,
        version=version,
        body=body,
        packed=packed,
        delta=delta_resource_bytes(name, version, packed),
        refs=frozenset(refs),
        source=source,
    )


_EMPTY: Mapping[str, Resource] = MappingProxyType({})


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    version: int
    resources: Mapping[str, Mapping[str, Resource]]
    type_versions: Mapping[str, int]
    plan: TrafficPlan | None = None
    #: Why this snapshot exists (e.g. "config reload", "rollback of v7"), for logs and the admin API.
    reason: str = ""
    #: Clusters kept only until proxies ACK routes that no longer use them (make-before-break).
    retained: frozenset[str] = field(default=frozenset())

    def of(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    def type_version(self, type_url: str) -> str:
        return str(self.type_versions.get(type_url, 0))

    def content_key(self, type_url: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((n, r.version) for n, r in self.of(type_url).items()))

    def summary(self) -> dict[str, int]:
        return {T.SHORT[t]: len(self.of(t)) for t in T.ORDER}


def check_consistent(resources: Mapping[str, Mapping[str, Resource]]) -> None:
    """Raise InconsistentSnapshot naming the first dangling reference, if any."""
    clusters = resources.get(T.CLUSTER, _EMPTY)
    endpoints = resources.get(T.ENDPOINT, _EMPTY)
    routes = resources.get(T.ROUTE, _EMPTY)
    for name, lis in resources.get(T.LISTENER, _EMPTY).items():
        for rc_name in lis.refs:
            if rc_name not in routes:
                raise InconsistentSnapshot(
                    f"listener {name!r} uses route configuration {rc_name!r}, which does not exist"
                )
    for name, rc in routes.items():
        for cl_name in sorted(rc.refs):
            if cl_name not in clusters:
                raise InconsistentSnapshot(
                    f"route configuration {name!r} routes to cluster {cl_name!r}, which does not exist"
                )
    for name, cl in clusters.items():
        for eds in cl.refs:
            if eds not in endpoints:
                raise InconsistentSnapshot(f"EDS cluster {name!r} has no ClusterLoadAssignment {eds!r}")


#: Shedding pools: the retry budget's floor of concurrent retries (the budget itself is 100 % of active requests).
SHED_MIN_RETRY_CONCURRENCY = 64


def _retry_for_pool(services: Iterable[ServicePlan]) -> dict[str, RetryPlan]:
    out: dict[str, RetryPlan] = {}
    for s in services:
        if s.retry is None:
            continue
        for pool, _w in s.pools:
            out.setdefault(pool, s.retry)
    return out


def _reuse(prev: Mapping[str, Resource], name: str, source: object) -> Resource | None:
    r = prev.get(name)
    if r is not None and r.source == source:
        return r
    return None


def _validate_plan(plan: TrafficPlan) -> None:
    seen: set[str] = set()
    for p in plan.pools:
        if p.name in seen:
            raise InconsistentSnapshot(f"pool {p.name!r} is defined twice")
        seen.add(p.name)
        for ep in p.endpoints:
            if ep.weight < 1:
                raise InconsistentSnapshot(
                    f"pool {p.name!r} endpoint {ep.key}: weight {ep.weight} is invalid; Envoy needs >= 1 "
                    "(mark the endpoint DRAINING to stop new requests)"
                )
    services = {s.name for s in plan.services}
    for s in plan.services:
        if not s.pools or sum(w for _, w in s.pools) <= 0:
            raise InconsistentSnapshot(f"service {s.name!r} has no pool with a weight above 0")
        for _p, w in s.pools:
            if w < 0:
                raise InconsistentSnapshot(f"service {s.name!r}: pool weight {w} is negative")
    for lst in plan.listeners:
        for svc_name in lst.services:
            if svc_name not in services:
                raise InconsistentSnapshot(f"listener {lst.name!r} carries service {svc_name!r}, which does not exist")


def build_snapshot(
    plan: TrafficPlan,
    version: int,
    previous: Snapshot | None = None,
    *,
    reason: str = "",
    extra_pools: Iterable[PoolPlan] = (),
) -> Snapshot:
    """Build and check the snapshot for ``plan``.

    ``extra_pools`` are clusters kept although no route uses them any more (the
    publisher passes the clusters being removed, until every proxy has ACKed the
    routes that stopped using them).
    """
    if previous is not None and version <= previous.version:
        raise ValueError(f"snapshot version {version} must be greater than the previous {previous.version}")
    _validate_plan(plan)
    prev_of = previous.of if previous is not None else (lambda _t: _EMPTY)
    retry = _retry_for_pool(plan.services)

    clusters: dict[str, Resource] = {}
    endpoints: dict[str, Resource] = {}
    extra = list(extra_pools)
    retained = frozenset(p.name for p in extra)
    for pool in list(plan.pools) + extra:
        if pool.name in clusters:
            continue
        rp = retry.get(pool.name)
        csrc = (pool.name, pool.lb_policy, pool.locality_weights, pool.outlier_detection, pool.slow_start_window_s,
                pool.slow_start_aggression, pool.slow_start_min_weight_percent, pool.connect_timeout_s, pool.http2,
                pool.health_check_path, pool.health_check_interval_s, pool.max_requests, rp, pool.prefix_routing,
                pool.shed)
        r = _reuse(prev_of(T.CLUSTER), pool.name, csrc)
        if r is None:
            msg = build.build_cluster(pool)
            if pool.shed is not None or (pool.prefix_routing is not None
                                         and pool.prefix_routing.spill == "least_request"):
                # a shed request (or an affinity request its replica turned away) holds at most one retry: a
                # budget of 100 % of active requests never refuses one
                build.with_retry_budget(msg, 100.0, max(rp.budget_min_concurrency if rp is not None else 0,
                                                        SHED_MIN_RETRY_CONCURRENCY))
            elif rp is not None:
                build.with_retry_budget(msg, rp.budget_percent, rp.budget_min_concurrency)
            r = make_resource(T.CLUSTER, pool.name, msg, refs=(pool.name,), source=csrc)
        clusters[pool.name] = r
        esrc = (pool.name, pool.endpoints, pool.locality_weights, pool.locality_priorities)
        e = _reuse(prev_of(T.ENDPOINT), pool.name, esrc)
        if e is None:
            e = make_resource(T.ENDPOINT, pool.name, build.build_load_assignment(pool), source=esrc)
        endpoints[pool.name] = e

    svc_by_name = {s.name: s for s in plan.services}
    shed_of = {p.name: p.shed for p in plan.pools if p.shed is not None}
    # prefix affinity spilling to least request: the prefix filter picks among the pool's routable endpoints
    affinity_of = {p.name: (p.prefix_routing, build.affinity_hosts(p)) for p in plan.pools
                   if p.prefix_routing is not None and p.prefix_routing.spill == "least_request"}
    listeners: dict[str, Resource] = {}
    routes: dict[str, Resource] = {}
    for lst in plan.listeners:
        lsrc = (lst.name, lst.address, lst.port, lst.prefix_filter)
        r = _reuse(prev_of(T.LISTENER), lst.name, lsrc)
        if r is None:
            r = make_resource(T.LISTENER, lst.name, build.build_listener(lst), refs=(lst.name,), source=lsrc)
        listeners[lst.name] = r
        svcs = [svc_by_name[s] for s in lst.services]
        refs = {p for s in svcs for p, _w in s.pools}
        shed = {p: sp for p in sorted(refs) if (sp := shed_of.get(p)) is not None}
        aff = {p: a for p in sorted(refs) if (a := affinity_of.get(p)) is not None}
        rsrc = (lst.name, tuple(svcs), tuple(shed.items()), tuple(aff.items()))
        rr = _reuse(prev_of(T.ROUTE), lst.name, rsrc)
        if rr is None:
            rr = make_resource(
                T.ROUTE, lst.name, build.build_route_configuration(lst.name, svcs, set(clusters), shed, aff), refs=refs,
                source=rsrc,
            )
        routes[lst.name] = rr

    res = {T.CLUSTER: clusters, T.ENDPOINT: endpoints, T.LISTENER: listeners, T.ROUTE: routes}
    check_consistent(res)
    type_versions: dict[str, int] = {}
    for t in T.ORDER:
        key = tuple(sorted((n, r.version) for n, r in res[t].items()))
        if previous is not None and previous.content_key(t) == key:
            type_versions[t] = previous.type_versions.get(t, previous.version)
        else:
            type_versions[t] = version
    return Snapshot(
        version=version,
        resources=MappingProxyType({t: MappingProxyType(v) for t, v in res.items()}),
        type_versions=MappingProxyType(type_versions),
        plan=plan,
        reason=reason,
        retained=retained,
    )
