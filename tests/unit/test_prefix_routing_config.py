"""``routing: prefix`` in the config: validation naming key, value and range, and the Envoy resources it becomes.

Other pools' resources are untouched (the snapshot tests check them byte for byte); here: the affinity pool gets
the override-host policy over least request (or Maglev with the bound), its route the endpoints (or the hash
policy) and the per-route Lua settings, its listener the disabled filter.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.override_host.v3 import override_host_pb2

from xds_control.config import parse_config, to_traffic_plan
from xds_control.core.errors import ConfigError
from xds_control.core.traffic import (
    AFFINITY_ATTEMPTS_HEADER,
    AFFINITY_ENDPOINT_HEADER,
    AFFINITY_STALL_HEADER,
    SHED_ATTEMPTS_HEADER,
    SHED_FIRST_BACKLOG_HEADER,
    SHED_STATUS,
    HealthStatus,
)
from xds_control.snapshot import build_snapshot
from xds_control.snapshot import types as T
from xds_control.snapshot.prefix_filter import LUA_FILTER, PREFIX_HEADER, SCRIPT_NAME


def msg(snap: Any, t: str, name: str) -> Any:
    cls = {T.CLUSTER: cluster_pb2.Cluster, T.ROUTE: route_pb2.RouteConfiguration, T.LISTENER: listener_pb2.Listener}[t]
    return cls.FromString(snap.resources[t][name].body)


def lb_policy(snap: Any, cluster: str, name: str, into: Any) -> Any:
    """The cluster's (only) load-balancing policy, checked to be ``name`` and unpacked into ``into``."""
    pol = msg(snap, T.CLUSTER, cluster).load_balancing_policy.policies[0].typed_extension_config
    assert pol.name == name
    assert pol.typed_config.Unpack(into)
    return into


def cfg(**pool: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "port": 10000}],
        "services": [{"name": "llm", "pools": [
            {"name": "aff", "endpoints": [{"address": "127.0.0.1", "port": 18101}], **pool},
            {"name": "plain", "endpoints": [{"address": "127.0.0.1", "port": 18102}]},
        ]}],
    }


