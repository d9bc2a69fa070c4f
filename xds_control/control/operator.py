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

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from xds_control.core.traffic import EndpointPlan, HealthStatus, PoolPlan, TrafficPlan

Key = tuple[str, str]  # (pool, host:port)


@dataclass
class OperatorState:
    weights: dict[Key, int] = field(default_factory=dict)
    drains: set[Key] = field(default_factory=set)
    specs: dict[str, Any] = field(default_factory=dict)

    def drained(self, pool: str) -> frozenset[str]:
        """Endpoint keys of ``pool`` an operator asked to drain."""
        return frozenset(k for p, k in self.drains if p == pool) if self.drains else frozenset()

    def apply(self, plan: TrafficPlan, known: Iterable[Key] = ()) -> TrafficPlan:
        """``plan`` with overrides applied; forgets entries neither in ``plan`` nor in ``known``."""
        if not self.weights and not self.drains:
            return plan
        present = {(p.name, e.key) for p in plan.pools for e in p.endpoints}
        present.update(known)
        for k in [k for k in self.weights if k not in present]:
            del self.weights[k]
        self.drains &= present
        pools = tuple(self._pool(p) for p in plan.pools)
        return plan if all(a is b for a, b in zip(pools, plan.pools)) else replace(plan, pools=pools)

    def _pool(self, pool: PoolPlan) -> PoolPlan:
        changed = False
        eps: list[EndpointPlan] = []
        for e in pool.endpoints:
            k = (pool.name, e.key)
            if k in self.drains and e.health is not HealthStatus.DRAINING:
                e = replace(e, weight=1, health=HealthStatus.DRAINING)
                changed = True
            elif k in self.weights and e.health is HealthStatus.HEALTHY and e.weight != self.weights[k]:
                e = replace(e, weight=self.weights[k])
                changed = True
            eps.append(e)
        return replace(pool, endpoints=tuple(eps)) if changed else pool
