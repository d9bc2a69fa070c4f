"""Plan values -> Envoy v3 protobuf messages. Pure: no I/O, no clocks.

Each builder takes one plan value and returns one message; the snapshot module
decides which ones need rebuilding (building messages is the main cost: about
55 ms for a 10,000-endpoint ClusterLoadAssignment, so unchanged pools are never
rebuilt).
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.common.v3 import common_pb2 as lb_common_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from xds_control.core.traffic import (
    AFFINITY_ATTEMPTS_HEADER,
    AFFINITY_ENDPOINT_HEADER,
    AFFINITY_STALL_HEADER,
    SHED_ATTEMPTS_HEADER,
    SHED_BACKLOG_HEADER,
    SHED_FIRST_BACKLOG_HEADER,
    SHED_STATUS,
    EndpointPlan,
    HealthStatus,
    LbPolicy,
    ListenerPlan,
    Locality,
    PoolPlan,
    PrefixRoutingPlan,
    ServicePlan,
    ShedPlan,
)
from xds_control.snapshot import prefix_filter


def _dur(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(seconds * 1e9)))
    return d


def _pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


_HEALTH = {
    HealthStatus.HEALTHY: health_check_pb2.HEALTHY,
    HealthStatus.UNHEALTHY: health_check_pb2.UNHEALTHY,
    HealthStatus.DRAINING: health_check_pb2.DRAINING,
    HealthStatus.DEGRADED: health_check_pb2.DEGRADED,
}


def _locality(loc: Locality) -> base_pb2.Locality:
    return base_pb2.Locality(region=loc.region, zone=loc.zone, sub_zone=loc.sub_zone)


def build_cluster(pool: PoolPlan) -> cluster_pb2.Cluster:
    """An EDS cluster whose endpoints come over ADS under the pool's name."""
    c = cluster_pb2.Cluster(
        name=pool.name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=_dur(pool.connect_timeout_s),
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads_source()),
    )
    locality_cfg = None
    if pool.locality_weights is not None:
        locality_cfg = lb_common_pb2.LocalityLbConfig(
            locality_weighted_lb_config=lb_common_pb2.LocalityLbConfig.LocalityWeightedLbConfig()
        )
    slow_start = None
    if pool.slow_start_window_s:
        slow_start = lb_common_pb2.SlowStartConfig(
            slow_start_window=_dur(pool.slow_start_window_s),
            aggression=base_pb2.RuntimeDouble(
                default_value=pool.slow_start_aggression, runtime_key="xds_control.slow_start.aggression"
            ),
            min_weight_percent=percent_pb2.Percent(value=pool.slow_start_min_weight_percent),
        )
    pr = pool.prefix_routing
    if pr is not None and pr.spill == "maglev":
        # Prefix affinity: Maglev on the route's hash (the prompt-prefix header), bounded loads; endpoint and
        # locality weights scale each host's share of the table. No slow start in Maglev (config rejects it).
        mg = maglev_pb2.Maglev(
            consistent_hashing_lb_config=lb_common_pb2.ConsistentHashingLbConfig(
                hash_balance_factor=wrappers_pb2.UInt32Value(value=pr.hash_balance_factor)
            )
        )
        if locality_cfg is not None:
            mg.locality_weighted_lb_config.CopyFrom(locality_cfg.locality_weighted_lb_config)
        c.load_balancing_policy.policies.add(
            typed_extension_config=extension_pb2.TypedExtensionConfig(
                name="envoy.load_balancing_policies.maglev", typed_config=_pack(mg)
            )
        )
        return _cluster_tail(c, pool)
    if pr is not None or pool.lb_policy is LbPolicy.LEAST_REQUEST:
        policy = least_request_pb2.LeastRequest(choice_count=wrappers_pb2.UInt32Value(value=2))
        name = "envoy.load_balancing_policies.least_request"
    elif pool.lb_policy is LbPolicy.RANDOM:
        policy = random_pb2.Random()
        name = "envoy.load_balancing_policies.random"
    else:
        policy = round_robin_pb2.RoundRobin()
        name = "envoy.load_balancing_policies.round_robin"
    if locality_cfg is not None:
        policy.locality_lb_config.CopyFrom(locality_cfg)
    if slow_start is not None and (pr is not None or pool.lb_policy is not LbPolicy.RANDOM):
        policy.slow_start_config.CopyFrom(slow_start)
    ext = extension_pb2.TypedExtensionConfig(name=name, typed_config=_pack(policy))
    if pr is not None:
        # Prefix affinity, spill to least request: the first attempt goes to the endpoint the prefix filter named
        # (the key's replica); a retry, or a request naming no endpoint of this cluster, goes to least request.
        ov = override_host_pb2.OverrideHost(
            override_host_sources=[override_host_pb2.OverrideHost.OverrideHostSource(header=AFFINITY_ENDPOINT_HEADER)]
        )
        ov.fallback_policy.policies.add(typed_extension_config=ext)
        ext = extension_pb2.TypedExtensionConfig(name="envoy.load_balancing_policies.override_host",
                                                 typed_config=_pack(ov))
    c.load_balancing_policy.policies.add(typed_extension_config=ext)
    return _cluster_tail(c, pool)


