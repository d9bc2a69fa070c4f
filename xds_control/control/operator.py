"""Operator overrides applied to every plan before it is published (pure; no gRPC, no clock).

The admin API writes an :class:`OperatorState`; the controller (autoscaled pools) and the control plane
(static config) read it. Entries are keyed by (pool, ``host:port``): an endpoint address shared by two
pools (two tenants' services) is overridden only in the pool the operator named.

* ``weights[(pool, key)]`` pins an endpoint's Envoy weight while it is in rotation;
* ``drains`` are endpoints an operator asked to drain: the controller feeds them to planning as forced
  drains (DRAINING until ACKed and idle, then removed and replaced); a static endpoint stays DRAINING (no new
  requests, in-flight ones finish) until it is undrained;
* ``specs[pool]`` is a policy spec set by an operator (SetPolicy, SetReplicaBounds); it survives config
  reloads until the process restarts.

Entries whose endpoint no longer exists are forgotten (a new replica reusing a port never inherits them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from xds_control.core.traffic import EndpointPlan, HealthStatus, PoolPlan, TrafficPlan

Key = tuple[str, str]  # (pool, host:port)


@dataclass
class OperatorState:
    weights: dict[Key, int] = field(default_factory=dict)
    drains: set[Key] = field(default_factory=set)
    specs: dict[str, Any] = field(default_factory=dict)

    def pin(self, pool: str, key: str, weight: int) -> None:
        """Pin the Envoy weight of endpoint ``key`` in ``pool`` (while it is in rotation)."""
        self.weights[(pool, key)] = weight

    def unpin(self, pool: str, key: str) -> None:
        self.weights.pop((pool, key), None)

    def drain(self, pool: str, key: str) -> None:
        self.drains.add((pool, key))

    def undrain(self, pool: str, key: str) -> None:
        self.drains.discard((pool, key))

    def set_spec(self, pool: str, spec: Any) -> None:
        """Keep ``spec`` for ``pool`` over config reloads."""
        self.specs[pool] = spec

    def drained(self, pool: str) -> frozenset[str]:
        """Endpoint keys of ``pool`` an operator asked to drain."""
        return frozenset(k for p, k in self.drains if p == pool) if self.drains else frozenset()

    def prune(self, present: Iterable[Key]) -> None:
        """Forget pins and drains of endpoints not in ``present`` (a new replica reusing a port inherits none)."""
        keep = set(present)
        for k in [k for k in self.weights if k not in keep]:
            del self.weights[k]
        self.drains &= keep

    def apply(self, plan: TrafficPlan, known: Iterable[Key] = ()) -> TrafficPlan:
        """``plan`` with overrides applied; forgets entries neither in ``plan`` nor in ``known``."""
        if not self.weights and not self.drains:
            return plan
        present = {(p.name, e.key) for p in plan.pools for e in p.endpoints}
        present.update(known)
        self.prune(present)
        return apply_overrides(plan, self.weights, frozenset(self.drains))


def apply_overrides(plan: TrafficPlan, pins: Mapping[Key, int], drains: frozenset[Key]) -> TrafficPlan:
    """``plan`` with operator pins and drains applied (pure: returns ``plan`` itself when nothing changes).

    A drained endpoint becomes DRAINING (no new requests, in-flight ones finish); a pinned endpoint in
    rotation (HEALTHY) gets the pinned weight.
    """
    if not pins and not drains:
        return plan
    pools = tuple(_pool(p, pins, drains) for p in plan.pools)
    return plan if all(a is b for a, b in zip(pools, plan.pools, strict=False)) else replace(plan, pools=pools)


def _pool(pool: PoolPlan, pins: Mapping[Key, int], drains: frozenset[Key]) -> PoolPlan:
    changed = False
    eps: list[EndpointPlan] = []
    for e in pool.endpoints:
        k = (pool.name, e.key)
        if k in drains and e.health is not HealthStatus.DRAINING:
            e = replace(e, weight=1, health=HealthStatus.DRAINING)
            changed = True
        elif k in pins and e.health is HealthStatus.HEALTHY and e.weight != pins[k]:
            e = replace(e, weight=pins[k])
            changed = True
        eps.append(e)
    return replace(pool, endpoints=tuple(eps)) if changed else pool
