"""Prefix cache of the replica model, prefix-aware routing and the traces that carry ``hash_ids``."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from xds_control.core.affinity import rendezvous_pick
from xds_control.fleet import costmodel as cm
from xds_control.fleet.prefixcache import PrefixCache
from xds_control.fleet.trace import (
    SharedPrefixShape,
    Trace,
    TraceError,
    TraceRequest,
    load_trace,
    read_trace,
    shared_prefix,
    write_trace,
)
from xds_control.sim.cache_metrics import compute_cache_metrics
from xds_control.sim.controller import FixedController
from xds_control.sim.engine import SimConfig, simulate
from xds_control.sim.metrics import compute_metrics
from xds_control.sim.routing import GieIndexer, Maglev, RoutingParams, bounded_pick, host_slots, prefix_key

BT = 512


# --- the cache by hand
def test_miss_then_hit_after_release() -> None:
    c = PrefixCache(gpu_blocks=10, block_tokens=BT)
    ids = (1, 2, 3)
    inp = 3 * BT + 100  # 3 full blocks + a partial one
    p = c.plan(ids, inp, inp + 50)
    assert p is not None and p.gpu_tokens == 0 and p.new_pinned == 4
    c.commit(ids, inp, inp + 50, p)
    assert c.used_blocks == 4
    c.release(ids, inp, inp + 50)
    assert c.used_blocks == 0 and c.cached_blocks() == 3
    p2 = c.plan(ids, inp, inp + 50)
    assert p2 is not None and p2.gpu_tokens == 3 * BT
    c.commit(ids, inp, inp + 50, p2)
    assert (c.queries_tokens, c.hits_tokens) == (2 * inp, 3 * BT)


def test_last_token_is_always_computed() -> None:
    c = PrefixCache(gpu_blocks=10, block_tokens=BT)
    ids = (1, 2)
    inp = 2 * BT  # exactly two full blocks: the second cannot be a hit (vLLM computes the last token)
    c.commit(ids, inp, inp, c.plan(ids, inp, inp))  # type: ignore[arg-type]
    c.release(ids, inp, inp)
    p = c.plan(ids, inp, inp)
    assert p is not None and p.gpu_tokens == BT


def test_chained_prefix_semantics() -> None:
    c = PrefixCache(gpu_blocks=20, block_tokens=BT)
    a = (1, 2, 3, 4)
    c.commit(a, 4 * BT + 1, 4 * BT + 1, c.plan(a, 4 * BT + 1, 4 * BT + 1))  # type: ignore[arg-type]
    c.release(a, 4 * BT + 1, 4 * BT + 1)
    # shares blocks 0..1 then diverges: 2 blocks hit although block 3 (id 4) is cached too
    assert c.match((1, 2, 9, 4), 4 * BT + 1) == (2, 0)
    # a different first block: nothing hits, whatever follows
    assert c.match((7, 2, 3, 4), 4 * BT + 1) == (0, 0)


def test_lru_eviction_and_pinned_blocks_are_never_evicted() -> None:
    c = PrefixCache(gpu_blocks=4, block_tokens=BT)
    run = (1, 2)
    c.commit(run, 2 * BT + 1, 2 * BT + 1, c.plan(run, 2 * BT + 1, 2 * BT + 1))  # type: ignore[arg-type]
    # 3 of 4 blocks pinned; a 2-block request does not fit
    assert c.plan((5, 6), 2 * BT, 2 * BT) is None
    done = (3,)
    c.commit(done, BT, BT, c.plan(done, BT, BT))  # type: ignore[arg-type]
    c.release(done, BT, BT)
    assert 3 in c and c.used_blocks == 3
    # needs one block: the free cached block 3 is evicted, the pinned 1 and 2 stay
    c.commit((8,), BT, BT, c.plan((8,), BT, BT))  # type: ignore[arg-type]
    assert 3 not in c and 1 in c and 2 in c and c.evictions == 1


def test_free_queue_evicts_tail_blocks_first() -> None:
    c = PrefixCache(gpu_blocks=3, block_tokens=BT)
    a = (1, 2, 3)
    c.commit(a, 3 * BT + 1, 3 * BT, c.plan(a, 3 * BT + 1, 3 * BT))  # type: ignore[arg-type]
    c.release(a, 3 * BT + 1, 3 * BT)
    c.commit((9,), BT, BT, c.plan((9,), BT, BT))  # type: ignore[arg-type]
    assert 3 not in c and 1 in c and 2 in c  # the suffix went first, the prefix survives


def test_shared_blocks_pinned_once() -> None:
    c = PrefixCache(gpu_blocks=5, block_tokens=BT)
    a = (1, 2, 3)
    c.commit(a, 3 * BT + 1, 3 * BT + 1, c.plan(a, 3 * BT + 1, 3 * BT + 1))  # type: ignore[arg-type]
    p = c.plan(a, 3 * BT + 1, 3 * BT + 1)
    assert p is not None and p.new_pinned == 1 and p.gpu_tokens == 3 * BT
    c.commit(a, 3 * BT + 1, 3 * BT + 1, p)
    assert c.used_blocks == 5
    c.release(a, 3 * BT + 1, 3 * BT + 1)
    assert c.used_blocks == 4  # still pinned by the other request
    c.release(a, 3 * BT + 1, 3 * BT + 1)
    assert c.used_blocks == 0 and c.cached_blocks() == 3


def test_host_tier_demotes_and_hits() -> None:
    c = PrefixCache(gpu_blocks=2, block_tokens=BT, host_blocks=4)
    a = (1, 2)
    c.commit(a, 2 * BT + 1, 2 * BT, c.plan(a, 2 * BT + 1, 2 * BT))  # type: ignore[arg-type]
    c.release(a, 2 * BT + 1, 2 * BT)
    b = (5, 6)
    c.commit(b, 2 * BT + 1, 2 * BT, c.plan(b, 2 * BT + 1, 2 * BT))  # type: ignore[arg-type]
    c.release(b, 2 * BT + 1, 2 * BT)
    assert 1 not in c and list(c.host) == [2, 1]  # evicted tail first, demoted to the host tier
    p = c.plan(a, 2 * BT + 1, 2 * BT)
    assert p is not None and (p.gpu_tokens, p.host_blocks, p.host_tokens) == (0, 2, 2 * BT)
    c.commit(a, 2 * BT + 1, 2 * BT, p)
    assert c.host_hits_tokens == 2 * BT


def test_host_load_costs_far_less_than_recompute() -> None:
    p = cm.DEFAULT_PROFILE
    assert cm.gpu_cache_blocks(p) == 180_000 // 512
    load = cm.host_block_load_s(p)
    assert load == pytest.approx(512 * 131072 / 25e9)
    assert load < 0.05 * cm.prefill_time_s(p, 512)
    assert cm.cached_prefill_time_s(p, 2048, gpu_cached_tokens=1024, host_blocks=1, host_tokens=512) == (
        pytest.approx(p.prefill_s_per_token * 512 + load))
    with pytest.raises(ValueError, match="host_kv_blocks"):
        p.with_(host_kv_blocks=-1)


# --- the simulator with a cache
def _trace(rows: list[tuple[float, int, int, tuple[int, ...]]]) -> Trace:
    return Trace("hand", np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.int64),
                 np.array([r[2] for r in rows], dtype=np.int64), tuple(r[3] for r in rows))


def test_cached_tokens_skip_prefill_in_the_simulator() -> None:
    prof = cm.get_profile("tiny").with_(kv_block_tokens=512, kv_capacity_tokens=16_384)
    inp = 4 * 512 + 10
    tr = _trace([(0.0, inp, 2, (1, 2, 3, 4, 5)), (10.0, inp, 2, (1, 2, 3, 4, 6))])
    res = simulate(tr, FixedController(), SimConfig(profile=prof, warmup_s=1000))
    assert res.cached_tokens is not None and res.cached_tokens.tolist() == [0, 4 * 512]
    ttft = res.ttft - res.arrival
    assert ttft[0] == pytest.approx(prof.prefill_s_per_token * inp)
    assert ttft[1] == pytest.approx(prof.prefill_s_per_token * 10)
    cmx = compute_cache_metrics(res)
    assert cmx["prefix_cache_hit_rate"] == pytest.approx(4 * 512 / (2 * inp))
    # no hash_ids: no cache, no cache metrics
    res2 = simulate(tr.without_hash_ids(), FixedController(), SimConfig(profile=prof, warmup_s=1000))
    assert res2.cached_tokens is None and compute_cache_metrics(res2)["prefix_cache_hit_rate"] is None
    assert (res2.ttft - res2.arrival)[1] == pytest.approx(prof.prefill_s_per_token * inp)


# --- routing pieces
def test_maglev_balanced_and_minimal_disruption() -> None:
    keys = [f"replica-{i}" for i in range(8)]
    m8 = Maglev(keys, [1.0] * 8, 4099)
    counts = np.bincount(m8.table, minlength=8)
    assert counts.max() - counts.min() <= 1
    m9 = Maglev([*keys, "replica-8"], [1.0] * 9, 4099)
    moved = sum(1 for a, b in zip(m8.table, m9.table, strict=True) if a != b)
    assert moved / 4099 < 0.2  # about 1/9 move, not a reshuffle
    mw = Maglev(keys[:2], [1.0, 3.0], 4099)
    assert np.bincount(mw.table)[1] / 4099 == pytest.approx(0.75, abs=0.01)


def test_bounded_load_honoured() -> None:
    w = [0.25] * 4
    # Envoy: slots = ceil(ceil((overall + 1) * 1.25) * weight); host over its slots is skipped
    assert host_slots(39, 0.25, 1.25) == 13
    active = [20, 5, 5, 9]
    k = bounded_pick(0, prefix_key((1, 2), 2), active, w, 1.25)
    assert k != 0 and active[k] <= host_slots(sum(active), 0.25, 1.25)
    assert bounded_pick(0, 123, [3, 3, 3, 3], w, 1.25) == 0  # within its slots: stays
    # same key, same probe order
    assert bounded_pick(0, 99, active, w, 1.25) == bounded_pick(0, 99, active, w, 1.25)


def test_gie_indexer_lru_and_match() -> None:
    ix = GieIndexer(capacity_entries=64, per_block=32)  # 2 trace blocks per server
    ix.add((1, 2), pod=0)
    ix.add((1, 3), pod=1)
    m = ix.match((1, 2), total_g=64)
    assert m == {0: 64, 1: 32}
    ix.add((5,), pod=0)  # evicts the least recent entry of pod 0 (block 1)
    # GIE walks the blocks while *any* server has the block and credits each holder: pod 0 still
    # gets block 2 although it lost block 1
    assert ix.match((1, 2), total_g=64) == {1: 32, 0: 32}
    ix.remove_pod(0)
    assert ix.match((1, 2), total_g=64) == {1: 32}


# --- whole runs
def _run(tr: Trace, lb: str, n: int = 4, factor: float = 1.25, spill: str = "least_request") -> dict[str, float]:
    res = simulate(tr, FixedController(name="fixed"),
                   SimConfig(lb=lb, routing=RoutingParams(hash_balance_factor=factor, spill=spill), warmup_s=1e9))
    m = compute_metrics(res)
    m.update(compute_cache_metrics(res))
    return m


def test_oracle_beats_prefix_beats_round_robin_on_shared_prefixes() -> None:
    tr = shared_prefix(SharedPrefixShape(groups=24, prefix_blocks=8, zipf_s=1.0, question_tokens=128,
                                         output_tokens=32, rate_rps=6.0, duration_s=180.0), seed=3)
    hit = {lb: _run(tr, lb)["prefix_cache_hit_rate"] for lb in ("round_robin", "prefix", "oracle", "gie")}
    hit["maglev"] = _run(tr, "prefix", spill="maglev")["prefix_cache_hit_rate"]
    # the oracle and Maglev share the load bound (1.25 x the mean active): the oracle knows the caches
    assert hit["oracle"] >= hit["maglev"] >= hit["round_robin"]
    assert hit["maglev"] > hit["round_robin"] + 0.05
    # spilling to least request has no active-request bound (the replica's prefill bound instead)
    assert hit["prefix"] > hit["round_robin"] + 0.05 and hit["prefix"] >= 0.8 * hit["oracle"]
    assert all(0.0 <= v <= 1.0 for v in hit.values())


def test_prefix_without_hash_ids_is_least_request() -> None:
    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0, 120, 400))
    tr = Trace("plain", t, rng.integers(100, 2000, 400).astype(np.int64), rng.integers(10, 200, 400).astype(np.int64))
    a = simulate(tr, FixedController(), SimConfig(lb="least_request"))
    b = simulate(tr, FixedController(), SimConfig(lb="prefix"))
    assert np.array_equal(a.replica, b.replica) and np.array_equal(a.ttft, b.ttft, equal_nan=True)


def test_unknown_lb_is_named() -> None:
    tr = _trace([(0.0, 600, 2, (1, 2))])
    with pytest.raises(ValueError, match="'sticky'"):
        simulate(tr, FixedController(), SimConfig(lb="sticky"))


# --- traces with hash_ids
def test_load_trace_reads_hash_ids_csv_and_gz(tmp_path) -> None:
    text = "timestamp_s,input_tokens,output_tokens,hash_ids\n1.0,1030,5,0 1 2\n0.5,600,3,0 7\n"
    p = tmp_path / "t.csv"
    p.write_text(text)
    g = tmp_path / "t.csv.gz"
    with gzip.open(g, "wt") as fh:
        fh.write(text)
    for path in (p, g):
        tr = load_trace(path)
        assert tr.name == "t" and tr.t.tolist() == [0.5, 1.0]
        assert tr.hash_ids == ((0, 7), (0, 1, 2))
    rows = read_trace(g)
    assert rows[0] == TraceRequest(0.5, 600, 3, (0, 7))
    out = tmp_path / "w.csv"
    write_trace(out, rows)
    assert load_trace(out).hash_ids == ((0, 7), (0, 1, 2))
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp_s,input_tokens,output_tokens\n0,10,2\n")
    assert load_trace(plain).hash_ids is None
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp_s,input_tokens,output_tokens,hash_ids\n0,10,2,0 x\n")
    with pytest.raises(TraceError, match="hash_ids"):
        load_trace(bad)


def test_shared_prefix_generator() -> None:
    sh = SharedPrefixShape(groups=5, prefix_blocks=3, zipf_s=1.2, question_tokens=100, rate_rps=20.0,
                           duration_s=50.0)
    a, b = shared_prefix(sh, seed=1), shared_prefix(sh, seed=1)
    assert a.hash_ids == b.hash_ids and np.array_equal(a.t, b.t)
    assert a.hash_ids is not None and len(a) == len(a.hash_ids) > 500
    firsts = [h[:3] for h in a.hash_ids]
    assert len(set(firsts)) <= 5
    for h, n in zip(a.hash_ids, a.input_tokens, strict=True):
        assert len(h) == math.ceil(n / 512)
    tails = [x for h in a.hash_ids for x in h[3:]]
    assert len(tails) == len(set(tails))  # questions never share blocks
    counts = sorted((firsts.count(f) for f in set(firsts)), reverse=True)
    assert counts[0] > 2 * counts[-1]  # Zipf skew
    with pytest.raises(ValueError, match="groups"):
        shared_prefix(SharedPrefixShape(groups=0))


def test_bound_spills_a_hot_key_and_unbounded_does_not() -> None:
    rng = np.random.default_rng(2)
    n = 300
    t = np.sort(rng.uniform(0, 60, n))
    ids = tuple((0, 1000 + k) for k in range(n))  # one shared first block: one key with prefix_blocks=1
    tr = Trace("hot", t, np.full(n, 700, dtype=np.int64), np.full(n, 300, dtype=np.int64), ids)

    def served(factor: float) -> int:
        res = simulate(tr, FixedController(), SimConfig(
            lb="prefix", routing=RoutingParams(prefix_blocks=1, hash_balance_factor=factor, spill="maglev")))
        return len(set(res.replica[res.replica >= 0].tolist()))

    assert served(0.0) == 1
    assert served(1.25) > 1


def test_affinity_spills_to_least_request_past_the_prefill_bound() -> None:
    """``spill="least_request"``: the key's replica is the rendezvous pick; it keeps a hot key while its prefill
    backlog less its cache's saving is within ``affinity_backlog_s``, else the retry goes by least request."""
    rng = np.random.default_rng(2)
    n = 300
    t = np.sort(rng.uniform(0, 20, n))
    ids = tuple((0, 1000 + k) for k in range(n))
    tr = Trace("hot", t, np.full(n, 2000, dtype=np.int64), np.full(n, 100, dtype=np.int64), ids)

    def run(bound: float) -> np.ndarray:
        res = simulate(tr, FixedController(), SimConfig(
            lb="prefix", routing=RoutingParams(prefix_blocks=1, affinity_backlog_s=bound, affinity_choices=1)))
        if bound < 1:
            assert int((res.status != 1).sum()) == 0
        return res.replica[res.replica >= 0]

    sticky = run(1e9)  # no bound: one replica takes the hot key (and its queue overflows)
    assert len(set(sticky.tolist())) == 1
    # the one replica is the key's rendezvous pick among the warm fleet (replica-0..N-1, weight 1)
    fleet = sorted(set(run(0.0).tolist()) | set(sticky.tolist()))
    key = prefix_key((0,), 1) & 0xFFFFFFFF
    names = [f"replica-{r}" for r in range(max(fleet) + 1)]
    assert sticky[0] == rendezvous_pick(key, names, [1.0] * len(names))
    spread = run(0.0)
    assert len(set(spread.tolist())) > 1
    assert (spread == sticky[0]).mean() < 0.9
    # a decode-stall budget also sends the hot key away once its replica decodes: spread even without the bound
    res = simulate(tr, FixedController(), SimConfig(lb="prefix", routing=RoutingParams(
        prefix_blocks=1, affinity_backlog_s=1e9, affinity_choices=1, affinity_stall_s=1e-6)))
    assert int((res.status != 1).sum()) == 0 and len(set(res.replica.tolist())) > 1
