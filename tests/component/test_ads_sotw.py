"""State-of-the-World ADS conformance, with a gRPC client playing Envoy.

Scenarios follow ii/xds-test-harness's features (subscribing, acknack, wildcard)
and Envoy's xds_protocol document: nonces, stale nonces, ACK/NACK, legacy
wildcard and its end, names requested before they exist, full state for
LDS/CDS, ordering and make-before-break removal.
"""

from __future__ import annotations

import asyncio

from support.adsclient import SotwClient, names
from support.cp import config_dict, running, target

from xds_control.config import parse_config, to_traffic_plan
from xds_control.snapshot import types as T


def plan(**kw):  # type: ignore[no-untyped-def]
    return to_traffic_plan(parse_config(config_dict(**kw)))


async def test_wildcard_cds_gets_full_state_and_ack_quiets_the_stream() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.CLUSTER)
        r = await c.recv()
        assert r.type_url == T.CLUSTER
        assert names(r) == ["p1", "p2"]
        assert r.nonce and r.version_info == "1"
        c.ack(r)
        await c.expect_none()
        status = cp.tracker.syncz()[0]
        assert status["node"] == "n1" and status["types"]["CDS"]["state"] == "SYNCED"
        await c.close()


async def test_update_sends_new_version_with_full_state_for_cds() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.CLUSTER)
        r1 = await c.recv()
        c.ack(r1)
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103], "p3": [18104]}))
        r2 = await c.recv()
        assert names(r2) == ["p1", "p2", "p3"]  # full state, not just the new one
        assert r2.version_info != r1.version_info and r2.nonce != r1.nonce
        await c.close()


async def test_eds_sends_only_subscribed_names_and_remembers_missing_ones() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.ENDPOINT, ["p1", "future"])
        r = await c.recv()
        assert names(r) == ["p1"]
        c.ack(r, ["p1", "future"])
        await c.expect_none()
        # "future" appears later: the proxy gets it without asking again.
        cp.publisher.publish_now(plan(pools={"p1": [18101, 18102], "p2": [18103], "future": [18109]}))
        r2 = await c.recv()
        assert names(r2) == ["future", "p1"]
        await c.close()


async def test_unchanged_subscription_gets_no_response_after_unrelated_change() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.ENDPOINT, ["p2"])
        r = await c.recv()
        c.ack(r, ["p2"])
        # Only p1's endpoints change: the proxy subscribed to p2 hears nothing.
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103]}))
        await c.expect_none()
        # ...and is still counted as holding the new version.
        res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=1)
        assert res.ok, res
        await c.close()


async def test_nack_is_recorded_not_resent_and_next_version_flows() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.CLUSTER)
        r1 = await c.recv()
        c.ack(r1)
        await asyncio.sleep(0.05)
        cp.publisher.rollback_on_nack = False
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103], "p3": [18104]}))
        r2 = await c.recv()
        c.nack(r2, "bad cluster p3", last_good=r1.version_info)
        await c.expect_none(0.6)  # no resend loop
        st = cp.tracker.syncz()[0]["types"]["CDS"]
        assert st["state"] == "ERROR" and st["error"] == "bad cluster p3"
        assert st["acked"] == 1 and st["error_version"] == cp.cache.snapshot.version
        assert cp.publisher.rejections[-1].node == "n1"
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103]}))
        r3 = await c.recv()
        assert names(r3) == ["p1", "p2"]
        c.ack(r3)
        await asyncio.sleep(0.05)
        assert cp.tracker.syncz()[0]["types"]["CDS"]["state"] == "SYNCED"
        await c.close()


async def test_stale_nonce_request_is_ignored() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.ENDPOINT, ["p1"])
        r1 = await c.recv()
        c.ack(r1, ["p1"])
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103]}))
        r2 = await c.recv()
        # A request that answers the *old* response (stale nonce) and asks for p2 is ignored...
        c.request(T.ENDPOINT, ["p1", "p2"], version=r1.version_info, nonce=r1.nonce)
        await c.expect_none()
        # ...while the same request with the current nonce is honoured.
        c.request(T.ENDPOINT, ["p1", "p2"], version=r2.version_info, nonce=r2.nonce)
        r3 = await c.recv()
        assert names(r3) == ["p1", "p2"]
        await c.close()


async def test_legacy_wildcard_ends_when_names_are_requested() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.CLUSTER)
        r1 = await c.recv()
        assert names(r1) == ["p1", "p2"]
        c.request(T.CLUSTER, ["p1"], version=r1.version_info, nonce=r1.nonce)
        r2 = await c.recv()
        assert names(r2) == ["p1"]
        # Explicit "*" restores the wildcard.
        c.request(T.CLUSTER, ["*", "p1"], version=r2.version_info, nonce=r2.nonce)
        r3 = await c.recv()
        assert names(r3) == ["p1", "p2"]
        await c.close()


