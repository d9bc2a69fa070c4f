"""Per-endpoint coordination states and their pure, vectorized transitions.

Phases (:class:`~xds_control.core.model.EndpointPhase`)::

    PENDING --ready--> WARMING --warmup_s--> RAMPING --ACK + ramp_window_s--> SERVING
       ^                  |                     |                                |
       +----not ready-----+---------------------+------------not ready-----------+
    RAMPING/SERVING --drain--> DRAINING --ACK + (in_flight == 0 [+ peers done] or drain_timeout_s)--> REMOVABLE
    DRAINING --undrain (ready)--> SERVING          PENDING/WARMING --drain + ACK--> REMOVABLE

Contract:

* :func:`advance` is a pure function of (table, readiness, in-flight counts, ACK status, drain and
  undrain requests, now, spec). It returns a new :class:`CoordinationTable` and the list of
  :class:`Transition` s it made; the input table is not modified.
* ACK status is one scalar, ``acked_through``: the ``now`` of the newest plan that every proxy has
  ACKed (None if none). A phase entered at ``since`` is known to Envoy iff ``acked_through >= since``.
* Guarantees (tested): only :data:`ALLOWED` transitions happen; an endpoint becomes REMOVABLE only
  after Envoy ACKed a plan without traffic to it and it drained (in-flight 0, or the drain timeout
  passed); weight is only ever given to ready RAMPING/SERVING endpoints (see ``planning.plan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xds_control.core.model import EndpointPhase as P
from xds_control.policies.specs import TrafficSpec


class _P:
    """:class:`EndpointPhase` values as plain ints: enum member lookups are slow on the per-tick hot path."""

    PENDING = int(P.PENDING)
    WARMING = int(P.WARMING)
    RAMPING = int(P.RAMPING)
    SERVING = int(P.SERVING)
    DRAINING = int(P.DRAINING)
    REMOVABLE = int(P.REMOVABLE)

__all__ = ["ALLOWED", "CoordinationTable", "Transition", "advance", "select_drains", "ramp_fraction"]

#: Every transition :func:`advance` may make.
ALLOWED: frozenset[tuple[P, P]] = frozenset(
    {
        (P.PENDING, P.WARMING),
        (P.PENDING, P.REMOVABLE),
        (P.WARMING, P.PENDING),
        (P.WARMING, P.RAMPING),
        (P.WARMING, P.REMOVABLE),
        (P.RAMPING, P.PENDING),
        (P.RAMPING, P.SERVING),
        (P.RAMPING, P.DRAINING),
        (P.SERVING, P.PENDING),
        (P.SERVING, P.DRAINING),
        (P.DRAINING, P.SERVING),
        (P.DRAINING, P.REMOVABLE),
    }
)


def _ro(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False, slots=True)
class CoordinationTable:
    """Coordination state of a service's endpoints (one row per key). Immutable; pass it back each tick."""

    keys: tuple[str, ...]
    #: EndpointPhase values (int8).
    phase: np.ndarray
    #: When the endpoint entered its current phase (plan time, seconds).
    since: np.ndarray
    #: When the ACK of the current RAMPING/DRAINING phase was first seen (NaN until then).
    acked_at: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name, dtype in (("phase", np.int8), ("since", np.float64), ("acked_at", np.float64)):
            a = getattr(self, name)
            if not (isinstance(a, np.ndarray) and a.dtype == dtype and not a.flags.writeable):
                a = np.array(a, dtype=dtype, copy=True)
                a.setflags(write=False)
                object.__setattr__(self, name, a)
            if a.shape != (n,):
                raise ValueError(f"CoordinationTable.{name} has shape {a.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def empty(cls) -> CoordinationTable:
        return cls((), _ro(np.empty(0, np.int8)), _ro(np.empty(0)), _ro(np.empty(0)))

    @classmethod
    def adopt(cls, keys: tuple[str, ...], ready: np.ndarray, now: float) -> CoordinationTable:
        """Initial table for an existing fleet (controller start): ready endpoints SERVING, others PENDING.

        ``acked_at``/``since`` are ``-inf`` for adopted SERVING endpoints: they are already in Envoy.
        """
        n = len(keys)
        phase = np.where(ready, _P.SERVING, _P.PENDING).astype(np.int8)
        since = np.where(ready, -math.inf, now)
        return cls(tuple(keys), _ro(phase), _ro(since.astype(float)), _ro(np.full(n, -math.inf)))

    def phase_of(self, key: str) -> P | None:
        try:
            return P(int(self.phase[self.keys.index(key)]))
        except ValueError:
            return None

    def align(self, keys: tuple[str, ...], now: float) -> tuple[CoordinationTable, tuple[str, ...]]:
        """Re-index to ``keys``: new keys start PENDING at ``now``; returns (table, vanished keys)."""
        if keys == self.keys:
            return self, ()
        pos = {k: i for i, k in enumerate(self.keys)}
        idx = np.fromiter((pos.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        known = idx >= 0
        src = np.where(known, idx, 0)
        phase = np.where(known, self.phase[src] if len(self) else _P.PENDING, _P.PENDING).astype(np.int8)
        since = np.where(known, self.since[src] if len(self) else now, now)
        acked = np.where(known, self.acked_at[src] if len(self) else np.nan, np.nan)
        keyset = set(keys)
        vanished = tuple(k for k in self.keys if k not in keyset)
        return CoordinationTable(tuple(keys), _ro(phase), _ro(since.astype(float)), _ro(acked.astype(float))), vanished


@dataclass(frozen=True, slots=True)
class Transition:
    key: str
    src: P
    dst: P
    reason: str


def ramp_fraction(elapsed: np.ndarray, spec: TrafficSpec) -> np.ndarray:
    """Envoy slow-start shaped ramp: max(min_fraction, (elapsed/window)^(1/aggression)), NaN elapsed -> min."""
    if spec.ramp_window_s <= 0:
        return np.ones_like(elapsed)
    t = np.clip(np.nan_to_num(elapsed, nan=0.0) / spec.ramp_window_s, 0.0, 1.0)
    out: np.ndarray = np.maximum(spec.ramp_min_fraction, t ** (1.0 / spec.ramp_aggression))
    return out


def select_drains(
    table: CoordinationTable, target: int, in_flight: np.ndarray, ready: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Choose endpoints to drain (live count above ``target``) or to un-drain (below).

    Drain order: PENDING, WARMING, RAMPING, then SERVING by fewest in-flight requests (unknown last),
    ties by position. Un-drain: ready DRAINING endpoints (warm capacity is cheaper than a new pod).
    Returns boolean masks (drain, undrain) aligned with ``table.keys``.
    """
    phase = table.phase
    n = len(table)
    drain = np.zeros(n, dtype=bool)
    undrain = np.zeros(n, dtype=bool)
    live = phase <= _P.SERVING
    excess = int(np.count_nonzero(live)) - int(target)
    if excess > 0:
        cand = np.flatnonzero(live)
        fl = np.nan_to_num(in_flight[cand], nan=np.inf)
        order = np.lexsort((cand, fl, phase[cand]))  # last key is primary
        drain[cand[order[:excess]]] = True
    elif excess < 0:
        cand = np.flatnonzero((phase == _P.DRAINING) & ready)
        undrain[cand[: -excess]] = True
    return drain, undrain


def advance(
    table: CoordinationTable,
    ready: np.ndarray,
    in_flight: np.ndarray,
    acked_through: float | None,
    now: float,
    spec: TrafficSpec,
    drain: np.ndarray | None = None,
    undrain: np.ndarray | None = None,
    peers_done: np.ndarray | None = None,
) -> tuple[CoordinationTable, tuple[Transition, ...]]:
    """One coordination step for every endpoint (arrays aligned with ``table.keys``).

    ``peers_done``: with several control-plane instances, which endpoints no other instance's proxies may still
    send new requests to (None: no other instance). A DRAINING endpoint's in-flight count reaching 0 makes it
    REMOVABLE only where this is true (before, the count may be 0 between two of their requests); the
    drain timeout still applies either way.
    """
    n = len(table)
    phase0 = table.phase
    phase = phase0.copy()
    since = table.since.copy()
    acked_at = table.acked_at.copy()
    drain = np.zeros(n, bool) if drain is None else drain
    undrain = np.zeros(n, bool) if undrain is None else undrain
    ack = -math.inf if acked_through is None else float(acked_through)
    known = ack >= since  # Envoy has the endpoint's current phase
    reason = np.empty(n, dtype=object)

    def move(mask: np.ndarray, dst: int, why: str) -> None:
        if not mask.any():
            return
        phase[mask] = dst
        since[mask] = now
        acked_at[mask] = np.nan
        reason[mask] = why

    # record first sight of the ACK for phases whose clock depends on it
    first_ack = known & np.isnan(acked_at) & ((phase0 == _P.RAMPING) | (phase0 == _P.DRAINING))
    acked_at[first_ack] = now

    pend, warm, ramp, serv, drn = (phase0 == p for p in (_P.PENDING, _P.WARMING, _P.RAMPING, _P.SERVING, _P.DRAINING))
    out_of_eds = pend | warm
    # drains first: they win over readiness moves
    unknown = np.isnan(in_flight)
    idle = unknown | (in_flight <= 0.0)  # unknown in-flight counts as idle here, as busy for the drain below
    move(out_of_eds & drain & known & idle, _P.REMOVABLE, "never served; removed")
    move((ramp | serv) & drain, _P.DRAINING, "scale-down: draining")
    rest = ~drain
    move(pend & ready & rest, _P.WARMING, "ready")
    move((warm | ramp | serv) & ~ready & rest, _P.PENDING, "not ready")
    move(warm & ready & rest & (now - table.since >= spec.warmup_s), _P.RAMPING, "warm-up done: ramping")
    ramp_done = ramp & ready & rest & ~np.isnan(acked_at) & (now - acked_at >= spec.ramp_window_s)
    move(ramp_done, _P.SERVING, "ramp complete")
    move(drn & undrain & ready, _P.SERVING, "undrained for scale-up")
    quiet = ~unknown & (in_flight <= 0.0)
    if peers_done is not None:
        quiet &= peers_done
    drained_now = drn & ~undrain & ~np.isnan(acked_at) & (
        quiet
        | (
            (now - acked_at >= spec.drain_timeout_s)
            if spec.drain_timeout_s is not None
            else np.zeros(n, dtype=bool)
        )
    )
    move(drained_now, _P.REMOVABLE, "drained")

    changed = np.flatnonzero(phase != phase0)
    transitions = tuple(Transition(table.keys[i], P(int(phase0[i])), P(int(phase[i])), reason[i]) for i in changed)
    return CoordinationTable(table.keys, _ro(phase), _ro(since), _ro(acked_at)), transitions
