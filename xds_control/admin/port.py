"""What the admin API needs from a running control plane: read views and operator commands, nothing more.

The runtime implements :class:`ControlPlanePort` (``xds_control.runtime.admin_port.RuntimeAdminPort``); the
admin service talks to nothing else, so it never imports the runtime and never mutates runtime objects.
Every value crossing the port is an immutable view, built when asked for.

Commands take a pool name and an endpoint key (``host:port``); the admin validates requests (names, tenants,
preconditions) before calling them, so commands do not raise for input the admin already checked.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from xds_control.config import Config
from xds_control.control.views import EndpointView
from xds_control.policies import PolicySpec
from xds_control.snapshot.snapshot import Snapshot
from xds_control.xds.publisher import Rejection

Key = tuple[str, str]  # (pool, host:port)


@dataclass(frozen=True)
class TypeSyncView:
    """One resource type of one connected proxy (as in ``/debug/syncz``)."""

    type: str
    state: str
    nonce: str
    error: str
    sent_version: int | None
    acked_version: int | None
    #: The version ``error`` rejected (None without an error): matches a :class:`NackView`.
    error_version: int | None = None


@dataclass(frozen=True)
class ProxyView:
    node: str
    cluster: str
    protocol: str
    peer: str
    types: tuple[TypeSyncView, ...]


#: A proxy's NACK as the publisher records it (frozen): node, type, version, message, at, and the resources and
#: services the rejected change concerns (``attributed`` False: it could not be attributed).
NackView = Rejection


@dataclass(frozen=True)
class XdsStatus:
    version: int  # of the current snapshot (0 before the first)
    last_good_version: int  # newest version every proxy ACKed (0 if none)
    last_error: str  # why the last publish failed ("" if it did not)
    rejections: tuple[NackView, ...]  # recent NACKs, oldest first
    proxies: tuple[ProxyView, ...]


@dataclass(frozen=True)
class TickView:
    """The last tick of an autoscaled pool."""

    current: int
    target: int
    ready: int
    endpoints: tuple[EndpointView, ...]


@dataclass(frozen=True)
class ShadowView:
    """What one shadow policy of a pool decided on the last tick (never acted on), and what it would have cost."""

    policy: str  # as configured (preset name or file)
    target: int
    current: int
    explanation: str
    #: Integral of its target replicas over time, and of the pool's current replicas over the same time.
    would_replica_seconds: float
    actual_replica_seconds: float = 0.0
    mode: str = ""


@dataclass(frozen=True)
class PoolView:
    """An autoscaled pool as the controller holds it now."""

    service: str
    pool: str
    spec: PolicySpec  # in force (a frozen model)
    paused: bool
    #: Coordination phase of each endpoint the controller tracks, lower case (see EndpointView.phase).
    phases: Mapping[str, str]
    #: Replicas the last plan asks the scaler for, and why (None / "" before the first tick).
    planned_replicas: int | None
    plan_explanation: str
    last_tick: TickView | None
    #: The pool's shadow policies as of the last tick, in config order (empty without any).
    shadows: tuple[ShadowView, ...] = ()


@dataclass(frozen=True)
class DecisionView:
    at: float  # wall-clock seconds
    service: str
    pool: str
    policy: str
    current: int
    target: int
    ready: int
    mode: str
    load_index: float | None
    explanation: str
    version: int  # snapshot version that carried it (0 if none)


@dataclass(frozen=True)
class OverridesView:
    """Operator weight pins and drains, keyed by (pool, host:port)."""

    weights: Mapping[Key, int]
    drains: frozenset[Key]


EventListener = Callable[[dict[str, Any]], None]


class ControlPlanePort(Protocol):
    # -- read ---------------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        """The config in force (changes on a reload)."""

    def instance(self) -> str:
        """This control plane's identity (the Lease holder identity, else host:pid)."""

    def is_leader(self) -> bool: ...

    def snapshot(self) -> Snapshot | None:
        """The snapshot served now (None before the first)."""

    def xds_status(self) -> XdsStatus: ...

    def signal_alerts(self) -> Mapping[str, str]:
        """pool -> why its signals are lost (empty when all answer)."""

    def pool_view(self, pool: str) -> PoolView | None:
        """The autoscaled pool ``pool``; None for a static or unknown pool."""

    def decisions(self) -> tuple[DecisionView, ...]:
        """The retained per-pool decisions, oldest first (empty without autoscaling)."""

    def overrides(self) -> OverridesView: ...

    def subscribe_events(self, listener: EventListener) -> Callable[[], None]:
        """Call ``listener`` with each event dict (controller events, pushes, ACKs, NACKs), starting with the
        controller events still buffered; returns the function that unsubscribes. The listener owns the dict.
        ACK and NACK events carry ``resources`` and ``services`` (what the change concerns) and ``attributed``."""

    # -- operator commands --------------------------------------------------------------------------
    def set_weight_override(self, pool: str, endpoint: str, weight: int) -> None: ...

    def clear_weight_override(self, pool: str, endpoint: str) -> None: ...

    def drain(self, pool: str, endpoint: str) -> None: ...

    def undrain(self, pool: str, endpoint: str) -> None: ...

    def pause(self, pool: str) -> None:
        """Hold the replica count of autoscaled ``pool``."""

    def resume(self, pool: str) -> None: ...

    def set_policy(self, pool: str, spec: PolicySpec) -> None:
        """Put a validated spec in force for autoscaled ``pool``; it survives config reloads."""

    def publish_static(self, reason: str) -> None:
        """Without a controller: publish the config's plan with the operator overrides now. With one, nothing
        (its next tick applies them)."""


__all__ = ["ControlPlanePort", "DecisionView", "EndpointView", "EventListener", "NackView", "OverridesView",
           "PoolView", "ProxyView", "ShadowView", "TickView", "TypeSyncView", "XdsStatus"]
