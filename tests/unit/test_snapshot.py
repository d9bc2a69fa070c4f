"""Snapshots: consistency, versioning, reuse of unchanged resources, and the wire bytes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from xds_control.config import load_config, to_traffic_plan
from xds_control.core.errors import InconsistentSnapshot
from xds_control.core.traffic import EndpointPlan, HealthStatus, ListenerPlan, RetryPlan, ServicePlan
from xds_control.snapshot import build_snapshot, check_consistent, make_resource
from xds_control.snapshot import types as T
from xds_control.snapshot.wire import field_bytes, field_str, varint

MINIMAL = Path(__file__).resolve().parents[2] / "examples" / "minimal.yaml"


def plan():  # type: ignore[no-untyped-def]
    return to_traffic_plan(load_config(MINIMAL))


def test_minimal_snapshot_has_the_four_types() -> None:
    s = build_snapshot(plan(), 1)
    assert s.summary() == {"CDS": 2, "EDS": 2, "LDS": 1, "RDS": 1}
    rc = route_pb2.RouteConfiguration.FromString(s.of(T.ROUTE)["ingress"].body)
    wc = rc.virtual_hosts[0].routes[0].route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in wc] == [("llm-v1", 80), ("llm-v2", 20)]
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(s.of(T.ENDPOINT)["llm-v1"].body)
    assert sorted(l.locality.zone for l in cla.endpoints) == ["zone-a", "zone-b"]
    c = cluster_pb2.Cluster.FromString(s.of(T.CLUSTER)["llm-v1"].body)
    assert c.type == cluster_pb2.Cluster.EDS and c.eds_cluster_config.eds_config.HasField("ads")


def test_route_to_missing_cluster_is_refused_naming_it() -> None:
    p = plan()
    bad = dataclasses.replace(p, services=(ServicePlan("llm", (("llm-v1", 80), ("ghost", 20))),))
    with pytest.raises(InconsistentSnapshot, match="route configuration 'ingress' routes to cluster 'ghost'"):
        build_snapshot(bad, 1)


def test_listener_with_unknown_service_and_missing_assignment_are_refused() -> None:
    p = plan()
    with pytest.raises(InconsistentSnapshot, match="carries service 'nope'"):
        build_snapshot(dataclasses.replace(p, listeners=(ListenerPlan("ingress", "127.0.0.1", 1, ("nope",)),)), 1)
    s = build_snapshot(p, 1)
    res = {t: dict(s.of(t)) for t in T.ORDER}
    del res[T.ENDPOINT]["llm-v2"]
    with pytest.raises(InconsistentSnapshot, match="EDS cluster 'llm-v2' has no ClusterLoadAssignment"):
        check_consistent(res)
    res = {t: dict(s.of(t)) for t in T.ORDER}
    del res[T.ROUTE]["ingress"]
    with pytest.raises(InconsistentSnapshot, match="listener 'ingress' uses route configuration 'ingress'"):
        check_consistent(res)


def test_zero_endpoint_weight_is_refused() -> None:
    p = plan()
    pool = p.pools[0]
    bad_pool = dataclasses.replace(pool, endpoints=(dataclasses.replace(pool.endpoints[0], weight=0),))
    with pytest.raises(InconsistentSnapshot, match="weight 0 is invalid; Envoy needs >= 1"):
        build_snapshot(dataclasses.replace(p, pools=(bad_pool, p.pools[1])), 1)


def test_versions_are_monotonic_and_unchanged_types_keep_theirs() -> None:
    p = plan()
    s1 = build_snapshot(p, 1)
    with pytest.raises(ValueError, match="must be greater"):
        build_snapshot(p, 1, s1)
    pool = p.pools[1]
    p2 = dataclasses.replace(p, pools=(p.pools[0], dataclasses.replace(
        pool, endpoints=pool.endpoints + (EndpointPlan("127.0.0.1", 18104),))))
    s2 = build_snapshot(p2, 2, s1)
    assert s2.type_version(T.ENDPOINT) == "2"
    assert s2.type_version(T.CLUSTER) == "1" and s2.type_version(T.ROUTE) == "1"
    # Unchanged resources are the same objects: not rebuilt, not re-serialized.
    assert s2.of(T.CLUSTER)["llm-v2"] is s1.of(T.CLUSTER)["llm-v2"]
    assert s2.of(T.ENDPOINT)["llm-v1"] is s1.of(T.ENDPOINT)["llm-v1"]
    assert s2.of(T.ENDPOINT)["llm-v2"].version != s1.of(T.ENDPOINT)["llm-v2"].version


def test_resource_version_is_a_content_hash() -> None:
    a = build_snapshot(plan(), 1)
    b = build_snapshot(plan(), 7)
    assert {n: r.version for n, r in a.of(T.CLUSTER).items()} == {n: r.version for n, r in b.of(T.CLUSTER).items()}


def test_draining_endpoint_is_marked_for_envoy() -> None:
    p = plan()
    pool = p.pools[0]
    drained = dataclasses.replace(pool, endpoints=(
        dataclasses.replace(pool.endpoints[0], health=HealthStatus.DRAINING), pool.endpoints[1]))
    s = build_snapshot(dataclasses.replace(p, pools=(drained, p.pools[1])), 1)
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(s.of(T.ENDPOINT)["llm-v1"].body)
    statuses = {e.endpoint.address.socket_address.port_value: e.health_status
                for l in cla.endpoints for e in l.lb_endpoints}
    from envoy.config.core.v3 import health_check_pb2
    assert statuses[18101] == health_check_pb2.DRAINING and statuses[18102] == health_check_pb2.HEALTHY


def test_prebuilt_bytes_parse_as_the_real_messages() -> None:
    s = build_snapshot(plan(), 3)
    rs = list(s.of(T.CLUSTER).values())
    body = field_str(1, "3") + b"".join(field_bytes(2, r.packed) for r in rs) + field_str(4, T.CLUSTER) \
        + field_str(5, "n1")
    resp = discovery_pb2.DiscoveryResponse.FromString(body)
    assert resp.version_info == "3" and resp.nonce == "n1" and resp.type_url == T.CLUSTER
    assert [cluster_pb2.Cluster.FromString(a.value).name for a in resp.resources] == [r.name for r in rs]
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(b"".join(field_bytes(2, r.delta) for r in rs)
                                                            + field_str(6, "gone"))
    assert [(r.name, r.version) for r in delta.resources] == [(r.name, r.version) for r in rs]
    assert list(delta.removed_resources) == ["gone"]


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16384, 2**31, 2**63])
def test_varint_matches_protobuf(n: int) -> None:
    from google.protobuf.internal import encoder
    assert varint(n) == encoder._VarintBytes(n)


def test_make_resource_refs() -> None:
    from envoy.config.cluster.v3 import cluster_pb2 as c
    r = make_resource(T.CLUSTER, "x", c.Cluster(name="x"), refs=("x",))
    assert r.refs == frozenset({"x"}) and r.name == "x" and len(r.version) == 16


def test_shedding_pool_gets_headers_attempt_count_retry_on_429_and_a_full_budget() -> None:
    from envoy.config.core.v3 import base_pb2

    from xds_control.core.traffic import SHED_ATTEMPTS_HEADER, SHED_BACKLOG_HEADER, SHED_STATUS, ShedPlan

    p = plan()
    pools = tuple(dataclasses.replace(pl, shed=ShedPlan(0.5, 3)) if pl.name == "llm-v1" else pl for pl in p.pools)
    s = build_snapshot(dataclasses.replace(p, pools=pools), 1)
    rc = route_pb2.RouteConfiguration.FromString(s.of(T.ROUTE)["ingress"].body)
    vh = rc.virtual_hosts[0]
    assert vh.include_request_attempt_count
    action = vh.routes[0].route
    wc = {c.name: c for c in action.weighted_clusters.clusters}
    hdrs = {h.header.key: h.header.value for h in wc["llm-v1"].request_headers_to_add}
    assert hdrs == {SHED_BACKLOG_HEADER: "0.5", SHED_ATTEMPTS_HEADER: "3"}
    assert all(h.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
               for h in wc["llm-v1"].request_headers_to_add)
    assert not wc["llm-v2"].request_headers_to_add  # the other pool does not shed
    rp = action.retry_policy
    assert rp.retry_on == "retriable-status-codes" and list(rp.retriable_status_codes) == [SHED_STATUS]
    assert rp.num_retries.value == 2  # attempts - 1
    assert [h.name for h in rp.retry_host_predicate] == ["envoy.retry_host_predicates.previous_hosts"]
    c = cluster_pb2.Cluster.FromString(s.of(T.CLUSTER)["llm-v1"].body)
    budget = c.circuit_breakers.thresholds[0].retry_budget
    assert budget.budget_percent.value == 100.0 and budget.min_retry_concurrency.value >= 64
    assert not cluster_pb2.Cluster.FromString(s.of(T.CLUSTER)["llm-v2"].body).circuit_breakers.thresholds
    # turning it off rebuilds the route and the cluster; a pool's existing retry keeps its codes
    s2 = build_snapshot(p, 2, previous=s)
    rc2 = route_pb2.RouteConfiguration.FromString(s2.of(T.ROUTE)["ingress"].body)
    assert not rc2.virtual_hosts[0].routes[0].route.HasField("retry_policy")
    assert not rc2.virtual_hosts[0].include_request_attempt_count
    svcs = tuple(dataclasses.replace(sv, retry=RetryPlan(retry_on="reset,503", num_retries=1)) for sv in p.services)
    s3 = build_snapshot(dataclasses.replace(p, pools=pools, services=svcs), 3, previous=s2)
    rp3 = route_pb2.RouteConfiguration.FromString(s3.of(T.ROUTE)["ingress"].body).virtual_hosts[0].routes[0].route
    assert rp3.retry_policy.retry_on == "reset,503,retriable-status-codes"
    assert rp3.retry_policy.num_retries.value == 2
