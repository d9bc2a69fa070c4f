"""Read-only views of what the controller holds, shared by the live loop and the admin port."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EndpointView"]


@dataclass(frozen=True)
class EndpointView:
    """One endpoint of an autoscaled pool as of the pool's last tick."""

    key: str
    #: The scaler's replica id ("" once the replica vanished).
    replica_id: str
    #: Replica state (starting, ready, ...; "gone" once the replica vanished).
    state: str
    #: Coordination phase, lower case (pending, warming, ramping, serving, draining, removable).
    phase: str
    weight: int
    zone: str
    load: float | None
    latency_s: float | None
    running: float | None
    waiting: float | None
