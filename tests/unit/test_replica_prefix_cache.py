"""The emulated replica's prefix cache (vLLM automatic prefix caching), without a process.

Leading cached blocks are hits, the last prompt token is always computed, blocks of running
requests are pinned, free blocks go least recently used first, and the load generator's text
for a trace row makes equal block ids equal text (so equal chained hashes) and nothing else.
Also the engine's prefill backlog (what the server sheds on): the prefill step in progress plus the
waiting prompts, nothing when idle or decoding; and the cache's saving for a request (subtracted from the
backlog before shedding): its cached leading blocks, never the last token's, looked up without touching
the cache.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from xds_control.fleet import costmodel
from xds_control.fleet.loadgen import CHARS_PER_TOKEN, block_text, prompt_for
from xds_control.fleet.replica.engine import Engine, EngineLimits, PrefixCache, block_hashes

B = 512


def test_leading_hits_only_and_last_token_always_computed() -> None:
    pc = PrefixCache(10)
    assert pc.admit((1, 2, 3), B, 3 * B) == 0
    pc.release((1, 2, 3))
    # Same first two blocks, a different third: two blocks hit.
    assert pc.admit((1, 2, 9), B, 3 * B + 100) == 2 * B
    pc.release((1, 2, 9))
    # A hit that is not leading does not count (the chain broke at block 0).
    assert pc.admit((7, 2), B, 2 * B) == 0
    pc.release((7, 2))
    # Whole prompt cached: all but the last token.
    assert pc.admit((1, 2, 3), B, 3 * B) == 3 * B - 1
    assert pc.queried_tokens == 3 * B + (3 * B + 100) + 2 * B + 3 * B
    assert pc.hit_tokens == 2 * B + 3 * B - 1


def test_lru_eviction_spares_pinned_blocks() -> None:
    pc = PrefixCache(4)
    pc.admit((1, 2), B, 2 * B)          # running: pinned
    pc.admit((3, 4), B, 2 * B)
    pc.release((3, 4))                  # free, cached
    pc.admit((5,), B, B)
    pc.release((5,))                    # free, most recent
    # 5 blocks cached, 2 pinned; 2 blocks reserved by running requests leave room for 2 free ones.
    assert pc.evict(reserved_blocks=2) == 1
    assert 3 not in pc and {1, 2, 4, 5} <= {h for h in (1, 2, 3, 4, 5) if h in pc}
    # Reservations growing to the whole cache evict every free block but never a pinned one.
    assert pc.evict(reserved_blocks=4) == 2
    assert 1 in pc and 2 in pc and len(pc) == 2
    pc.release((1, 2))
    assert pc.admit((1, 2), B, 2 * B + 1) == 2 * B


def test_match_blocks_counts_cached_leading_blocks_without_touching_the_cache() -> None:
    pc = PrefixCache(10)
    pc.admit((1, 2, 3), B, 3 * B + 100)
    pc.release((1, 2, 3))
    pc.admit((4, 5), B, 2 * B + 1)      # still running: pinned, most recently used
    before = (list(pc._blocks.items()), pc._pinned, pc.queried_tokens, pc.hit_tokens)
    # All full blocks before the one holding the last token: the three of a 3-block-plus prompt ...
    assert pc.match_blocks((1, 2, 3), B, 3 * B + 100) == 3
    # ... but not the block holding the last token (that token is always computed).
    assert pc.match_blocks((1, 2, 3), B, 3 * B) == 2
    assert pc.match_blocks((1,), B, B) == 0
    # Leading blocks only: the chain stops at the first miss, a later hit does not count.
    assert pc.match_blocks((1, 2, 9), B, 3 * B + 100) == 2
    assert pc.match_blocks((7, 2, 3), B, 3 * B + 100) == 0
    # Pinned (running) blocks count like free ones; hashes beyond the prompt's full blocks do not.
    assert pc.match_blocks((4, 5), B, 2 * B + 1) == 2
    assert pc.match_blocks((1, 2, 3), B, 2 * B + 5) == 2
    # No hashes, or no prompt: nothing.
    assert pc.match_blocks((), B, 10 * B) == 0
    assert pc.match_blocks((1, 2, 3), B, 1) == pc.match_blocks((1, 2, 3), B, 0) == 0
    # Read only: the same blocks in the same LRU order with the same pins; no query or hit counted.
    assert (list(pc._blocks.items()), pc._pinned, pc.queried_tokens, pc.hit_tokens) == before
    # So eviction still drops the least recently admitted free block first (a touch by the lookups above would
    # have made it 3), and nothing pinned.
    assert pc.evict(reserved_blocks=8) == 1 and 1 not in pc and {2, 3, 4, 5} <= {h for h in range(9) if h in pc}
    # Where the last token's block is not cached, it is exactly what admission finds.
    assert pc.match_blocks((4, 5, 6), B, 3 * B + 7) == 2
    assert pc.admit((4, 5, 6), B, 3 * B + 7) == 2 * B


def test_engine_cache_saving_is_the_prefill_of_the_cached_blocks() -> None:
    p = costmodel.get_profile("tiny")
    slow = 3.0
    bt = 16
    limits = EngineLimits(max_num_seqs=8, max_queue=16, kv_capacity_tokens=16_384, slow_factor=slow,
                          kv_block_tokens=bt)  # fmt: skip
    eng = Engine(p, limits)
    warm = block_hashes(prompt_for((1, 2, 3, 4), 4 * bt, bt), bt)
    shared = block_hashes(prompt_for((1, 2, 3, 4, 5), 5 * bt, bt), bt)
    partly = block_hashes(prompt_for((1, 2, 8, 9), 4 * bt + 3, bt), bt)
    fresh = block_hashes(prompt_for((6, 7, 8, 9), 4 * bt + 3, bt), bt)
    assert len(warm) == 4 and shared[:4] == warm and partly[:2] == warm[:2] and partly[2] != warm[2]
    # Nothing cached yet, or no hashes: no saving.
    assert eng.cache_saving_s(5 * bt, shared) == 0.0
    assert eng.cache_saving_s(4 * bt + 3, ()) == 0.0
    eng.prefix_cache.admit(warm, bt, 4 * bt)
    eng.prefix_cache.release(warm)
    before = list(eng.prefix_cache._blocks.items())

    def prefill(tokens: int) -> float:
        return float(costmodel.prefill_time_s(p, tokens)) * slow

    # The four cached blocks of a longer prompt that shares them: 64 tokens of prefill times slow_factor.
    assert eng.cache_saving_s(5 * bt, shared) == pytest.approx(prefill(4 * bt))
    # The warm prompt itself: not its last block (the last token is computed, so that block is).
    assert eng.cache_saving_s(4 * bt, warm) == pytest.approx(prefill(3 * bt))
    assert eng.cache_saving_s(4 * bt + 3, partly) == pytest.approx(prefill(2 * bt))
    assert eng.cache_saving_s(4 * bt + 3, fresh) == 0.0
    # A prompt shorter than its hashes: only its own full blocks.
    assert eng.cache_saving_s(2 * bt + 1, shared) == pytest.approx(prefill(2 * bt))
    assert list(eng.prefix_cache._blocks.items()) == before
    assert eng.prefix_cache.queried_tokens == 4 * bt and eng.prefix_cache.hit_tokens == 0
    # Prefix caching off: never a saving.
    off = Engine(p, EngineLimits(kv_capacity_tokens=16_384, slow_factor=slow, kv_block_tokens=bt,
                                 prefix_caching=False))  # fmt: skip
    off.prefix_cache.admit(warm, bt, 4 * bt)
    assert off.cache_saving_s(5 * bt, shared) == 0.0


async def test_cache_saving_matches_what_admission_skips() -> None:
    p = costmodel.get_profile("tiny")
    bt = 16
    eng = Engine(p, EngineLimits(kv_capacity_tokens=16_384, slow_factor=2.0, kv_block_tokens=bt))
    eng.start()
    try:
        first = block_hashes(prompt_for((1, 2, 3, 4), 4 * bt + 5, bt), bt)
        second = block_hashes(prompt_for((1, 2, 3, 4, 5), 5 * bt + 5, bt), bt)
        r = eng.submit(4 * bt + 5, 1, first)
        assert r.done is not None
        await asyncio.wait_for(r.done, 30)
        saving = eng.cache_saving_s(5 * bt + 5, second)
        r2 = eng.submit(5 * bt + 5, 1, second)
        assert r2.done is not None
        await asyncio.wait_for(r2.done, 30)
        # The engine's admission skipped exactly the tokens whose prefill the lookup said would be saved.
        assert r2.cached_tokens == 4 * bt
        assert saving == pytest.approx(float(costmodel.prefill_time_s(p, r2.cached_tokens)) * 2.0)
    finally:
        await eng.stop()


def test_loadgen_text_equal_ids_equal_blocks() -> None:
    assert block_text(42) == block_text(42) and block_text(42) != block_text(43)
    assert len(block_text(42)) == B * CHARS_PER_TOKEN
    a = block_hashes(prompt_for((0, 1, 2, 3), 4 * B), B)
    b = block_hashes(prompt_for((0, 1, 5), 3 * B), B)
    assert len(a) == 4 and len(b) == 3
    assert a[:2] == b[:2] and a[2] != b[2]
    # The last block is cut at the row's token count: a partial block is never a cache key.
    assert len(block_hashes(prompt_for((0, 1, 2), 2 * B + 100), B)) == 2
    assert len(prompt_for((0, 1, 2), 2 * B + 100)) == (2 * B + 100) * CHARS_PER_TOKEN


async def test_engine_skips_prefill_of_cached_tokens() -> None:
    p = costmodel.get_profile("tiny")
    eng = Engine(p, EngineLimits.from_profile(p))
    eng.start()
    try:
        hashes = block_hashes(prompt_for((10, 11, 12, 13), 4 * B), B)
        ttfts = []
        for _ in range(2):
            r = eng.submit(4 * B, 1, hashes)
            assert r.done is not None
            await r.done
            assert r.first_token_at is not None
            ttfts.append(r.first_token_at - r.arrived)
        cold, warm = ttfts
        # Cold: 2,048 tokens of prefill (2.05 s on the tiny profile); warm: one token.
        assert cold > 0.9 * costmodel.prefill_time_s(p, 4 * B)
        assert warm < 0.1 * cold, ttfts
        assert eng.prefix_cache.hit_tokens == 4 * B - 1
        assert eng.prefix_cache.queried_tokens == 8 * B
    finally:
        await eng.stop()


async def test_prefill_backlog_is_the_prefill_step_plus_waiting_prompts() -> None:
    p = costmodel.get_profile("tiny")
    slow = 2.0
    eng = Engine(p, EngineLimits.from_profile(p, slow_factor=slow))

    def prefill(tokens: int) -> float:
        return float(costmodel.prefill_time_s(p, tokens)) * slow

    assert eng.prefill_backlog_s() == 0.0
    eng.start()
    try:
        await asyncio.sleep(0.01)
        assert eng.prefill_backlog_s() == 0.0  # idle
        t0 = time.monotonic()
        first = eng.submit(400, 1)
        # Queued, not yet admitted: its whole prompt is backlog.
        assert eng.prefill_backlog_s() == pytest.approx(prefill(400))
        while eng.num_running == 0:
            await asyncio.sleep(0.001)
        # First's prefill step (0.8 s) is in progress; two more prompts wait behind it.
        a, b = eng.submit(300, 3), eng.submit(200, 3)
        now = time.monotonic()
        got = eng.prefill_backlog_s(now)
        # The step started after t0 and no earlier than now: its remaining time is between 0.8 s - elapsed
        # and 0.8 s (0 once it is over, however slow this machine is).
        assert prefill(500) + prefill(400) - (now - t0) - 1e-6 <= got <= prefill(500) + prefill(400) + 1e-6, got
        # A cancelled waiting request is no longer backlog (counted once however often it is cancelled).
        eng.cancel(b)
        eng.cancel(b)
        now2 = time.monotonic()
        got2 = eng.prefill_backlog_s(now2)
        assert got - prefill(200) - (now2 - now) - 1e-6 <= got2 <= got - prefill(200) + 1e-6, (got, got2)
        assert first.done is not None and a.done is not None
        await asyncio.wait_for(asyncio.gather(first.done, a.done), 30)
        assert eng.prefill_backlog_s() == 0.0
        # A decode-only step is no prefill backlog.
        c = eng.submit(10, 1000)
        while c.generated < 2:
            await asyncio.sleep(0.005)
        assert eng.num_running == 1 and eng.prefill_backlog_s() == 0.0
        eng.cancel(c)
    finally:
        await eng.stop()


async def test_a_step_prefills_at_most_max_num_batched_tokens_and_the_rest_waits() -> None:
    """vLLM's token budget per step: prompts join a step first come first served until the next would pass
    ``max_num_batched_tokens`` (a longer one takes a step alone); the rest stay waiting, as
    ``num_requests_waiting`` shows, so a prefill backlog is visible at the replica's /metrics."""
    p = costmodel.get_profile("tiny")
    eng = Engine(p, EngineLimits(kv_capacity_tokens=16_384, prefix_caching=False, max_prefill_tokens=100))
    for n in (60, 30, 50, 200, 10):
        eng.submit(n, 4)
    assert eng.num_waiting == 5
    assert eng._admit() == 90 and eng.num_running == 2 and eng.num_waiting == 3
    assert eng._admit() == 50 and eng.num_waiting == 2
    assert eng._admit() == 200 and eng.num_waiting == 1  # over the budget alone: a step of its own
    assert eng._admit() == 10 and eng.num_waiting == 0
    assert EngineLimits.from_profile(p).max_prefill_tokens == p.max_num_batched_tokens == 2048
