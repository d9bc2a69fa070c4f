"""Continuous-batching engine of the emulated inference replica.

The engine is an asyncio task that behaves like vLLM's scheduler loop, with the
GPU replaced by ``asyncio.sleep``:

* a request first waits in a bounded FIFO queue (``max_queue``; a full queue is
  reported to the caller, which answers HTTP 503);
* at the start of every step the scheduler admits waiting requests into the
  running batch while the batch has fewer than ``max_num_seqs`` sequences and
  the KV cache can hold the admitted request's prompt plus its ``max_tokens``
  (a reservation, so there is no preemption);
* one step costs :func:`xds_control.fleet.costmodel.step_time_s` ``(profile, batch,
  prefill_tokens)`` times ``slow_factor`` seconds, where ``batch`` is the number
  of sequences already decoding and ``prefill_tokens`` the prompt tokens of the
  requests admitted in that step (chunked prefill, whole prompts). At the end
  of the step each decoding sequence has one more token and each admitted one
  its first token (prefill produces it, as in the cost model: TTFT = queueing +
  prefill); requests that reached their ``max_tokens`` leave the batch. A lone
  request therefore takes exactly :func:`xds_control.fleet.costmodel.isolated_latency_s`.
* **prefix cache** (vLLM's automatic prefix caching): a request may carry the chained hashes of
  its full prompt blocks (``kv_block_tokens`` tokens each, :class:`PrefixCache`); at admission
  its leading blocks already cached are hits and skip prefill (at least one token is always
  computed), and all its blocks are pinned until it finishes. Free cached blocks are evicted least
  recently used first whenever the reservations of the running requests need the room: the cache
  holds at most ``kv_capacity_tokens // kv_block_tokens`` blocks minus those reserved. Queried and
  hit tokens are counted like vLLM's ``prefix_cache_queries`` / ``prefix_cache_hits``.
* **prefill backlog** (:meth:`Engine.prefill_backlog_s`): the seconds of prefill a request arriving now
  would wait for before its own prefill starts: the rest of the step in progress if that step prefills (0
  for a decode-only step), plus ``prefill_time_s(profile, input_tokens)`` times ``slow_factor`` of every
  waiting request (their cached tokens are unknown before admission, so whole prompts count). A running
  sum of the waiting prompt tokens keeps it O(1).
* **cache saving** (:meth:`Engine.cache_saving_s`): the prefill seconds this replica's prefix cache would
  save a given request: its leading full prompt blocks cached now (:meth:`PrefixCache.match_blocks`, a
  read-only lookup: no LRU touch, no pinning; never the block holding the last prompt token) times
  ``kv_block_tokens`` tokens of prefill times ``slow_factor`` (there is no host tier, so only GPU blocks
  count). The server sheds on ``prefill_backlog_s() - cache_saving_s(request)``, as the simulator does: a
  request whose prefix is cached here waits for the backlog but then prefills less here than on a cold
  replica.
* GPU utilisation is the cost model's :func:`~xds_control.fleet.costmodel.gpu_utilization`
  of each step, averaged over the last ``busy_window_s`` seconds (idle counts 0).

Steps are scheduled against absolute deadlines so that asyncio's small sleep
overshoots do not accumulate over a long generation. When the process is
starved of CPU the emulated GPU falls behind (as a real one would not); the
engine exposes that lag as :attr:`Engine.lag_s` so tests can tell.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from xds_control.fleet import costmodel
from xds_control.fleet.costmodel import ReplicaProfile


class QueueFull(Exception):
    """The waiting queue is at ``max_queue``; the caller should answer 503."""


class TooLarge(Exception):
    """The request can never fit the KV cache; the caller should answer 400."""


@dataclass(eq=False)
class GenRequest:
    """One generation request as the engine sees it."""

    input_tokens: int
    max_tokens: int
    arrived: float
    id: int = 0
    #: Chained hashes of the prompt's full KV blocks (the prefix cache's keys); empty = nothing to reuse.
    block_hashes: tuple[int, ...] = ()
    #: Prompt tokens found in the prefix cache at admission (they skip prefill).
    cached_tokens: int = 0
    generated: int = 0
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    cancelled: bool = False
    #: Set whenever ``generated`` grows or the request finishes (for streaming).
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Future[None] | None = None

    @property
    def kv_tokens_reserved(self) -> int:
        return self.input_tokens + self.max_tokens

    @property
    def kv_tokens_used(self) -> int:
        return self.input_tokens + self.generated


@dataclass(frozen=True)
class EngineLimits:
    """Scheduler limits; :meth:`from_profile` takes them from the cost model's profile."""

    max_num_seqs: int = 256
    max_queue: int = 128
    kv_capacity_tokens: int = 180_000
    slow_factor: float = 1.0
    #: Tokens per prefix-cache block (the profile's ``kv_block_tokens``).
    kv_block_tokens: int = 512
    #: Automatic prefix caching on (the profile's ``prefix_caching``).
    prefix_caching: bool = True
    #: Prompt tokens a step admits at most (the profile's ``max_num_batched_tokens``); a longer prompt alone.
    max_prefill_tokens: int = 2048

    @classmethod
    def from_profile(cls, p: ReplicaProfile, slow_factor: float = 1.0) -> EngineLimits:
        return cls(p.max_batch, p.queue_bound, p.kv_capacity_tokens, slow_factor,
                   p.kv_block_tokens, p.prefix_caching, p.max_num_batched_tokens)  # fmt: skip


