"""Tenant isolation of proxy rejections: a NACK caused by one tenant's change is visible to that tenant and to
all-tenant callers, and the other tenant sees nothing of it (GetStatus, ListDecisions, WatchEvents --follow).

A gRPC client plays Envoy on the ADS stream (SotW): it accepts the initial config and rejects the route
configuration carrying team-a's new route, naming it as Envoy does.
"""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import yaml

from support.admin import Served, md, pb
from support.adsclient import SotwClient
from support.cp import config_dict

from xds_control.snapshot import types as T

BAD = "^/(?=v1).*"
NACK_TEXT = f"Error adding/updating listener(s) ingress: route llm: invalid regex '{BAD}': invalid perl operator: (?="


def two_tenants() -> dict:
    from support.admin import token_config

    cfg = config_dict(pools={"p1": [18101, 18102], "p2": [18103]}, tenant="team-a")
    cfg["services"].append({"name": "chat", "tenant": "team-b", "hosts": ["chat.example"],
                            "pools": [{"name": "c1", "endpoints": [{"address": "127.0.0.1", "port": 18201}]}]})
    cfg["admin"] = {"port": 0, "tokens": token_config()}
    return cfg


class Follow:
    """``events --follow`` for one token, collected on a thread until ``stop``."""

    def __init__(self, sv: Served, token: str) -> None:
        self.events: list = []
        self.call = sv.stub.WatchEvents(pb.WatchEventsRequest(follow=True), metadata=md(token))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.call:
                self.events.append(ev)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.CANCELLED, e

    def stop(self) -> list:
        self.call.cancel()
        self.thread.join(5)
        return self.events


async def _accept_all(c: SotwClient) -> None:
    """Subscribe to every type and ACK each first response (as Envoy does at start)."""
    for t, names in ((T.CLUSTER, ()), (T.ENDPOINT, ("p1", "p2", "c1")), (T.LISTENER, ()), (T.ROUTE, ("ingress",))):
        c.request(t, names)
        r = await c.recv()
        assert r.type_url == t
        c.ack(r, names)


def test_a_nack_caused_by_one_tenant_is_hidden_from_the_other() -> None:
    cfg = two_tenants()
    with Served(cfg) as sv:
        target = f"127.0.0.1:{sv.cp.ports.xds}"

        async def connect() -> SotwClient:
            return await SotwClient(target, "gw-1").start()

        client = sv.call(connect())
        try:
            sv.call(_accept_all(client))
            sv.call(sv.cp.tracker.wait_acked(sv.cp.cache.snapshot.version, timeout=5))
            follows = {t: Follow(sv, t) for t in ("root", "a-viewer", "b-operator")}
            before = sv.cp.admin.events.seq  # the initial ACKs (of both tenants' resources) are older

            # team-a's service gets a route Envoy rejects; the proxy NACKs the route configuration
            bad = dict(cfg, services=[dict(cfg["services"][0], regex=BAD), cfg["services"][1]])
            assert sv.run(sv.cp.reload_text, yaml.safe_dump(bad))

            async def nack() -> None:
                while True:
                    r = await client.recv(5)
                    if r.type_url == T.ROUTE:
                        client.nack(r, NACK_TEXT, ("ingress",), last_good=r.version_info)
                        break
                    client.ack(r)
                for _ in range(200):
                    if sv.cp.publisher.rejections:
                        return
                    await asyncio.sleep(0.02)
                raise AssertionError("no rejection recorded")

            sv.call(nack())
            rej = sv.cp.publisher.rejections[-1]
            assert (rej.type, rej.resources, rej.services, rej.attributed) == ("RDS", ("ingress",), ("llm",), True)
            # The rollback republishes the route without team-a's rejected change; ACK it.

            async def ack_rollback() -> None:
                while True:
                    r = await client.recv(5)
                    client.ack(r)
                    if r.type_url == T.ROUTE:
                        return

            sv.call(ack_rollback())
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and len(follows["root"].events) < 1:
                time.sleep(0.05)
            time.sleep(0.5)  # the followers drain what was published
            seen = {t: [e for e in f.stop() if e.seq > before] for t, f in follows.items()}

            # The owner (team-a) and the all-tenant token see the NACK with its text ...
            for tok in ("root", "a-viewer"):
                st = sv.stub.GetStatus(pb.GetStatusRequest(), metadata=md(tok))
                px = next(p for p in st.proxies if p.node_id == "gw-1")
                assert (px.last_nack.type, px.last_nack.message) == ("RDS", NACK_TEXT), (tok, px)
                nacks = [e for e in seen[tok] if e.kind == "nack"]
                assert [e.message for e in nacks] == [NACK_TEXT], (tok, seen[tok])
                assert list(nacks[0].detail["services"]) == ["llm"]
            # ... team-b sees nothing of it: no last NACK, no error text, no nack (nor ack of it) in the feed.
            st = sv.stub.GetStatus(pb.GetStatusRequest(), metadata=md("b-operator"))
            px = next(p for p in st.proxies if p.node_id == "gw-1")
            assert not px.HasField("last_nack") and all(not t.error for t in px.types), px
            assert "regex" not in str(st) and "llm" not in str(st) and "(?=" not in str(st)
            b = seen["b-operator"]
            assert not [e for e in b if e.kind in ("nack", "ack")], b
            assert all("(?=" not in str(e) and "llm" not in str(e) for e in b), b
            assert not sv.stub.ListDecisions(pb.ListDecisionsRequest(), metadata=md("b-operator")).decisions
            replay = list(sv.stub.WatchEvents(pb.WatchEventsRequest(kinds=["nack"]), metadata=md("b-operator")))
            assert replay == []
            # root sees the ACK of the rolled-back route; it changes nothing any tenant held, so no tenant sees it
            assert [e for e in seen["root"] if e.kind == "ack" and e.detail["type"] == "RDS"], seen["root"]
            assert not [e for e in seen["a-viewer"] if e.kind == "ack"], seen["a-viewer"]
        finally:
            sv.call(client.close())


def test_a_nack_of_a_change_spanning_tenants_withholds_the_text() -> None:
    """A rejected change that touches both tenants' services: each sees that it happened, neither reads text
    that may name the other's resources."""
    cfg = two_tenants()
    with Served(cfg) as sv:
        target = f"127.0.0.1:{sv.cp.ports.xds}"

        async def nack_first_cds() -> SotwClient:
            c = await SotwClient(target, "gw-2").start()
            c.request(T.CLUSTER)
            c.nack(await c.recv(), "cluster c1: bad outlier detection")
            for _ in range(200):
                if sv.cp.publisher.rejections:
                    return c
                await asyncio.sleep(0.02)
            raise AssertionError("no rejection recorded")

        client = sv.call(nack_first_cds())
        try:
            for tok, want in (("root", "cluster c1: bad outlier detection"), ("a-viewer", None),
                              ("b-operator", None)):
                st = sv.stub.GetStatus(pb.GetStatusRequest(), metadata=md(tok))
                px = next(p for p in st.proxies if p.node_id == "gw-2")
                types = {t.type: t for t in px.types}
                assert types["CDS"].state == "ERROR"
                if want is None:
                    assert "c1" not in px.last_nack.message and "withheld" in px.last_nack.message
                    assert "withheld" in types["CDS"].error
                else:
                    assert px.last_nack.message == want and types["CDS"].error == want
        finally:
            sv.call(client.close())