def _cluster_tail(c: cluster_pb2.Cluster, pool: PoolPlan) -> cluster_pb2.Cluster:
    """Protocol options, outlier detection, health checks and circuit breakers (every balancer)."""
    if pool.http2:
        opts = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
            _pack(opts)
        )
    od = pool.outlier_detection
    if od is not None:
        o = outlier_detection_pb2.OutlierDetection(
            consecutive_5xx=wrappers_pb2.UInt32Value(value=od.consecutive_5xx),
            interval=_dur(od.interval_s),
            base_ejection_time=_dur(od.base_ejection_time_s),
            max_ejection_percent=wrappers_pb2.UInt32Value(value=od.max_ejection_percent),
            success_rate_minimum_hosts=wrappers_pb2.UInt32Value(value=od.success_rate_minimum_hosts),
            success_rate_request_volume=wrappers_pb2.UInt32Value(value=od.success_rate_request_volume),
            success_rate_stdev_factor=wrappers_pb2.UInt32Value(value=od.success_rate_stdev_factor),
            failure_percentage_minimum_hosts=wrappers_pb2.UInt32Value(value=od.failure_percentage_minimum_hosts),
            failure_percentage_request_volume=wrappers_pb2.UInt32Value(
                value=od.failure_percentage_request_volume
            ),
        )
        if od.failure_percentage_threshold is not None:
            o.failure_percentage_threshold.value = od.failure_percentage_threshold
            o.enforcing_failure_percentage.value = 100
        if od.consecutive_gateway_failure is not None:
            o.consecutive_gateway_failure.value = od.consecutive_gateway_failure
            o.enforcing_consecutive_gateway_failure.value = 100
        c.outlier_detection.CopyFrom(o)
    if pool.health_check_path:
        c.health_checks.add(
            timeout=_dur(max(0.2, pool.health_check_interval_s)),
            interval=_dur(pool.health_check_interval_s),
            unhealthy_threshold=wrappers_pb2.UInt32Value(value=2),
            healthy_threshold=wrappers_pb2.UInt32Value(value=1),
            http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path=pool.health_check_path),
        )
    if pool.max_requests is not None:
        c.circuit_breakers.thresholds.add(max_requests=wrappers_pb2.UInt32Value(value=pool.max_requests))
    return c


def with_retry_budget(cluster: cluster_pb2.Cluster, budget_percent: float, min_concurrency: int) -> None:
    """Add Envoy's retry budget to the default-priority circuit breaker (mutates ``cluster``,
    a message this module just built)."""
    if cluster.circuit_breakers.thresholds:
        t = cluster.circuit_breakers.thresholds[0]
    else:
        t = cluster.circuit_breakers.thresholds.add()
    t.retry_budget.CopyFrom(
        circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
            budget_percent=percent_pb2.Percent(value=budget_percent),
            min_retry_concurrency=wrappers_pb2.UInt32Value(value=min_concurrency),
        )
    )


def build_load_assignment(pool: PoolPlan) -> endpoint_pb2.ClusterLoadAssignment:
    """Endpoints grouped by locality, with per-endpoint weights and health, and locality
    weights/priorities when the plan sets them."""
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=pool.name)
    groups: dict[Locality, list[EndpointPlan]] = {}
    for ep in pool.endpoints:
        groups.setdefault(ep.locality, []).append(ep)
    lweights = dict(pool.locality_weights or ())
    lprio = dict(pool.locality_priorities or ())
    for loc in sorted(groups, key=lambda l: (lprio.get(l.key, 0), l.key)):
        lle = cla.endpoints.add(locality=_locality(loc), priority=lprio.get(loc.key, 0))
        if pool.locality_weights is not None:
            lle.load_balancing_weight.value = max(1, int(lweights.get(loc.key, 1)))
        for ep in groups[loc]:
            lle.lb_endpoints.add(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(address=ep.address, port_value=ep.port)
                    )
                ),
                health_status=_HEALTH[ep.health],
                load_balancing_weight=wrappers_pb2.UInt32Value(value=max(1, ep.weight)),
            )
    return cla


