"""What control-plane instances share through ConfigMaps, on the real API server: the peer board
(actuators/peers.py: the leader's drains, each instance's routing, liveness) and the operator state
(actuators/kube_state.py: pins, drains, pauses, bounds and policies set through the admin API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from k8s.cluster import Cluster
from k8s.test_real_controlplane import PORT, kube_config, until

from xds_control.actuators.kube_state import STATE_KEY
from xds_control.actuators.kubernetes import make_api_client
from xds_control.actuators.peers import LEADER_KEY, KubePeerBoard
from xds_control.config import parse_config
from xds_control.runtime.app import ControlPlane

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def configmap(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.admin("GET", f"/api/v1/namespaces/{ns}/configmaps/{name}")


def test_leader_shares_drains_follower_shares_routing_and_silent_peers_expire(cluster: Cluster, ns: str,
                                                                               kubeconfig: Path) -> None:
    client = make_api_client(str(kubeconfig))
    clock = Clock()
    a = KubePeerBoard(client, ns, "xds-control-peers", "a", heartbeat_s=2.0, peer_ttl_s=8.0, clock=clock)
    b = KubePeerBoard(client, ns, "xds-control-peers", "b", heartbeat_s=2.0, peer_ttl_s=8.0, clock=clock)
    try:
        # nothing shared yet: no leader's drains, no peers (a single instance behaves as before)
        a.sync_once()
        assert a.leader_drains() is None and a.peers_routing() is None
        assert configmap(cluster, ns, "xds-control-peers")["metadata"]["name"]  # the first reader created it
        a.share(leader=True, drains={"llm": frozenset({"10.0.0.2:8000"})},
                routing={"llm": frozenset({"10.0.0.1:8000", "10.0.0.2:8000"})})
        a.sync_once()
        b.share(leader=False, drains={"llm": frozenset({"ignored"})},
                routing={"llm": frozenset({"10.0.0.1:8000", "10.0.0.2:8000"})})
        b.sync_once()
        assert b.leader_drains() == {"llm": frozenset({"10.0.0.2:8000"})}
        data = configmap(cluster, ns, "xds-control-peers")["data"]
        assert json.loads(data[LEADER_KEY])["identity"] == "a"  # a follower never writes the leader's entry
        a.sync_once()
        assert a.live_peers() == ["b"]
        assert a.peers_routing() == {"llm": frozenset({"10.0.0.1:8000", "10.0.0.2:8000"})}
        # b's proxies ACKed the drain: it no longer routes to .2, and a sees that on its next read
        b.share(leader=False, drains={}, routing={"llm": frozenset({"10.0.0.1:8000"})})
        b.sync_once()
        a.sync_once()
        assert a.peers_routing() == {"llm": frozenset({"10.0.0.1:8000"})}
        # unchanged views are rewritten only every heartbeat_s (the seq moves: the peer stays live)
        rv = configmap(cluster, ns, "xds-control-peers")["metadata"]["resourceVersion"]
        b.sync_once()
        assert configmap(cluster, ns, "xds-control-peers")["metadata"]["resourceVersion"] == rv
        clock.t += 2.5
        b.sync_once()
        assert configmap(cluster, ns, "xds-control-peers")["metadata"]["resourceVersion"] != rv
        a.sync_once()
        clock.t += 5.0
        a.sync_once()
        assert a.live_peers() == ["b"]  # seen changing 5 s ago: within peer_ttl_s
        # b goes silent: after peer_ttl_s it no longer holds the leader's drains back ...
        clock.t += 4.0
        a.sync_once()
        assert a.live_peers() == [] and a.peers_routing() is None
        # ... and after three peer_ttl_s the leader deletes its entry
        clock.t += 20.0
        a.sync_once()  # heartbeat due: the write carries the deletion
        data = configmap(cluster, ns, "xds-control-peers")["data"]
        assert "peer.b" not in data and "peer.a" in data
    finally:
        client.close()


async def test_pins_and_drains_are_shared_by_instances_and_survive_a_restart(cluster: Cluster, ns: str,
                                                                             kubeconfig: Path) -> None:
    """A pin and a drain set on one instance hold on the other within a second or two, an unpin on the other
    reaches the first, and a new instance (a restart) restores what is in force before its first publish."""
    cluster.deployment(ns, "llm", replicas=2, port=PORT)
    cps: list[ControlPlane] = []

    async def start() -> ControlPlane:
        cp = ControlPlane(parse_config(kube_config(ns, kubeconfig, min_replicas=2, max_replicas=2)), xds_port=0,
                          metrics_port=None)
        await cp.start()
        cps.append(cp)
        return cp

    try:
        a, b = await start(), await start()
        await until(lambda: len([r for r in a.scaler.list() if r.state.value == "ready"]) == 2, 30, "2 ready pods")
        k1, k2 = sorted(r.key for r in a.scaler.list())
        a.operator.pin("llm", k1, 7)
        a.operator.drain("llm", k2)
        stored = json.loads(configmap(cluster, ns, "xds-control-operator")["data"][STATE_KEY])
        assert stored  # written on the change, by the instance that took it
        await until(lambda: b.operator.weights.get(("llm", k1)) == 7 and ("llm", k2) in b.operator.drains, 5,
                    "the other instance holding the pin and the drain")
        await until(lambda: b.cache.snapshot is not None and any(
            e.key == k1 and e.weight == 7 for p in b.cache.snapshot.plan.pools for e in p.endpoints), 10,
            "the pin in b's plan")
        b.operator.unpin("llm", k1)
        await until(lambda: ("llm", k1) not in a.operator.weights, 5, "the unpin on a")
        c = await start()
        assert ("llm", k2) in c.operator.drains and ("llm", k1) not in c.operator.weights
    finally:
        for cp in cps:
            await cp.stop(grace=0)
