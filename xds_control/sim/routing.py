"""Prefix-cache-aware routing strategies of the simulated proxy (``SimConfig.lb``).

Besides Envoy's ``round_robin`` and ``least_request`` (in :mod:`xds_control.sim.engine`):

``prefix`` -- what xds-control pushes to Envoy: the request's key is a hash of its first
    ``prefix_blocks`` prompt blocks (its ``hash_ids``: equal ids are equal text). With
    ``spill="least_request"`` (the default) the key picks a host by weighted rendezvous hashing over the
    routable hosts (the prefix filter's pick, :mod:`xds_control.core.affinity`); that host sheds the
    first attempt when its prefill backlog less its cache's saving is over ``affinity_backlog_s``, and
    the retry goes to least request (the override-host policy's fallback). With ``spill="maglev"`` the
    key picks a host in a Maglev table (:class:`Maglev`, Envoy's ``envoy.load_balancing_policies.maglev``)
    built over the hosts in EDS with their weights, with Envoy's bounded-load rule
    (``consistent_hashing_lb_config.hash_balance_factor``, :func:`bounded_pick`). A request without
    ``hash_ids`` goes to least request.
``gie`` -- a re-implementation of the Gateway API Inference Extension endpoint picker with its
    default scheduling profile (:class:`GieIndexer`, :func:`gie_scores`).
``oracle`` -- knows every replica's cache exactly and sends a request to the replica with the
    longest cached prefix (GPU, then host tier) among those within the same load bound as
    ``prefix`` (llm-d's "precise" prefix-cache scoring, idealised); ties go to fewer active requests.

GIE sources (kubernetes-sigs/gateway-api-inference-extension):

* ``config/charts/inferencepool/templates/epp-config.yaml``: the default profile is
  ``queue-scorer`` weight 2, ``kv-cache-utilization-scorer`` weight 2, ``prefix-cache-scorer``
  weight 3, summed; the picker is the max-score picker;
* ``pkg/epp/scheduling/framework/plugins/prefixcachescorer/plugin.go``: the prompt is cut into
  blocks of ``DefaultBlockSize`` = 64 characters (with ``AutoTune``, the default: the server's
  cache block size × 4 characters per token, i.e. 16 tokens for vLLM), hashed chained on the
  prefix, at most ``DefaultMaxPrefixBlocks`` = 256 blocks; the score of a server is
  (matched blocks) / (request blocks), where matching walks the request's blocks in order while
  *some* server has the block and credits every server that has it; after the pick, the request's
  blocks are recorded for the picked server in a per-server LRU of ``LRUCapacityPerServer`` =
  31,250 entries, or (``AutoTune``) the server's ``CacheNumGPUBlocks``;
* ``pkg/epp/scheduling/framework/plugins/prefixcachescorer/indexer.go``: the LRU per server and the
  hash → servers map (an entry evicted from a server's LRU removes that server from the map);
* ``pkg/epp/scheduling/framework/plugins/queuescorer/queue.go``: ``(max - q) / (max - min)`` of the
  waiting queue sizes over the candidates, 1 when they are all equal;
* ``pkg/epp/scheduling/framework/plugins/kvcacheutilizationscorer/kvcache_utilization.go``:
  ``1 - KVCacheUsagePercent``;
* ``pkg/epp/scheduling/framework/plugins/maxscorepicker/max_score_picker.go``: highest total score,
  ties broken at random (shuffle, then stable sort).

The simulator knows prompts only at the trace's block granularity (512 tokens), so one trace block
stands for ``trace_block_tokens / 16`` = 32 GIE blocks: equal trace blocks have equal GIE blocks,
and the indexer records whole trace blocks with that weight (its capacity is counted in GIE
entries). GIE reads the model servers' metrics every 50 ms (``--refresh-metrics-interval``): the
queue and KV scores use a snapshot at most that old.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "LB_PREFIX",
    "LB_GIE",
    "LB_ORACLE",
    "CACHE_AWARE_LBS",
    "RoutingParams",
    "Maglev",
    "prefix_key",
    "host_slots",
    "bounded_pick",
    "GieIndexer",
    "gie_scores",
]

LB_PREFIX = "prefix"
LB_GIE = "gie"
LB_ORACLE = "oracle"
CACHE_AWARE_LBS = (LB_PREFIX, LB_GIE, LB_ORACLE)


@dataclass(frozen=True, slots=True)
class RoutingParams:
    """Settings of the cache-aware strategies (defaults: ``prefix_blocks`` chosen on Mooncake w0/w1)."""

    #: ``prefix``: how many leading prompt blocks form the hash key.
    prefix_blocks: int = 2
    #: ``prefix``: where a request goes past the bound (``PrefixRoutingPlan.spill``): ``least_request`` = the
    #: key's replica by weighted rendezvous hashing (:func:`xds_control.core.affinity.rendezvous_pick`) for the
    #: first attempt, which it sheds when its prefill backlog less its cache's saving is over
    #: ``affinity_backlog_s``, and retries by least request; ``maglev`` = Maglev with bounded loads, retries
    #: re-hashed.
    spill: str = "least_request"
    #: ``prefix`` with ``spill="least_request"``: the first attempts' shedding bound (seconds).
    affinity_backlog_s: float = 0.0
    #: ``prefix`` with ``spill="least_request"``: how many of the key's replicas (rendezvous order) are tried, one
    #: attempt each, before least request.
    affinity_choices: int = 2
    #: ``prefix`` with ``spill="least_request"``: the affinity attempts' decode-stall budget (uncached prefill
    #: seconds x running requests on the replica); 0 = none.
    affinity_stall_s: float = 0.0
    #: ``prefix`` (``spill="maglev"``) and ``oracle``: Envoy's ``hash_balance_factor`` / 100 (a host is skipped
    #: while its active requests exceed about this × the mean); 0 = unbounded.
    hash_balance_factor: float = 1.25
    #: Entries of the Maglev table (prime). Envoy's default is 65,537; the simulator rebuilds the
    #: table at every EDS change (hundreds per run with ramped weights), so it uses 8,191: the same
    #: algorithm, a coarser key split (±0.3 % of the keys per host at 20 hosts).
    maglev_table_size: int = 8191
    #: GIE default profile weights.
    gie_prefix_weight: float = 3.0
    gie_queue_weight: float = 2.0
    gie_kv_weight: float = 2.0
    #: GIE block size in tokens (AutoTune: vLLM's 16-token block × 4 characters per token = 64 characters).
    gie_block_tokens: int = 16
    gie_max_prefix_blocks: int = 256
    #: GIE indexer entries per server; None = AutoTune (the server's KV cache in ``gie_block_tokens`` blocks).
    gie_lru_capacity: int | None = None
    #: Age of the metrics snapshot GIE scores on (its refresh interval).
    gie_metrics_refresh_s: float = 0.05

    def __post_init__(self) -> None:
        if int(self.prefix_blocks) != self.prefix_blocks or self.prefix_blocks < 1:
            raise ValueError(f"RoutingParams.prefix_blocks must be an integer >= 1, got {self.prefix_blocks!r}")
        if self.spill not in ("least_request", "maglev"):
            raise ValueError(f"RoutingParams.spill must be 'least_request' or 'maglev', got {self.spill!r}")
        if int(self.affinity_choices) != self.affinity_choices or self.affinity_choices < 1:
            raise ValueError(f"RoutingParams.affinity_choices must be an integer >= 1, got {self.affinity_choices!r}")
        if not (math.isfinite(self.affinity_stall_s) and self.affinity_stall_s >= 0):
            raise ValueError(f"RoutingParams.affinity_stall_s must be >= 0, got {self.affinity_stall_s!r}")
        if not (math.isfinite(self.affinity_backlog_s) and self.affinity_backlog_s >= 0):
            raise ValueError(f"RoutingParams.affinity_backlog_s must be >= 0, got {self.affinity_backlog_s!r}")
        if not (math.isfinite(self.hash_balance_factor) and (self.hash_balance_factor == 0
                                                             or self.hash_balance_factor >= 1)):
            raise ValueError("RoutingParams.hash_balance_factor must be 0 (unbounded) or >= 1, got "
                             f"{self.hash_balance_factor!r}")
        if int(self.maglev_table_size) != self.maglev_table_size or self.maglev_table_size < 2:
            raise ValueError(f"RoutingParams.maglev_table_size must be an integer >= 2, got {self.maglev_table_size!r}")
        for f in ("gie_block_tokens", "gie_max_prefix_blocks"):
            v = getattr(self, f)
            if int(v) != v or v < 1:
                raise ValueError(f"RoutingParams.{f} must be an integer >= 1, got {v!r}")
        if self.gie_lru_capacity is not None and self.gie_lru_capacity < 1:
            raise ValueError(f"RoutingParams.gie_lru_capacity must be >= 1 or None, got {self.gie_lru_capacity!r}")
        if not self.gie_metrics_refresh_s >= 0:
            raise ValueError(f"RoutingParams.gie_metrics_refresh_s must be >= 0, got {self.gie_metrics_refresh_s!r}")


def _h64(data: bytes, salt: bytes = b"") -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, salt=salt).digest(), "little")


def prefix_key(ids: Sequence[int], k: int) -> int:
    """64-bit hash of the first ``k`` block ids (all of them when there are fewer)."""
    return _h64(" ".join(map(str, ids[:k])).encode())


class Maglev:
    """Envoy's Maglev table over weighted hosts (``source/extensions/load_balancing_policies/maglev``).

    Each host has a permutation of the table (offset, skip from two hashes of its key); hosts take
    turns claiming their next free entry, a host of weight ``w`` taking a turn every ``max_w / w``
    rounds. Adding or removing a host moves about ``1 / hosts`` of the keys.
    """

    __slots__ = ("table", "size")

    def __init__(self, keys: Sequence[str], weights: Sequence[float], size: int = 65537) -> None:
        if not keys:
            raise ValueError("Maglev needs at least one host")
        m = int(size)
        self.size = m
        n = len(keys)
        offset = [_h64(k.encode()) % m for k in keys]
        skip = [_h64(k.encode(), b"skip") % (m - 1) + 1 for k in keys]
        nxt = [0] * n
        wmax = max(weights)
        w = [x / wmax for x in weights]
        target = [0.0] * n
        table = [-1] * m
        filled = 0
        it = 0
        while filled < m:
            for h in range(n):
                if filled >= m:
                    break
                if w[h] <= 0 or it * w[h] < target[h]:
                    continue
                target[h] += 1.0
                c = (offset[h] + skip[h] * nxt[h]) % m
                while table[c] >= 0:
                    nxt[h] += 1
                    c = (offset[h] + skip[h] * nxt[h]) % m
                table[c] = h
                nxt[h] += 1
                filled += 1
            it += 1
        self.table = table

    def lookup(self, key: int) -> int:
        """Index (into the host list it was built from) of the host for a 64-bit key."""
        return self.table[key % self.size]


def host_slots(overall_active: int, weight: float, factor: float) -> int:
    """Envoy's bound on one host's active requests (``BoundedLoadHashingLoadBalancer::hostOverloadFactor``).

    ``weight`` is the host's share of the total weight; ``factor`` the balance factor (1.25).
    """
    pct = int(round(factor * 100))
    total_slots = ((overall_active + 1) * pct + 99) // 100
    s = math.ceil(total_slots * weight)
    return s if s > 1 else 1


def bounded_pick(first: int, key: int, active: Sequence[int], weights: Sequence[float], factor: float) -> int:
    """Envoy's bounded-load choice: ``first`` (the table's host) unless over its slots, else the first
    host within its slots in a pseudo-random probe order seeded by ``key`` (so a key always probes the
    same hosts), else the least overloaded. ``weights`` are normalised shares."""
    if factor <= 0:
        return first
    overall = sum(active)
    f0 = active[first] / host_slots(overall, weights[first], factor)
    if f0 <= 1.0:
        return first
    n = len(active)
    idx = list(range(n))
    rnd = random.Random(key)
    best, best_f = first, f0
    for i in range(n):
        j = rnd.randrange(n - i)
        idx[i], idx[i + j] = idx[i + j], idx[i]
        k = idx[i]
        if k == first:
            continue
        f = active[k] / host_slots(overall, weights[k], factor)
        if f <= 1.0:
            return k
        if f < best_f:
            best, best_f = k, f
    return best


class GieIndexer:
    """GIE's approximate prefix index: per server an LRU of block hashes, and hash → servers.

    Entries are trace blocks each standing for ``per_block`` GIE blocks; ``capacity`` is in GIE entries.
    """

    __slots__ = ("per_block", "hash_to_pods", "pod_lru", "capacity")

    def __init__(self, capacity_entries: int, per_block: int) -> None:
        self.per_block = max(1, int(per_block))
        self.capacity = max(1, int(capacity_entries) // self.per_block)
        self.hash_to_pods: dict[int, set[int]] = {}
        self.pod_lru: dict[int, OrderedDict[int, None]] = {}

    def add(self, ids: Sequence[int], pod: int) -> None:
        lru = self.pod_lru.get(pod)
        if lru is None:
            lru = self.pod_lru[pod] = OrderedDict()
        h2p = self.hash_to_pods
        for b in ids:
            if b in lru:
                lru.move_to_end(b)
            else:
                lru[b] = None
                if len(lru) > self.capacity:
                    old, _ = lru.popitem(last=False)
                    ps = h2p.get(old)
                    if ps is not None:
                        ps.discard(pod)
                        if not ps:
                            del h2p[old]
            h2p.setdefault(b, set()).add(pod)

    def remove_pod(self, pod: int) -> None:
        lru = self.pod_lru.pop(pod, None)
        if lru is None:
            return
        for b in lru:
            ps = self.hash_to_pods.get(b)
            if ps is not None:
                ps.discard(pod)
                if not ps:
                    del self.hash_to_pods[b]

    def match(self, ids: Sequence[int], total_g: int) -> dict[int, int]:
        """GIE's ``matchLongestPrefix``: matched GIE blocks per server."""
        res: dict[int, int] = {}
        per = self.per_block
        h2p = self.hash_to_pods
        for j, b in enumerate(ids):
            ps = h2p.get(b)
            if not ps:
                break
            w = min(per, total_g - per * j)
            for s in ps:
                res[s] = res.get(s, 0) + w
        return res


def gie_scores(
    matched: dict[int, int],
    total_g: int,
    rids: Sequence[int],
    waiting: Sequence[int],
    kv_usage: Sequence[float],
    params: RoutingParams,
) -> list[float]:
    """Weighted sum of GIE's three default scorers for each candidate (aligned with ``rids``)."""
    qmin = min(waiting)
    qmax = max(waiting)
    span = qmax - qmin
    out = []
    wp, wq, wk = params.gie_prefix_weight, params.gie_queue_weight, params.gie_kv_weight
    for rid, q, u in zip(rids, waiting, kv_usage, strict=True):
        sp = matched.get(rid, 0) / total_g if total_g else 0.0
        sq = 1.0 if span == 0 else (qmax - q) / span
        sk = 1.0 - u
        out.append(wp * sp + wq * sq + wk * sk)
    return out
