"""Delta (incremental) ADS conformance, with a gRPC client playing Envoy.

Modelled on ii/xds-test-harness's delta.feature: legacy wildcard, subscribe and
unsubscribe, only changed resources sent, removed_resources, initial resource
versions on reconnect, NACK without resend, subscription changes honoured with
stale nonces, and the assignments of changed clusters re-sent after CDS.
"""

from __future__ import annotations

import asyncio

from support.adsclient import DeltaClient
from support.cp import config_dict, running, target

from xds_control.config import parse_config, to_traffic_plan
from xds_control.snapshot import types as T


def plan(**kw):  # type: ignore[no-untyped-def]
    return to_traffic_plan(parse_config(config_dict(**kw)))


def names(resp) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(r.name for r in resp.resources)


async def test_legacy_wildcard_then_only_changes() -> None:
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.CLUSTER)  # first request, no names: legacy wildcard
        r1 = await c.recv()
        assert names(r1) == ["p1", "p2"] and all(r.version for r in r1.resources)
        c.ack(r1)
        await c.expect_none()
        # Only p1 changes (its LB policy): only p1 is sent.
        cfg = config_dict()
        cfg["services"][0]["pools"][0]["lb_policy"] = "least_request"
        cp.publisher.publish_now(to_traffic_plan(parse_config(cfg)))
        r2 = await c.recv()
        assert names(r2) == ["p1"] and not r2.removed_resources
        await c.close()


async def test_changed_cluster_gets_its_assignment_again() -> None:
    """Envoy re-warms a changed cluster and sends no new EDS request: the server must re-send."""
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.CLUSTER)
        cds = await c.recv()
        c.ack(cds)
        c.request(T.ENDPOINT, subscribe=["p1", "p2"])
        eds = await c.recv()
        assert names(eds) == ["p1", "p2"]
        c.ack(eds)
        await c.expect_none()
        cfg = config_dict()
        cfg["services"][0]["pools"][0]["lb_policy"] = "least_request"  # cluster p1 changes, endpoints don't
        cp.publisher.publish_now(to_traffic_plan(parse_config(cfg)))
        got = {(await c.recv()).type_url: None for _ in range(2)}
        assert set(got) == {T.CLUSTER, T.ENDPOINT}
        await c.close()


async def test_removed_cluster_is_announced_in_removed_resources() -> None:
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.CLUSTER)
        c.ack(await c.recv())
        await asyncio.sleep(0.05)
        cp.publisher.publish_now(plan(pools={"p1": [18101, 18102]}))
        # The proxy has subscribed to no routes, so the removal follows at once.
        r = await c.recv()
        assert list(r.removed_resources) == ["p2"] and not r.resources
        await c.close()


async def test_initial_resource_versions_skip_what_the_proxy_has() -> None:
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.CLUSTER)
        r1 = await c.recv()
        versions = {r.name: r.version for r in r1.resources}
        await c.close()
        # Reconnect holding p1 at the current version, p2 at an old one and a cluster that no longer exists.
        c2 = await DeltaClient(target(cp), "d1").start()
        c2.request(T.CLUSTER, initial={"p1": versions["p1"], "p2": "old", "gone": "x"})
        r2 = await c2.recv()
        assert names(r2) == ["p2"]
        assert list(r2.removed_resources) == ["gone"]
        await c2.close()


async def test_reconnect_with_everything_current_gets_an_empty_first_response() -> None:
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.CLUSTER)
        r1 = await c.recv()
        await c.close()
        c2 = await DeltaClient(target(cp), "d1").start()
        c2.request(T.CLUSTER, initial={r.name: r.version for r in r1.resources})
        r2 = await c2.recv()
        assert not r2.resources and not r2.removed_resources
        c2.ack(r2)
        await asyncio.sleep(0.05)
        assert cp.tracker.syncz()[0]["types"]["CDS"]["state"] == "SYNCED"
        await c2.close()


async def test_resource_subscribed_before_it_exists_is_sent_when_it_appears() -> None:
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.ENDPOINT, subscribe=["future"])
        r = await c.recv()  # the first request is always answered
        assert names(r) == []
        c.ack(r)
        await c.expect_none()
        cp.publisher.publish_now(plan(pools={"p1": [18101], "future": [18109]}))
        r2 = await c.recv()
        assert names(r2) == ["future"]
        await c.close()


async def test_unsubscribe_and_resubscribe() -> None:
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.ENDPOINT, subscribe=["p1", "p2"])
        r = await c.recv()
        c.ack(r)
        c.request(T.ENDPOINT, unsubscribe=["p2"])
        await c.expect_none()
        # A change to p2 is no longer sent.
        cp.publisher.publish_now(plan(pools={"p1": [18101, 18102], "p2": [18104]}))
        await c.expect_none()
        c.request(T.ENDPOINT, subscribe=["p2"])
        r2 = await c.recv()
        assert names(r2) == ["p2"]
        await c.close()


async def test_subscription_change_with_stale_nonce_is_honoured() -> None:
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.ENDPOINT, subscribe=["p1"])
        r1 = await c.recv()
        c.ack(r1)
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103]}))
        r2 = await c.recv()
        assert names(r2) == ["p1"]
        # Subscribe with the old nonce: Delta honours subscription changes anyway.
        c.request(T.ENDPOINT, subscribe=["p2"], nonce=r1.nonce)
        c.ack(r2)
        r3 = await c.recv()
        assert names(r3) == ["p2"]
        await c.close()


async def test_nack_is_not_resent_and_next_version_is() -> None:
    async with running(config_dict()) as cp:
        cp.publisher.rollback_on_nack = False
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.CLUSTER)
        c.ack(await c.recv())
        await asyncio.sleep(0.05)
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103], "p3": [18104]}))
        r = await c.recv()
        assert names(r) == ["p3"]
        c.nack(r, "p3 is bad")
        await c.expect_none(0.6)
        st = cp.tracker.syncz()[0]["types"]["CDS"]
        assert st["state"] == "ERROR" and st["error"] == "p3 is bad"
        cfg = config_dict(pools={"p1": [18101], "p2": [18103], "p3": [18104]})
        cfg["services"][0]["pools"][2]["connect_timeout_s"] = 2
        cp.publisher.publish_now(to_traffic_plan(parse_config(cfg)))
        r2 = await c.recv()
        assert names(r2) == ["p3"]
        c.ack(r2)
        await asyncio.sleep(0.05)
        assert cp.tracker.syncz()[0]["types"]["CDS"]["state"] == "SYNCED"
        await c.close()


async def test_explicit_wildcard_and_legacy_end() -> None:
    async with running(config_dict()) as cp:
        c = await DeltaClient(target(cp), "d1").start()
        c.request(T.CLUSTER, subscribe=["p1"])  # named from the start: not a wildcard
        r = await c.recv()
        assert names(r) == ["p1"]
        c.ack(r)
        c.request(T.CLUSTER, subscribe=["*"])
        r2 = await c.recv()
        assert names(r2) == ["p2"]  # p1 is known already
        c.ack(r2)
        c.request(T.CLUSTER, unsubscribe=["*"])
        await c.expect_none()
        cp.publisher.publish_now(plan(pools={"p1": [18101], "p2": [18103], "p3": [18104]}))
        await c.expect_none()  # p3 is not subscribed and no wildcard covers it
        await c.close()