async def test_reconnect_gets_full_state_even_with_known_version() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.CLUSTER)
        r1 = await c.recv()
        c.ack(r1)
        await c.close()
        c2 = await SotwClient(target(cp), "n1").start()
        c2.request(T.CLUSTER, version=r1.version_info)
        r2 = await c2.recv()
        assert names(r2) == ["p1", "p2"]
        await asyncio.sleep(0.05)
        assert [p["stream"] for p in cp.tracker.syncz()] == [2]  # the first stream's state is gone
        await c2.close()
        await asyncio.sleep(0.1)
        assert cp.tracker.syncz() == [] and cp.ads.open_streams == 0


async def test_routes_wait_for_the_cluster_ack() -> None:
    """CDS -> EDS -> LDS -> RDS: a route naming a new cluster is not sent before the cluster is ACKed."""
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.CLUSTER)
        cds = await c.recv()
        c.ack(cds)
        c.request(T.ROUTE, ["ingress"])
        rds = await c.recv()
        assert rds.type_url == T.ROUTE
        c.ack(rds, ["ingress"])
        await asyncio.sleep(0.05)
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103], "p3": [18104]}))
        first = await c.recv()
        assert first.type_url == T.CLUSTER and names(first) == ["p1", "p2", "p3"]
        await c.expect_none(0.3)  # the route change waits for the CDS ACK
        c.ack(first)
        second = await c.recv()
        assert second.type_url == T.ROUTE
        await c.close()


async def test_removed_cluster_stays_until_routes_are_acked() -> None:
    async with running(config_dict()) as cp:
        c = await SotwClient(target(cp), "n1").start()
        c.request(T.CLUSTER)
        cds = await c.recv()
        c.ack(cds)
        c.request(T.ROUTE, ["ingress"])
        rds = await c.recv()
        c.ack(rds, ["ingress"])
        await asyncio.sleep(0.05)
        cp.publisher.publish_now(plan(pools={"p1": [18101]}))
        # The route stops using p2 but p2 still exists while the proxy has not ACKed the route.
        r = await c.recv()
        if r.type_url == T.CLUSTER:  # cluster content unchanged is skipped; tolerate a resend
            assert "p2" in names(r)
            c.ack(r)
            r = await c.recv()
        assert r.type_url == T.ROUTE
        assert cp.cache.snapshot.retained == frozenset({"p2"})
        c.ack(r, ["ingress"])
        removal = await c.recv()
        assert removal.type_url == T.CLUSTER and names(removal) == ["p1"]
        await c.close()


async def test_two_proxies_wait_acked_reports_each() -> None:
    async with running(config_dict()) as cp:
        a = await SotwClient(target(cp), "a").start()
        b = await SotwClient(target(cp), "b").start()
        for c in (a, b):
            c.request(T.CLUSTER)
        ra, rb = await a.recv(), await b.recv()
        a.ack(ra)
        res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=0.3)
        assert res.acked == ("a",) and res.pending == ("b",) and not res.complete
        b.nack(rb, "no")
        res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=1)
        assert res.complete and res.rejected == (("b", "CDS: no"),)
        only_a = await cp.tracker.wait_acked(cp.cache.snapshot.version, nodes=["a"], timeout=1)
        assert only_a.ok
        await a.close()
        await b.close()


async def test_a_non_aggregated_cds_stream_carries_clusters_only_with_the_type_url_implicit() -> None:
    """ClusterDiscoveryService.StreamClusters: the first request may leave type_url empty (it is implicit on a
    singleton service); a request for another type on it is ignored; ACKs quiet it as on ADS."""
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    async with running(config_dict()) as cp:
        out: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def requests():  # type: ignore[no-untyped-def]
            while (req := await out.get()) is not None:
                yield req

        async with grpc.aio.insecure_channel(target(cp)) as ch:
            call = ch.stream_stream("/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
                                    request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                    response_deserializer=discovery_pb2.DiscoveryResponse.FromString)(requests())
            out.put_nowait(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="cds-only")))
            r = await asyncio.wait_for(call.read(), 5)
            assert r.type_url == T.CLUSTER and names(r) == ["p1", "p2"] and r.version_info
            out.put_nowait(discovery_pb2.DiscoveryRequest(type_url=T.ENDPOINT, resource_names=["p1"]))
            out.put_nowait(discovery_pb2.DiscoveryRequest(version_info=r.version_info, response_nonce=r.nonce))
            read = asyncio.ensure_future(call.read())
            done, _ = await asyncio.wait({read}, timeout=0.5)
            assert not done, f"a response on the CDS stream after the ACK: {read.result()}"
            status = cp.tracker.syncz()[0]
            assert status["node"] == "cds-only" and set(status["types"]) == {"CDS"}
            assert status["types"]["CDS"]["state"] == "SYNCED"
            read.cancel()
            out.put_nowait(None)