def build_route_configuration(
    name: str,
    services: list[ServicePlan],
    pool_names: set[str],
    shed: Mapping[str, ShedPlan] | None = None,
    affinity: Mapping[str, tuple[PrefixRoutingPlan, str]] | None = None,
) -> route_pb2.RouteConfiguration:
    """One virtual host per distinct ``hosts`` list; services sharing it are matched in order.

    Pools with weight 0 are kept in ``weighted_clusters`` (Envoy accepts weight 0) so that a
    pool being drained keeps its cluster referenced until a later version drops it.

    ``shed`` maps a pool name to its :class:`ShedPlan`: that pool's weighted cluster adds the shed headers,
    the virtual host sends ``x-envoy-attempt-count`` and the route retries ``SHED_STATUS`` on another host.

    ``affinity`` maps a prefix-routed pool with ``spill="least_request"`` to its settings and its routable
    endpoints (:func:`affinity_hosts`): the route passes the endpoints to the prefix filter, the pool's weighted
    cluster adds the affinity attempts' bound and count, and the route retries a shed affinity attempt (on the
    key's next replica, then least request).
    """
    shed = shed or {}
    affinity = affinity or {}
    rc = route_pb2.RouteConfiguration(name=name)
    vhosts: dict[tuple[str, ...], route_components_pb2.VirtualHost] = {}
    for svc in services:
        vh = vhosts.get(svc.hosts)
        if vh is None:
            vh = rc.virtual_hosts.add(name=svc.name, domains=list(svc.hosts))
            vhosts[svc.hosts] = vh
        match = route_components_pb2.RouteMatch()
        if svc.regex is not None:
            match.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=svc.regex))
        else:
            match.prefix = svc.prefix
        action = route_components_pb2.RouteAction(timeout=_dur(svc.timeout_s))
        sheds = [shed[p] for p, _w in svc.pools if p in shed]
        affs = [(p, affinity[p]) for p, _w in svc.pools if p in affinity]
        attempts = max([sp.attempts for sp in sheds] + [a.affinity_choices + 1 for _p, (a, _h) in affs], default=1)
        for pool_name, weight in svc.pools:
            wc = action.weighted_clusters.clusters.add(
                name=pool_name, weight=wrappers_pb2.UInt32Value(value=int(weight))
            )
            sp = shed.get(pool_name)
            aff = affinity.get(pool_name)
            headers: list[tuple[str, str]] = []
            if sp is not None:
                headers.append((SHED_BACKLOG_HEADER, f"{sp.backlog_s:g}"))
            if aff is not None:
                headers.append((SHED_FIRST_BACKLOG_HEADER, f"{aff[0].affinity_backlog_s:g}"))
                headers.append((AFFINITY_ATTEMPTS_HEADER, str(aff[0].affinity_choices)))
                if aff[0].affinity_stall_s > 0:
                    headers.append((AFFINITY_STALL_HEADER, f"{aff[0].affinity_stall_s:g}"))
            if headers:
                n = max(sp.attempts if sp is not None else 1, aff[0].affinity_choices + 1 if aff is not None else 1)
                headers.append((SHED_ATTEMPTS_HEADER, str(n)))
            for key, value in headers:
                wc.request_headers_to_add.add(
                    header=base_pb2.HeaderValue(key=key, value=value),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
        if svc.retry is not None or sheds or affs:
            retry_on = svc.retry.retry_on if svc.retry is not None else ""
            num = svc.retry.num_retries if svc.retry is not None else 0
            if sheds or affs:
                vh.include_request_attempt_count = True
                extra = ["retriable-status-codes"]
                if affs:
                    # the key's replica may have gone (scaled down, dead) before the next push: retry elsewhere
                    extra.append("connect-failure")
                for x in extra:
                    if x not in retry_on.split(","):
                        retry_on = ",".join(y for y in (retry_on, x) if y)
                num = max(num, attempts - 1)
            rp = route_components_pb2.RetryPolicy(retry_on=retry_on, num_retries=wrappers_pb2.UInt32Value(value=num))
            if sheds or affs:
                rp.retriable_status_codes.append(SHED_STATUS)
                # A shed answer comes back in microseconds: a jittered back-off from a 2 ms base (at most 20 ms),
                # not Envoy's default 25 ms base.
                rp.retry_back_off.base_interval.CopyFrom(_dur(0.002))
                rp.retry_back_off.max_interval.CopyFrom(_dur(0.02))
            if svc.retry is not None and svc.retry.per_try_timeout_s:
                rp.per_try_timeout.CopyFrom(_dur(svc.retry.per_try_timeout_s))
            # Don't retry on the endpoint that just failed (or shed).
            rp.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts").typed_config.Pack(
                _previous_hosts()
            )
            rp.host_selection_retry_max_attempts = 3
            action.retry_policy.CopyFrom(rp)
        route = vh.routes.add(name=svc.name, match=match, route=action)
        if svc.prefix_routing is not None:
            _prefix_route(route, svc.prefix_routing, ";".join(hosts for _p, (_pr, hosts) in affs))
    return rc