@pytest.mark.parametrize(("pool", "needle"), [
    ({"routing": "prefix", "prefix_routing": {"hash_balance_factor": 99}}, "hash_balance_factor: 99 is invalid"),
    ({"routing": "prefix", "prefix_routing": {"prefix_bytes": 8}}, "prefix_bytes: 8 is invalid"),
    ({"routing": "prefix", "prefix_routing": {"max_body_bytes": 2_000_000}}, "less than or equal to 1048576"),
    ({"routing": "prefix", "prefix_routing": {"prefix_bytes": 8192, "max_body_bytes": 4096}},
     "prefix_bytes (8192) must be <= max_body_bytes (4096)"),
    ({"routing": "prefix", "prefix_routing": {"extract": "body"}}, "extract: 'body' is invalid"),
    ({"routing": "sticky"}, "routing: 'sticky' is invalid"),
    ({"routing": "prefix", "lb_policy": "least_request"}, "lb_policy: 'least_request' cannot be combined"),
    ({"routing": "prefix", "slow_start": {"window_s": 10}, "prefix_routing": {"spill": "maglev"}},
     "slow_start: not supported with routing: 'prefix' and prefix_routing.spill: 'maglev'"),
    ({"routing": "prefix", "prefix_routing": {"spill": "random"}}, "spill: 'random' is invalid"),
    ({"routing": "prefix", "prefix_routing": {"affinity_backlog_s": -1}}, "affinity_backlog_s: -1 is invalid"),
    ({"routing": "prefix", "prefix_routing": {"affinity_choices": 0}}, "affinity_choices: 0 is invalid"),
    ({"routing": "prefix", "prefix_routing": {"affinity_stall_s": -5}}, "affinity_stall_s: -5 is invalid"),
    ({"prefix_routing": {"prefix_bytes": 1024}}, "prefix_routing: only used with routing: 'prefix'"),
])
def test_bad_settings_name_key_and_value(pool: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(cfg(**pool))
    assert "services[0].pools[0]" in str(e.value) and needle in str(e.value), str(e.value)


def test_resources_of_an_affinity_pool_spilling_to_least_request() -> None:
    """The default: the cluster's override-host policy (the filter's pick) over least request (slow start and
    locality settings apply to it); the route passes the routable endpoints to the filter, adds the first
    attempt's bound and retries a shed (429) or refused first attempt once; no hash policy."""
    c = cfg(routing="prefix", prefix_routing={"prefix_bytes": 2048, "affinity_backlog_s": 0.25},
            slow_start={"window_s": 10})
    c["services"][0]["pools"][0]["endpoints"] = [
        {"address": "127.0.0.1", "port": 18101}, {"address": "127.0.0.1", "port": 18103, "weight": 3}]
    plan = to_traffic_plan(parse_config(c))
    snap = build_snapshot(plan, 1)
    ov = lb_policy(snap, "aff", "envoy.load_balancing_policies.override_host", override_host_pb2.OverrideHost())
    assert [s.header for s in ov.override_host_sources] == [AFFINITY_ENDPOINT_HEADER]
    fb = ov.fallback_policy.policies[0].typed_extension_config
    assert fb.name == "envoy.load_balancing_policies.least_request"
    lr = least_request_pb2.LeastRequest()
    fb.typed_config.Unpack(lr)
    assert lr.slow_start_config.slow_start_window.seconds == 10

    route = msg(snap, T.ROUTE, "ingress").virtual_hosts[0].routes[0]
    assert not route.route.hash_policy
    per_route = lua_pb2.LuaPerRoute()
    route.typed_per_filter_config[LUA_FILTER].Unpack(per_route)
    assert dict(per_route.filter_context) == {"prefix_bytes": 2048, "max_body_bytes": 262144, "extract": "auto",
                                              "hosts": "127.0.0.1:18101=1,127.0.0.1:18103=3", "choices": 2}
    wc = {c.name: {h.header.key: h.header.value for h in c.request_headers_to_add}
          for c in route.route.weighted_clusters.clusters}
    assert wc == {"aff": {SHED_FIRST_BACKLOG_HEADER: "0.25", AFFINITY_ATTEMPTS_HEADER: "2", SHED_ATTEMPTS_HEADER: "3"},
                  "plain": {}}
    rp = route.route.retry_policy
    # one attempt on each of the key's two replicas, then one on least request
    assert rp.num_retries.value == 2 and list(rp.retriable_status_codes) == [SHED_STATUS]
    assert set(rp.retry_on.split(",")) >= {"retriable-status-codes", "connect-failure"}
    assert msg(snap, T.ROUTE, "ingress").virtual_hosts[0].include_request_attempt_count

    # a decode-stall budget adds its header to the affinity attempts
    c["services"][0]["pools"][0]["prefix_routing"]["affinity_stall_s"] = 20
    route_s = msg(build_snapshot(to_traffic_plan(parse_config(c)), 1), T.ROUTE, "ingress").virtual_hosts[0].routes[0]
    hdrs = {h.header.key: h.header.value for h in route_s.route.weighted_clusters.clusters[0].request_headers_to_add}
    assert hdrs[AFFINITY_STALL_HEADER] == "20"

    # a DRAINING endpoint leaves the filter's list (the next version of the route), its weight does not matter
    eps = plan.pools[0].endpoints
    drained = replace(plan.pools[0], endpoints=(replace(eps[0], health=HealthStatus.DRAINING), eps[1]))
    snap2 = build_snapshot(replace(plan, pools=(drained, *plan.pools[1:])), 2, snap)
    route2 = msg(snap2, T.ROUTE, "ingress").virtual_hosts[0].routes[0]
    route2.typed_per_filter_config[LUA_FILTER].Unpack(per_route)
    assert per_route.filter_context["hosts"] == "127.0.0.1:18103=3"
    assert snap2.of(T.ROUTE)["ingress"].version != snap.of(T.ROUTE)["ingress"].version
    assert snap2.of(T.CLUSTER)["aff"].version == snap.of(T.CLUSTER)["aff"].version


def test_resources_of_an_affinity_pool_with_maglev() -> None:
    plan = to_traffic_plan(parse_config(cfg(routing="prefix", prefix_routing={"prefix_bytes": 2048,
                                                                               "hash_balance_factor": 150,
                                                                               "spill": "maglev"})))
    snap = build_snapshot(plan, 1)
    mg = lb_policy(snap, "aff", "envoy.load_balancing_policies.maglev", maglev_pb2.Maglev())
    assert mg.consistent_hashing_lb_config.hash_balance_factor.value == 150
    plain = msg(snap, T.CLUSTER, "plain")
    assert plain.load_balancing_policy.policies[0].typed_extension_config.name.endswith("round_robin")

    route = msg(snap, T.ROUTE, "ingress").virtual_hosts[0].routes[0]
    assert [h.header.header_name for h in route.route.hash_policy] == [PREFIX_HEADER]
    per_route = lua_pb2.LuaPerRoute()
    route.typed_per_filter_config[LUA_FILTER].Unpack(per_route)
    assert per_route.name == SCRIPT_NAME
    assert dict(per_route.filter_context) == {"prefix_bytes": 2048, "max_body_bytes": 262144, "extract": "auto"}

    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    lis = msg(snap, T.LISTENER, "ingress")
    hcm = hcm_pb2.HttpConnectionManager()
    lis.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    filters = [(f.name, f.disabled) for f in hcm.http_filters]
    assert filters == [(LUA_FILTER, True), ("envoy.filters.http.router", False)]
    lua = lua_pb2.Lua()
    hcm.http_filters[0].typed_config.Unpack(lua)
    assert "envoy_on_request" in lua.source_codes[SCRIPT_NAME].inline_string


def test_without_prefix_routing_nothing_changes() -> None:
    a = build_snapshot(to_traffic_plan(parse_config(cfg())), 1)
    lis = msg(a, T.LISTENER, "ingress")
    assert LUA_FILTER.encode() not in lis.SerializeToString()
    route = msg(a, T.ROUTE, "ingress").virtual_hosts[0].routes[0]
    assert not route.route.hash_policy and not route.typed_per_filter_config


def test_a_reload_that_only_turns_prefix_routing_on_rebuilds_cluster_and_listener() -> None:
    """Snapshot reuse keys include the prefix settings: a changed ``routing`` is not served from the old version."""
    from xds_control.config import parse_config, to_traffic_plan
    from xds_control.snapshot import build_snapshot
    from xds_control.snapshot import types as T

    def cfg(routing: str) -> dict:  # type: ignore[type-arg]
        return {"listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
                "services": [{"name": "llm", "pools": [{"name": "p", "routing": routing,
                                                         "endpoints": [{"address": "127.0.0.1", "port": 9001},
                                                                       {"address": "127.0.0.1", "port": 9002}]}]}]}

    v1 = build_snapshot(to_traffic_plan(parse_config(cfg("default"))), 1, None)
    v2 = build_snapshot(to_traffic_plan(parse_config(cfg("prefix"))), 2, v1)
    assert v2.of(T.CLUSTER)["p"].version != v1.of(T.CLUSTER)["p"].version
    assert v2.of(T.LISTENER)["ingress"].version != v1.of(T.LISTENER)["ingress"].version
    assert v2.of(T.CLUSTER)["p"].body != v1.of(T.CLUSTER)["p"].body
