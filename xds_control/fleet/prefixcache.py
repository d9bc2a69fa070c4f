"""A replica's prefix (KV) cache: vLLM automatic prefix caching, with an optional host-memory tier.

Pure Python, no clocks, shared by the simulator (:mod:`xds_control.sim.engine`) and usable by the
emulated replica. Blocks are identified by *chained* hashes (a block's id stands for its content and
the whole prefix before it, as the Mooncake trace's ``hash_ids`` and vLLM's block hashes are), so a
request's ``i``-th block is a hit only if blocks ``0..i`` are all cached.

Model (vLLM v1 ``KVCacheManager`` / ``BlockPool`` semantics, at the trace's block size):

* the GPU holds ``gpu_blocks`` physical blocks. A running request *pins* its blocks: the full prompt
  blocks, identified by their hash and shared with any other request holding the same hash, plus
  unhashed blocks for the partial last prompt block and the output tokens it reserves;
* a request's blocks are released when it finishes: hashed blocks whose reference count drops to 0
  join the free queue, **tail block first** (vLLM frees in reverse order so a prefix outlives its
  suffixes), keeping their contents: they are the cache;
* an allocation takes an empty block, else evicts the free block at the head of the queue (least
  recently used). Pinned blocks are never evicted;
* a lookup matches at most ``(input_tokens - 1) // block_tokens`` blocks (vLLM always computes the
  last prompt token), GPU first, then continuing in the host tier;
* host tier (``host_blocks`` > 0; vLLM CPU offload / LMCache): an LRU of blocks. A block evicted from
  the GPU is written there; a host hit is copied back to the GPU (costing a load, see
  :func:`xds_control.fleet.costmodel.host_block_load_s`) and stays in the host tier.

Counters follow vLLM's ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` (tokens): every
admitted request adds its prompt tokens to ``queries_tokens`` and its GPU-cached tokens to
``hits_tokens``; host-tier hits go to ``host_hits_tokens``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PrefixCache", "CachePlan"]


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What admitting one request would do: cached tokens and the GPU blocks it needs."""

    #: Leading prompt tokens found in the GPU cache.
    gpu_tokens: int
    #: Blocks (and their tokens) found in the host tier right after the GPU hits.
    host_blocks: int
    host_tokens: int
    #: Blocks the request would newly pin (GPU usage grows by this many).
    new_pinned: int