def affinity_hosts(pool: PoolPlan) -> str:
    """The prefix filter's endpoint list for ``pool`` (``spill="least_request"``): ``address:port=weight`` of
    each endpoint that takes new requests (healthy or degraded, weight >= 1), comma-separated, in plan order.
    Envoy's override-host policy matches the names against its host map (``address:port``)."""
    return ",".join(f"{ep.key}={ep.weight}" for ep in pool.endpoints
                    if ep.weight >= 1 and ep.health in (HealthStatus.HEALTHY, HealthStatus.DEGRADED))


def _prefix_route(route: route_components_pb2.Route, pr: PrefixRoutingPlan, hosts: str) -> None:
    """Enable the listener's prefix-key Lua filter on ``route``: with ``spill="maglev"`` hash on the key it sets
    (a request without the header gets no hash from this policy, and Envoy's hashing balancers then pick a random
    hash: the plain bounded-load choice); with ``spill="least_request"`` pass it the pools' endpoints (``hosts``:
    one :func:`affinity_hosts` list per pool, ``;``-separated), from which it names the key's replica.
    """
    ctx = struct_pb2.Struct()
    fields: dict[str, str | int] = {"prefix_bytes": pr.prefix_bytes, "max_body_bytes": pr.max_body_bytes,
                                 "extract": pr.extract}
    if pr.spill == "maglev":
        route.route.hash_policy.add(
            header=route_components_pb2.RouteAction.HashPolicy.Header(header_name=prefix_filter.PREFIX_HEADER)
        )
    else:
        fields["hosts"] = hosts
        fields["choices"] = pr.affinity_choices
    ctx.update(fields)
    per_route = lua_pb2.LuaPerRoute(name=prefix_filter.SCRIPT_NAME, filter_context=ctx)
    route.typed_per_filter_config[prefix_filter.LUA_FILTER].CopyFrom(_pack(per_route))


def _previous_hosts() -> Message:
    from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

    msg: Message = previous_hosts_pb2.PreviousHostsPredicate()
    return msg


def build_listener(lst: ListenerPlan) -> listener_pb2.Listener:
    """An HTTP listener whose routes come over ADS as the RouteConfiguration named like it."""
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=lst.name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads_source(), route_config_name=lst.name),
    )
    if lst.prefix_filter:
        # Disabled unless a route enables it (the routes of prefix-routed services do): other routes pay nothing.
        lua = lua_pb2.Lua(source_codes={
            prefix_filter.SCRIPT_NAME: base_pb2.DataSource(inline_string=prefix_filter.SCRIPT)
        })
        hcm.http_filters.add(name=prefix_filter.LUA_FILTER, typed_config=_pack(lua), disabled=True)
    hcm.http_filters.add(name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router()))
    lis = listener_pb2.Listener(
        name=lst.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=lst.address, port_value=lst.port)
        ),
    )
    chain = lis.filter_chains.add()
    chain.filters.add(name="envoy.filters.network.http_connection_manager", typed_config=_pack(hcm))
    # Let in-flight requests finish when a listener is replaced or removed.
    lis.drain_type = listener_pb2.Listener.DEFAULT
    return lis


__all__ = [
    "affinity_hosts",
    "build_cluster",
    "build_listener",
    "build_load_assignment",
    "build_route_configuration",
    "with_retry_budget",
]
