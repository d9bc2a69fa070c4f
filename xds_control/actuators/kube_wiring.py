"""Wires the ``kubernetes:`` config section into a running :class:`~xds_control.runtime.app.ControlPlane`.

What every replica of the control plane does with it (README "Kubernetes"):

* builds a :class:`~xds_control.actuators.kubernetes.KubernetesScaler` (EndpointSlice watch) and, when
  ``leader_election.enabled``, a :class:`~xds_control.actuators.leader.LeaseElector` sharing its API client;
* the scaler asks the elector before every write, and the controller reads ``scaler.is_leader``: a
  follower keeps ticking -- it reads the same EndpointSlices and the same signals and plans the same
  endpoints, ramps and drains, so every replica serves xDS from the same state -- but its decision is
  held at the current replica count and it never scales. When it becomes the leader its policy state is
  already warm (it ran ``decide`` on every tick), so the takeover needs no warm-up;
* with leader election, a :class:`~xds_control.actuators.peers.KubePeerBoard` on the ConfigMap
  ``<lease_name>-peers``: the leader shares what it drains, every instance what its proxies may still send to,
  so a follower drains with the leader and the leader removes a drained pod only once no instance's proxies
  route to it (``cp.peer_board``; the controller reads and feeds it every tick).
"""

from __future__ import annotations

import logging
from typing import Any

from xds_control.actuators.kubernetes import KubernetesScaler
from xds_control.actuators.leader import LeaseElector
from xds_control.actuators.peers import KubePeerBoard

log = logging.getLogger(__name__)

__all__ = ["attach_kubernetes"]


async def attach_kubernetes(cp: Any) -> None:
    """Set ``cp.scaler`` (started: the first list is in) and ``cp.elector`` (its loop a task of ``cp``)."""
    k = cp.config.kubernetes
    assert k is not None
    le = k.leader_election
    holder: dict[str, LeaseElector] = {}

    def is_leader() -> bool:
        e = holder.get("e")
        return True if e is None else e.is_leader()

    scaler = KubernetesScaler.from_config(k, is_leader=is_leader)
    elector = None
    if le.enabled:
        elector = LeaseElector(
            scaler.api_client, le.lease_name, le.lease_namespace or scaler.namespace, le.identity,
            lease_duration_s=le.lease_duration_s, renew_deadline_s=le.renew_deadline_s,
            retry_period_s=le.retry_period_s,
        )
        holder["e"] = elector
    await scaler.start()
    cp.scaler = scaler
    cp.elector = elector
    if elector is not None:
        # Cancelled by cp.stop() before the scaler closes its client; the elector releases the Lease then.
        cp._spawn("leader-election", elector.run)
        log.info("leader election on lease %s/%s as %s", elector.namespace, elector.name, elector.identity)
        board = KubePeerBoard(scaler.api_client, elector.namespace, f"{elector.name}-peers", elector.identity,
                              period_s=min(0.5, le.retry_period_s),
                              peer_ttl_s=max(4.0, le.lease_duration_s / 2))
        cp.peer_board = board
        cp._spawn("peer-board", board.run)
