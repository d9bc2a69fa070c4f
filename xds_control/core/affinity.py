"""Rendezvous (highest-random-weight) hashing of an affinity key onto weighted hosts.

The same arithmetic runs in two places and must agree bit for bit: in Envoy, in the prefix filter's Lua
(:mod:`xds_control.snapshot.prefix_filter`, ``spill: least_request``), and here, for the simulator and for tests
that predict which replica a prompt lands on. Pure functions of their arguments.

* the key is the 32-bit FNV-1a hash of the first bytes of the prompt (:func:`fnv1a32`);
* each host's score is ``weight / -ln(u)`` with ``u = (mix32(key ^ fnv1a32(host)) + 0.5) / 2**32``; the host with
  the highest score wins (weighted rendezvous hashing: a host of weight ``w`` wins about ``w / sum(w)`` of the
  keys, and adding or removing a host moves only the keys it wins or won, about ``1 / hosts`` of them);
* ``mix32`` is MurmurHash3's 32-bit finaliser, so that keys differing in a few bits score hosts independently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["fnv1a32", "mix32", "rendezvous_pick", "rendezvous_scores", "rendezvous_top"]

_M32 = 0xFFFFFFFF


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a of ``data``."""
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & _M32
    return h


def mix32(h: int) -> int:
    """MurmurHash3 ``fmix32``: a bijective avalanche of a 32-bit integer."""
    h &= _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def rendezvous_scores(key: int, hosts: Sequence[str], weights: Sequence[float],
                      host_hashes: Sequence[int] | None = None) -> list[float]:
    """Each host's score for ``key`` (32-bit) among ``hosts`` (``address:port`` names) with ``weights``; a host of
    weight <= 0 scores ``-inf``. ``host_hashes`` may carry ``fnv1a32`` of each name, precomputed."""
    out = []
    for i, w in enumerate(weights):
        if w <= 0:
            out.append(-math.inf)
            continue
        hh = host_hashes[i] if host_hashes is not None else fnv1a32(hosts[i].encode())
        u = (mix32((key ^ hh) & _M32) + 0.5) / 4294967296.0
        out.append(w / -math.log(u))
    return out


def rendezvous_top(key: int, hosts: Sequence[str], weights: Sequence[float], k: int,
                   host_hashes: Sequence[int] | None = None) -> list[int]:
    """Indices of the ``k`` hosts that score highest for ``key``, best first (ties: the earlier host), among the
    hosts with a positive weight. Raises ValueError when none has one."""
    sc = rendezvous_scores(key, hosts, weights, host_hashes)
    order = sorted((i for i in range(len(sc)) if sc[i] > -math.inf), key=lambda i: (-sc[i], i))
    if not order:
        raise ValueError("rendezvous hashing needs at least one host with a positive weight")
    return order[:k]


def rendezvous_pick(key: int, hosts: Sequence[str], weights: Sequence[float],
                    host_hashes: Sequence[int] | None = None) -> int:
    """Index of the host that wins ``key``: ``rendezvous_top(..., 1)[0]``."""
    return rendezvous_top(key, hosts, weights, 1, host_hashes)[0]