class PrefixCache:
    """KV blocks by chained prefix hash: LRU order, pin counts of the running requests that use them."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = max(0, int(capacity_blocks))
        #: hash -> number of running requests using the block; insertion order = LRU order (oldest first).
        self._blocks: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._pinned = 0
        self.queried_tokens = 0
        self.hit_tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, h: int) -> bool:
        return h in self._blocks

    def match_blocks(self, hashes: tuple[int, ...], block_tokens: int, input_tokens: int) -> int:
        """How many leading blocks of ``hashes`` are cached now, as :meth:`admit` would find them, but never the
        block holding the prompt's last token (at most ``(input_tokens - 1) // block_tokens`` blocks: that token
        is always computed). Read only: no LRU touch, no pinning, no counters."""
        lim = min(len(hashes), (input_tokens - 1) // block_tokens) if input_tokens > 0 and block_tokens > 0 else 0
        blocks = self._blocks
        n = 0
        while n < lim and hashes[n] in blocks:
            n += 1
        return n

    def admit(self, hashes: tuple[int, ...], block_tokens: int, input_tokens: int) -> int:
        """Count the leading cached blocks, pin all of ``hashes`` (new ones enter the cache) and return the
        cached prompt tokens (at most ``input_tokens - 1``: the last token is always computed)."""
        blocks = self._blocks
        hits = 0
        for h in hashes:
            if h not in blocks:
                break
            hits += 1
        for h in hashes:
            n = blocks.pop(h, 0)
            blocks[h] = n + 1  # most recently used
            if n == 0:
                self._pinned += 1
        cached = max(0, min(hits * block_tokens, input_tokens - 1))
        self.queried_tokens += input_tokens
        self.hit_tokens += cached
        return cached

    def release(self, hashes: tuple[int, ...]) -> None:
        """A request that pinned ``hashes`` left: its blocks stay cached, free to evict."""
        blocks = self._blocks
        for h in hashes:
            n = blocks.get(h)
            if n is None:
                continue
            if n <= 1:
                blocks[h] = 0
                self._pinned -= 1
            else:
                blocks[h] = n - 1

    def evict(self, reserved_blocks: int) -> int:
        """Drop least recently used free blocks until free cached blocks fit beside ``reserved_blocks``;
        returns how many were dropped."""
        room = self.capacity_blocks - max(reserved_blocks, self._pinned)
        excess = (len(self._blocks) - self._pinned) - max(0, room)
        if excess <= 0:
            return 0
        victims = []
        for h, n in self._blocks.items():
            if n == 0:
                victims.append(h)
                if len(victims) >= excess:
                    break
        for h in victims:
            del self._blocks[h]
        return len(victims)


class Engine:
    """The scheduler loop. Create inside a running event loop; ``start()`` then ``submit()``."""

    def __init__(
        self,
        profile: ReplicaProfile,
        limits: EngineLimits,
        *,
        on_finished: Callable[[GenRequest], None] | None = None,
        busy_window_s: float = 1.0,
    ) -> None:
        self.profile = profile
        self.limits = limits
        self.waiting: collections.deque[GenRequest] = collections.deque()
        self.running: list[GenRequest] = []
        self._kv_reserved = 0
        #: Prompt tokens of the waiting, not cancelled requests (for :meth:`prefill_backlog_s`).
        self._waiting_tokens = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._on_finished = on_finished
        self._busy_window_s = busy_window_s
        # (start, end, utilisation) of recent steps, monotonic clock, for GPU utilisation.
        self._busy: collections.deque[tuple[float, float, float]] = collections.deque()
        self.steps = 0
        self.lag_s = 0.0  # total time steps ended later than their deadline
        self.prefix_cache = PrefixCache(
            limits.kv_capacity_tokens // limits.kv_block_tokens if limits.prefix_caching else 0
        )

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="replica-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            self._current = self._prefill_deadline = None
        for r in [*self.waiting, *self.running]:
            if r.done is not None and not r.done.done():
                r.done.cancel()

    # -- requests ------------------------------------------------------------
    def submit(self, input_tokens: int, max_tokens: int, block_hashes: tuple[int, ...] = ()) -> GenRequest:
        """Queue a request (``block_hashes``: chained hashes of its full prompt blocks, see
        :func:`block_hashes`); raises :class:`QueueFull` or :class:`TooLarge`."""
        input_tokens = max(1, int(input_tokens))
        max_tokens = max(1, int(max_tokens))
        if input_tokens + max_tokens > self.limits.kv_capacity_tokens:
            raise TooLarge(
                f"prompt ({input_tokens}) + max_tokens ({max_tokens}) exceeds the KV cache "
                f"({self.limits.kv_capacity_tokens} tokens)"
            )
        if len(self.waiting) >= self.limits.max_queue:
            raise QueueFull(f"{len(self.waiting)} requests waiting (max_queue={self.limits.max_queue})")
        loop = asyncio.get_running_loop()
        if not self.limits.prefix_caching:
            block_hashes = ()
        # Only the prompt's full blocks can be cached.
        block_hashes = tuple(block_hashes[: input_tokens // self.limits.kv_block_tokens])
        r = GenRequest(input_tokens=input_tokens, max_tokens=max_tokens, arrived=time.monotonic(), id=next(self._ids),
                       block_hashes=block_hashes)
        r.done = loop.create_future()
        self.waiting.append(r)
        self._waiting_tokens += input_tokens
        self._wake.set()
        return r

    def cancel(self, r: GenRequest) -> None:
        """The client went away: drop the request at the next step boundary."""
        if not r.cancelled and r.admitted_at is None and r.finished_at is None:
            self._waiting_tokens -= r.input_tokens  # still waiting: no longer prefill backlog
        r.cancelled = True

    # -- observations (read by /metrics) --------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction (0..1) of the KV cache holding tokens, like ``vllm:kv_cache_usage_perc``."""
        used = sum(r.kv_tokens_used for r in self.running)
        return min(1.0, used / self.limits.kv_capacity_tokens)

    @property
    def kv_reserved_fraction(self) -> float:
        return min(1.0, self._kv_reserved / self.limits.kv_capacity_tokens)

    def gpu_util(self, now: float | None = None) -> float:
        """Time-averaged GPU utilisation (0..1) over the last ``busy_window_s`` seconds."""
        now = time.monotonic() if now is None else now
        lo = now - self._busy_window_s
        acc = 0.0
        for s, e, u in self._busy:
            if e > lo:
                acc += (min(e, now) - max(s, lo)) * u
        cur = self._current
        if cur is not None and cur[0] < now:
            acc += (now - max(cur[0], lo)) * cur[2]
        return max(0.0, min(1.0, acc / self._busy_window_s))

    def prefill_backlog_s(self, now: float | None = None) -> float:
        """Seconds of prefill a request arriving now would wait for before its own prefill starts.

        The rest of the step in progress when it carries prefill tokens (a decode-only step counts 0),
        plus the prefill time of every waiting request's whole prompt (cached tokens are only known at
        admission) times ``slow_factor``. O(1): pure arithmetic on the engine's state.
        """
        now = time.monotonic() if now is None else now
        backlog = 0.0
        if self._prefill_deadline is not None:
            backlog = max(0.0, self._prefill_deadline - now)
        if self._waiting_tokens > 0:
            backlog += float(costmodel.prefill_time_s(self.profile, self._waiting_tokens)) * self.limits.slow_factor
        return backlog

    def cache_saving_s(self, input_tokens: int, block_hashes: tuple[int, ...]) -> float:
        """Prefill seconds this replica's prefix cache would save a request of ``input_tokens`` prompt tokens with
        these chained block hashes (:func:`block_hashes`), were it admitted now: its leading full blocks cached
        here (:meth:`PrefixCache.match_blocks`; only the prompt's full blocks, never the one holding the last
        token) times ``kv_block_tokens`` tokens of prefill times ``slow_factor``. 0.0 when prefix caching is off
        or there are no hashes. Read only: the cache is not touched."""
        lim = self.limits
        if not lim.prefix_caching or not block_hashes:
            return 0.0
        n = self.prefix_cache.match_blocks(block_hashes, lim.kv_block_tokens, max(1, int(input_tokens)))
        if n == 0:
            return 0.0
        return float(costmodel.prefill_time_s(self.profile, n * lim.kv_block_tokens)) * lim.slow_factor

    def prefill_s(self, input_tokens: int) -> float:
        """Seconds of prefill for ``input_tokens`` uncached prompt tokens (the cost model times ``slow_factor``)."""
        return float(costmodel.prefill_time_s(self.profile, max(0, int(input_tokens)))) * self.limits.slow_factor

    #: (start, deadline, utilisation) of the step in progress.
    _current: tuple[float, float, float] | None = None
    #: Deadline of the step in progress when it carries prefill tokens, else ``None``.
    _prefill_deadline: float | None = None

    # -- the loop ---------------------------------------------------------------
    def _admit(self) -> int:
        """Move waiting requests into the batch, first come first served, while the KV cache, ``max_num_seqs`` and
        the step's prompt-token budget allow (the first prompt of a step always fits); returns the prompt tokens
        to prefill in this step."""
        prefill = 0
        prompts = 0
        lim = self.limits
        now = time.monotonic()
        while self.waiting and len(self.running) < lim.max_num_seqs:
            r = self.waiting[0]
            if r.cancelled:
                self.waiting.popleft()
                self._finish(r, now)
                continue
            if self._kv_reserved + r.kv_tokens_reserved > lim.kv_capacity_tokens:
                break
            if prompts and prefill + r.input_tokens > lim.max_prefill_tokens:
                break
            prompts += 1
            self.waiting.popleft()
            self._waiting_tokens -= r.input_tokens
            self._kv_reserved += r.kv_tokens_reserved
            r.admitted_at = now
            self.running.append(r)
            if lim.prefix_caching:
                r.cached_tokens = self.prefix_cache.admit(r.block_hashes, lim.kv_block_tokens, r.input_tokens)
            prefill += r.input_tokens - r.cached_tokens
        if prefill and lim.prefix_caching:
            self.prefix_cache.evict(-(-self._kv_reserved // lim.kv_block_tokens))
        return prefill

    def _finish(self, r: GenRequest, now: float) -> None:
        if r.admitted_at is not None and r.block_hashes:
            self.prefix_cache.release(r.block_hashes)
        r.finished_at = now
        r.progress.set()
        if r.done is not None and not r.done.done():
            r.done.set_result(None)
        if self._on_finished is not None and not r.cancelled:
            self._on_finished(r)

    async def _run(self) -> None:
        deadline = time.monotonic()
        p = self.profile
        while True:
            # Drop cancelled running requests and free their reservation.
            if any(r.cancelled for r in self.running):
                keep = []
                for r in self.running:
                    if r.cancelled:
                        self._kv_reserved -= r.kv_tokens_reserved
                        self._finish(r, time.monotonic())
                    else:
                        keep.append(r)
                self.running = keep
            decoding = len(self.running)
            prefill = self._admit()
            if not self.running:
                self._wake.clear()
                if not self.waiting:
                    await self._wake.wait()
                    deadline = time.monotonic()
                continue
            prefill_s = costmodel.prefill_time_s(p, prefill)
            base = costmodel.step_time_s(p, decoding, prefill)
            dt = base * self.limits.slow_factor
            util = costmodel.gpu_utilization(p, decoding, prefill_s / base if base > 0 else 0.0)
            now = time.monotonic()
            # Continue from the previous deadline unless we were idle or fell behind.
            start = deadline if 0.0 <= now - deadline < 0.002 else now
            deadline = start + dt
            self._current = (start, deadline, util)
            self._prefill_deadline = deadline if prefill else None
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            end = time.monotonic()
            self._current = None
            self._prefill_deadline = None
            if end > deadline + 0.002:
                self.lag_s += end - deadline
            self._record_busy(start, end, util)
            self.steps += 1
            still = []
            for r in self.running:
                if r.cancelled:
                    self._kv_reserved -= r.kv_tokens_reserved
                    self._finish(r, end)
                    continue
                r.generated += 1
                if r.first_token_at is None:
                    r.first_token_at = end
                if r.generated >= r.max_tokens:
                    self._kv_reserved -= r.kv_tokens_reserved
                    self._finish(r, end)
                else:
                    r.progress.set()
                    still.append(r)
            self.running = still

    def _record_busy(self, start: float, end: float, util: float) -> None:
        b = self._busy
        b.append((start, end, util))
        lo = end - self._busy_window_s
        while b and b[0][1] < lo:
            b.popleft()


def block_hashes(text: str, block_tokens: int, chars_per_token: int = 4) -> tuple[int, ...]:
    """Chained hashes of the full ``block_tokens``-token blocks of ``text`` (``chars_per_token`` characters
    per token, the replica's length estimate): equal hashes mean equal text up to the end of that block."""
    size = block_tokens * chars_per_token
    out = []
    h = 0
    for i in range(len(text) // size):
        h = hash((h, text[i * size:(i + 1) * size]))
        out.append(h)
    return tuple(out)