class PrefixCache:
    """One replica's block cache. ``block_tokens`` tokens per block."""

    __slots__ = ("capacity", "host_capacity", "block_tokens", "ref", "free", "host", "anon",
                 "queries_tokens", "hits_tokens", "host_hits_tokens", "evictions", "host_evictions")

    def __init__(self, gpu_blocks: int, block_tokens: int, host_blocks: int = 0) -> None:
        if int(gpu_blocks) != gpu_blocks or gpu_blocks < 1:
            raise ValueError(f"gpu_blocks must be an integer >= 1, got {gpu_blocks!r}")
        if int(block_tokens) != block_tokens or block_tokens < 1:
            raise ValueError(f"block_tokens must be an integer >= 1, got {block_tokens!r}")
        if int(host_blocks) != host_blocks or host_blocks < 0:
            raise ValueError(f"host_blocks must be an integer >= 0, got {host_blocks!r}")
        self.capacity = int(gpu_blocks)
        self.host_capacity = int(host_blocks)
        self.block_tokens = int(block_tokens)
        self.ref: dict[int, int] = {}  # pinned hashed blocks -> reference count
        self.free: OrderedDict[int, None] = OrderedDict()  # cached, unpinned; head = next to evict
        self.host: OrderedDict[int, None] = OrderedDict()  # host tier; head = least recently used
        self.anon = 0  # pinned blocks without a hash (partial prompt block, output tokens)
        self.queries_tokens = 0
        self.hits_tokens = 0
        self.host_hits_tokens = 0
        self.evictions = 0
        self.host_evictions = 0

    # --- inspection
    @property
    def used_blocks(self) -> int:
        """Pinned blocks (vLLM's ``gpu_cache_usage_perc`` numerator)."""
        return len(self.ref) + self.anon

    @property
    def usage(self) -> float:
        return self.used_blocks / self.capacity

    def cached_blocks(self) -> int:
        """Blocks holding a hash in the GPU (pinned or free)."""
        return len(self.ref) + len(self.free)

    def __contains__(self, block: int) -> bool:
        return block in self.ref or block in self.free

    def reserve_blocks(self, tokens: int) -> int:
        """Blocks a request reserving ``tokens`` KV tokens occupies."""
        return -(-tokens // self.block_tokens)

    def match(self, ids: Sequence[int], input_tokens: int) -> tuple[int, int]:
        """``(gpu_blocks, host_blocks)``: the longest cached prefix of ``ids``, GPU then host (no change)."""
        lim = (input_tokens - 1) // self.block_tokens if input_tokens > 0 else 0
        if lim > len(ids):
            lim = len(ids)
        ref, free = self.ref, self.free
        g = 0
        while g < lim and (ids[g] in ref or ids[g] in free):
            g += 1
        h = 0
        if self.host_capacity:
            host = self.host
            while g + h < lim and ids[g + h] in host:
                h += 1
        return g, h

    def plan(self, ids: Sequence[int], input_tokens: int, reserve_tokens: int) -> CachePlan | None:
        """What admitting a request would cost, or None if its blocks do not fit next to the pinned ones."""
        g, h = self.match(ids, input_tokens)
        nfull = min(input_tokens // self.block_tokens, len(ids))
        total = self.reserve_blocks(reserve_tokens)
        ref = self.ref
        seen: set[int] = set()
        pinned = 0
        for b in ids[:nfull]:
            if b in ref and b not in seen:
                pinned += 1
            seen.add(b)
        # a repeated id inside one request shares one block
        new_pinned = total - pinned - (nfull - len(seen))
        if self.used_blocks + new_pinned > self.capacity:
            return None
        bt = self.block_tokens
        return CachePlan(g * bt, h, h * bt, new_pinned)

    # --- state changes
    def commit(self, ids: Sequence[int], input_tokens: int, reserve_tokens: int, plan: CachePlan) -> None:
        """Pin the request's blocks (after :meth:`plan` said they fit) and count the query."""
        bt = self.block_tokens
        nfull = min(input_tokens // bt, len(ids))
        total = self.reserve_blocks(reserve_tokens)
        ref, free = self.ref, self.free
        # pin every resident block first, so that the allocations below cannot evict them
        misses: list[int] = []
        for b in ids[:nfull]:
            c = ref.get(b)
            if c is not None:
                ref[b] = c + 1
            elif b in free:
                del free[b]
                ref[b] = 1
            else:
                misses.append(b)
        for b in misses:
            c = ref.get(b)
            if c is not None:  # repeated inside this request
                ref[b] = c + 1
                continue
            self._make_room(1)
            ref[b] = 1
        anon = total - nfull
        if anon > 0:
            self._make_room(anon)
            self.anon += anon
        if self.host_capacity and plan.host_blocks:
            g = plan.gpu_tokens // bt
            host = self.host
            for b in ids[g:g + plan.host_blocks]:
                if b in host:
                    host.move_to_end(b)
        self.queries_tokens += input_tokens
        self.hits_tokens += plan.gpu_tokens
        self.host_hits_tokens += plan.host_tokens

    def release(self, ids: Sequence[int], input_tokens: int, reserve_tokens: int) -> None:
        """Unpin a finished request's blocks; its hashed blocks stay cached (tail block first in the queue)."""
        bt = self.block_tokens
        nfull = min(input_tokens // bt, len(ids))
        total = self.reserve_blocks(reserve_tokens)
        ref, free = self.ref, self.free
        for b in reversed(ids[:nfull]):
            c = ref.get(b)
            if c is None:
                continue  # a repeated id, already released
            if c > 1:
                ref[b] = c - 1
            else:
                del ref[b]
                free[b] = None
        anon = total - nfull
        if anon > 0:
            self.anon -= anon

    def clear(self) -> None:
        """Drop everything (a replica that died)."""
        self.ref.clear()
        self.free.clear()
        self.host.clear()
        self.anon = 0

    def _make_room(self, n: int) -> None:
        """Evict free blocks until ``n`` more blocks fit (demoting them to the host tier)."""
        over = len(self.ref) + self.anon + len(self.free) + n - self.capacity
        free = self.free
        while over > 0 and free:
            b, _ = free.popitem(last=False)
            self.evictions += 1
            over -= 1
            if self.host_capacity:
                host = self.host
                if b in host:
                    host.move_to_end(b)
                else:
                    host[b] = None
                    if len(host) > self.host_capacity:
                        host.popitem(last=False)
                        self.host_evictions += 1
