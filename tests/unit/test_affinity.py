"""Rendezvous hashing of the prefix key (``xds_control.core.affinity``), which Envoy's prefix filter repeats in Lua.

The Lua twin is checked against these functions with a real Envoy (tests/e2e/test_prefix_routing.py); here the
arithmetic itself: reference values, weights give shares, a new host takes about 1/(N+1) of the keys.
"""

from __future__ import annotations

import collections
import math

import pytest

from xds_control.core.affinity import fnv1a32, mix32, rendezvous_pick, rendezvous_scores, rendezvous_top


def test_reference_values() -> None:
    # FNV-1a 32 and MurmurHash3's fmix32 reference values
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968
    assert mix32(0) == 0
    assert mix32(1) == 0x514E28B7


def test_weights_give_shares_and_a_new_host_takes_about_its_share() -> None:
    hosts = [f"10.0.0.{i}:8000" for i in range(4)]
    keys = [mix32(k * 2654435761) for k in range(8000)]
    even = collections.Counter(rendezvous_pick(k, hosts, [1.0] * 4) for k in keys)
    assert all(abs(v / len(keys) - 0.25) < 0.03 for v in even.values()), even
    heavy = collections.Counter(rendezvous_pick(k, hosts, [3.0, 1.0, 1.0, 1.0]) for k in keys)
    assert abs(heavy[0] / len(keys) - 0.5) < 0.03, heavy
    before = [rendezvous_pick(k, hosts, [1.0] * 4) for k in keys]
    after = [rendezvous_pick(k, [*hosts, "10.0.0.9:8000"], [1.0] * 5) for k in keys]
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    # only keys won by the new host move: 1/5 of them
    assert all(b == 4 for _, b in moved) and abs(len(moved) / len(keys) - 0.2) < 0.03
    # a host of weight 0 never wins; removing a host moves only its keys
    assert 3 not in {rendezvous_pick(k, hosts, [1.0, 1.0, 1.0, 0.0]) for k in keys}
    gone = [rendezvous_pick(k, hosts[:3], [1.0] * 3) for k in keys]
    assert all(a == b for a, b in zip(before, gone, strict=True) if a != 3)


def test_top_k_is_the_score_order_and_starts_with_the_pick() -> None:
    hosts = [f"10.0.0.{i}:8000" for i in range(6)]
    w = [1.0, 2.0, 1.0, 0.0, 1.0, 3.0]
    for k in range(50):
        key = mix32(k + 7)
        sc = rendezvous_scores(key, hosts, w)
        top = rendezvous_top(key, hosts, w, 3)
        assert top[0] == rendezvous_pick(key, hosts, w) and 3 not in top
        assert [sc[i] for i in top] == sorted((x for x in sc if x > -math.inf), reverse=True)[:3]
    assert len(rendezvous_top(1, hosts[:2], [1.0, 1.0], 5)) == 2


def test_no_positive_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        rendezvous_pick(1, ["a:1"], [0.0])
