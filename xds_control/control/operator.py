"""Operator overrides applied to every plan before it is published (pure; no gRPC, no clock).

The admin API writes an :class:`OperatorState`; the controller (autoscaled pools) and the control plane
(static config) read it. Entries are keyed by (pool, ``host:port``): an endpoint address shared by two
pools (two tenants' services) is overridden only in the pool the operator named.

* ``weights[(pool, key)]`` pins an endpoint's Envoy weight while it is in rotation;
* ``drains`` are endpoints an operator asked to drain: the controller feeds them to planning as forced
  drains (DRAINING until ACKed and idle, then removed and replaced); a static endpoint stays DRAINING (no new
  requests, in-flight ones finish) until it is undrained;
* ``specs[pool]`` is a policy spec set by an operator (SetPolicy, SetReplicaBounds); it survives config
  reloads;
* ``paused`` are autoscaled pools whose replica count an operator holds (PauseAutoscaling).

Entries whose endpoint no longer exists are forgotten (a new replica reusing a port never inherits them).
Every change calls ``on_change`` (the runtime persists the state there, see :func:`dump_state` and
:func:`load_state`), so the state survives a restart of the control plane.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from xds_control.core.errors import SpecError
from xds_control.core.traffic import EndpointPlan, HealthStatus, PoolPlan, TrafficPlan
from xds_control.policies import load_policy_spec

Key = tuple[str, str]  # (pool, host:port)

#: Format version of :func:`dump_state`.
STATE_FORMAT = 1


@dataclass
class OperatorState:
    weights: dict[Key, int] = field(default_factory=dict)
    drains: set[Key] = field(default_factory=set)
    specs: dict[str, Any] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    #: Called after every change (persistence); never with the state half-changed.
    on_change: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def pin(self, pool: str, key: str, weight: int) -> None:
        """Pin the Envoy weight of endpoint ``key`` in ``pool`` (while it is in rotation)."""
        if self.weights.get((pool, key)) != weight:
            self.weights[(pool, key)] = weight
            self._changed()

    def unpin(self, pool: str, key: str) -> None:
        if self.weights.pop((pool, key), None) is not None:
            self._changed()

    def drain(self, pool: str, key: str) -> None:
        if (pool, key) not in self.drains:
            self.drains.add((pool, key))
            self._changed()

    def undrain(self, pool: str, key: str) -> None:
        if (pool, key) in self.drains:
            self.drains.discard((pool, key))
            self._changed()

    def set_spec(self, pool: str, spec: Any) -> None:
        """Keep ``spec`` for ``pool`` over config reloads (and restarts, when persisted)."""
        if self.specs.get(pool) != spec:
            self.specs[pool] = spec
            self._changed()

    def set_paused(self, pool: str, paused: bool) -> None:
        """Hold (or release) the replica count of autoscaled ``pool``."""
        if paused != (pool in self.paused):
            (self.paused.add if paused else self.paused.discard)(pool)
            self._changed()

    def drained(self, pool: str) -> frozenset[str]:
        """Endpoint keys of ``pool`` an operator asked to drain."""
        return frozenset(k for p, k in self.drains if p == pool) if self.drains else frozenset()

    def prune(self, present: Iterable[Key]) -> None:
        """Forget pins and drains of endpoints not in ``present`` (a new replica reusing a port inherits none)."""
        keep = set(present)
        gone = [k for k in self.weights if k not in keep]
        for k in gone:
            del self.weights[k]
        if gone or not self.drains <= keep:
            self.drains &= keep
            self._changed()

    def apply(self, plan: TrafficPlan, known: Iterable[Key] = ()) -> TrafficPlan:
        """``plan`` with overrides applied; forgets entries neither in ``plan`` nor in ``known``."""
        if not self.weights and not self.drains:
            return plan
        present = {(p.name, e.key) for p in plan.pools for e in p.endpoints}
        present.update(known)
        self.prune(present)
        return apply_overrides(plan, self.weights, frozenset(self.drains))


def dump_state(state: OperatorState) -> dict[str, Any]:
    """``state`` as JSON-ready data (specs as their model dump, which names the policy)."""
    return {
        "format": STATE_FORMAT,
        "weights": [{"pool": p, "endpoint": k, "weight": w} for (p, k), w in sorted(state.weights.items())],
        "drains": [{"pool": p, "endpoint": k} for p, k in sorted(state.drains)],
        "paused": sorted(state.paused),
        "specs": {pool: spec.model_dump(mode="json") for pool, spec in sorted(state.specs.items())},
    }


def load_state(data: Any, pools: Mapping[str, bool]) -> tuple[OperatorState, list[str]]:
    """An :class:`OperatorState` from :func:`dump_state` data, and what was dropped and why.

    ``pools`` maps each pool of the config to whether it is autoscaled: entries of other pools are dropped,
    as are specs and pauses of static pools; specs are validated as policy specs (an invalid one is dropped).
    Raises ValueError when ``data`` is not a state at all (wrong shape or format).
    """
    if not isinstance(data, Mapping) or data.get("format") != STATE_FORMAT:
        got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"format: expected {STATE_FORMAT}, got {got!r}")
    st, dropped = OperatorState(), []

    def rows(name: str) -> list[Any]:
        v = data.get(name, [])
        if not isinstance(v, list):
            raise ValueError(f"{name}: expected a list, got {type(v).__name__}")
        return v

    for r in rows("weights"):
        pool, key, w = (r.get("pool"), r.get("endpoint"), r.get("weight")) if isinstance(r, Mapping) else (None,) * 3
        if not isinstance(pool, str) or not isinstance(key, str) or not isinstance(w, int) or w < 1:
            dropped.append(f"weights: invalid entry {r!r}")
        elif pool not in pools:
            dropped.append(f"weights: pool {pool!r} is not in the config")
        else:
            st.weights[(pool, key)] = w
    for r in rows("drains"):
        pool, key = (r.get("pool"), r.get("endpoint")) if isinstance(r, Mapping) else (None, None)
        if not isinstance(pool, str) or not isinstance(key, str):
            dropped.append(f"drains: invalid entry {r!r}")
        elif pool not in pools:
            dropped.append(f"drains: pool {pool!r} is not in the config")
        else:
            st.drains.add((pool, key))
    for pool in rows("paused"):
        if not isinstance(pool, str) or not pools.get(pool):
            dropped.append(f"paused: pool {pool!r} is not an autoscaled pool of the config")
        else:
            st.paused.add(pool)
    specs = data.get("specs", {})
    if not isinstance(specs, Mapping):
        raise ValueError(f"specs: expected a mapping, got {type(specs).__name__}")
    for pool, raw in specs.items():
        if not pools.get(pool):
            dropped.append(f"specs: pool {pool!r} is not an autoscaled pool of the config")
            continue
        try:
            st.specs[pool] = load_policy_spec(raw)
        except SpecError as e:
            dropped.append(f"specs.{pool}: {e}")
    return st, dropped


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
