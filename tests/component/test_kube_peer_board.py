"""The peer board (actuators/peers.py) between two control-plane instances, over the Kubernetes client, against
tests/fakekube's ConfigMaps (the real API server runs it in tests/k8s/test_real_ha_drain.py)."""

from __future__ import annotations

import json
from pathlib import Path

from fakekube import FakeKube

from xds_control.actuators.kubernetes import make_api_client
from xds_control.actuators.peers import LEADER_KEY, KubePeerBoard


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_leader_shares_drains_follower_shares_routing_and_silent_peers_expire(tmp_path: Path) -> None:
    with FakeKube() as kube:
        client = make_api_client(str(kube.kubeconfig(tmp_path / "kc")))
        clock = Clock()
        a = KubePeerBoard(client, "inference", "xds-control-peers", "a", heartbeat_s=2.0, peer_ttl_s=8.0, clock=clock)
        b = KubePeerBoard(client, "inference", "xds-control-peers", "b", heartbeat_s=2.0, peer_ttl_s=8.0, clock=clock)
        try:
            # nothing shared yet: no leader's drains, no peers (a single instance behaves as before)
            a.sync_once()
            assert a.leader_drains() is None and a.peers_routing() is None
            assert ("create", "configmaps") in kube.requests  # the first reader created it
            a.share(leader=True, drains={"llm": frozenset({"10.0.0.2:8000"})},
                    routing={"llm": frozenset({"10.0.0.1:8000", "10.0.0.2:8000"})})
            a.sync_once()
            b.share(leader=False, drains={"llm": frozenset({"ignored"})},
                    routing={"llm": frozenset({"10.0.0.1:8000", "10.0.0.2:8000"})})
            b.sync_once()
            assert b.leader_drains() == {"llm": frozenset({"10.0.0.2:8000"})}
            data = kube.configmaps[("inference", "xds-control-peers")]["data"]
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
            n = len([r for r in kube.requests if r == ("patch", "configmaps")])
            b.sync_once()
            assert len([r for r in kube.requests if r == ("patch", "configmaps")]) == n
            clock.t += 2.5
            b.sync_once()
            assert len([r for r in kube.requests if r == ("patch", "configmaps")]) == n + 1
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
            assert "peer.b" not in kube.configmaps[("inference", "xds-control-peers")]["data"]
            assert "peer.a" in kube.configmaps[("inference", "xds-control-peers")]["data"]
        finally:
            client.close()
