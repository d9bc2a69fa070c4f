"""The discrete-event fleet simulator.

One run replays a :class:`~xds_control.fleet.trace.Trace` through a fleet of replicas driven by one
:class:`~xds_control.sim.controller.Controller`. Time is simulated; nothing sleeps.

Replica model (see :mod:`xds_control.fleet.costmodel` for the numbers)
-----------------------------------------------------------------
* A replica is *starting* for ``cold_start_s``, then *ready*; scaled-down replicas *drain* (no new
  requests, in-flight ones finish) and are then gone; a failed replica is *dead* at once.
* Continuous batching with prefill priority (vLLM v0 scheduling): when a request is admitted its
  prefill runs at once (after the prefills already queued) and decoding of the whole batch pauses
  meanwhile; its first token comes at the end of its prefill. Then every running sequence gets one
  token per decode step of ``decode_step_time_s(batch)``. Between two events the batch is constant,
  so decode progress is advanced analytically ("fluid" steps): events are arrivals, completions,
  readiness, failures and ticks — never individual decode steps. This keeps a one-hour trace at a
  few events per request.
* Admission: FIFO from the replica's queue while ``batch < max_batch`` and the KV cache can reserve
  ``input + output`` tokens. A request that can never fit (more tokens than the KV cache) is lost.
* Losses (task loss): arriving at a full queue (``queue_bound``) — rejected; no first token within
  ``request_timeout_s`` of arrival — timed out (the client gave up; dropped when it would be
  admitted, so it costs no GPU time); streaming on a replica that fails; arriving when no replica
  is ready (Envoy "no healthy upstream"). A request that is streaming runs to completion however
  long its output.
  Requests waiting or in prefill on a failed replica are retried once on another replica (Envoy
  retry on reset), keeping their original arrival time.

Routing (the data plane)
------------------------
* Only ready replicas with an EDS weight > 0 receive requests. A controller that manages EDS
  (``eds_managed``, e.g. one driven by ``xds_control.planning``) puts a newly ready replica into
  rotation itself; otherwise it joins at weight 1.
* ``least_request``: Envoy's weighted least request. When all weights are equal: power of two
  choices on active requests. Otherwise each ready replica gets effective weight
  ``weight / (active + 1) ** bias`` (bias 1.0) in an earliest-deadline-first schedule, the weight
  being computed when the host is (re)inserted after a pick, as Envoy's EDF scheduler does.
* ``round_robin``: plain round robin over ready replicas, ignoring weights and load (a Kubernetes
  Service).
* ``prefix``, ``gie``, ``oracle``: prefix-cache-aware routings, see :mod:`xds_control.sim.routing`
  (settings in ``SimConfig.routing``).
* Prefill-backlog shedding (the plan's ``PoolPlan.shed``, passed as ``Action.shed_backlog_s``; or
  ``SimConfig.shed``): a picked replica whose queued prefill (the prefill in progress plus the waiting
  prompts), less the prefill its prefix cache would save this request, exceeds the bound sheds the request
  unless it is the last attempt, and it is routed again by the same balancer to a replica not tried yet
  (Envoy's retry on 429 with the previous-hosts predicate).

Prefix cache
------------
When the trace has ``hash_ids`` (and ``profile.prefix_caching``), every replica keeps a
:class:`~xds_control.fleet.prefixcache.PrefixCache` of ``gpu_cache_blocks(profile)`` blocks (plus the
optional host tier); admission then reserves KV *blocks* in it instead of tokens (shared prefix blocks
are pinned once), and a request's prefill covers only its uncached tokens plus the host-tier loads.
``SimResult.cached_tokens`` / ``host_cached_tokens`` / ``replica_cache`` carry the counts
(:mod:`xds_control.sim.cache_metrics`). Without ``hash_ids`` the model is exactly the one above.

Fleet (nodes and localities)
----------------------------
Replicas occupy one GPU each on nodes of ``gpus_per_node`` GPUs (the seed paper's 8 × 48 GB nodes);
nodes alternate between the zones. A new replica goes to the zone with fewer replicas, onto a node
with a free GPU, else a new node. The fleet manager (a Kubernetes ReplicaSet) keeps
``target_replicas`` alive: it replaces dead replicas ``detect_s`` after a failure, starts replicas to
reach a higher target and, to reach a lower one, first cancels starting replicas (newest first),
then drains the ready replicas with the fewest active requests.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from xds_control.core.affinity import fnv1a32, rendezvous_top
from xds_control.fleet import costmodel as cm
from xds_control.fleet.prefixcache import PrefixCache
from xds_control.fleet.trace import BLOCK_TOKENS, Trace
from xds_control.sim.controller import (
    LB_LEAST_REQUEST,
    LB_ROUND_ROBIN,
    Action,
    Controller,
    EndpointObservation,
    FleetInfo,
    FleetObservation,
    ttft_slo_s,
)
from xds_control.sim.routing import (
    CACHE_AWARE_LBS,
    LB_GIE,
    LB_ORACLE,
    LB_PREFIX,
    GieIndexer,
    Maglev,
    RoutingParams,
    bounded_pick,
    gie_scores,
    host_slots,
    prefix_key,
)

__all__ = ["SimConfig", "SimResult", "simulate", "PREROLL_S", "preroll_for", "STATUS", "RATE_WINDOW_S", "LB_NAMES"]

#: Every routing ``SimConfig.lb`` accepts (see :mod:`xds_control.sim.routing` for the last three).
LB_NAMES = (LB_ROUND_ROBIN, LB_LEAST_REQUEST, LB_PREFIX, LB_GIE, LB_ORACLE)

#: The pre-roll ``xds-control evaluate`` and the frontiers use (``SimConfig.preroll_s``): 5 minutes, longer than the
#: comprehensive policy takes to converge from its warm-start size on the tuning windows (about 3 minutes on
#: Mooncake w0).
PREROLL_S = 300.0


def preroll_for(trace: Trace, preroll_s: float = PREROLL_S) -> float:
    """The pre-roll an evaluation uses on ``trace``: ``preroll_s``, at most a third of the trace, so that a short
    (sped-up) trace's surge is not replayed whole before it is measured."""
    return max(0.0, min(float(preroll_s), trace.duration_s / 3.0))

#: Window of the gateway request rate shown to controllers (``FleetObservation.arrival_rps``).
RATE_WINDOW_S = 10.0

# replica states
_STARTING, _READY, _DRAINING, _DEAD, _GONE = range(5)
_STATE_NAMES = ("starting", "ready", "draining", "dead", "gone")

#: Request outcome codes in :attr:`SimResult.status`.
STATUS = {
    "pending": 0,
    "ok": 1,
    "rejected": 2,  # queue full, no ready replica, or can never fit the KV cache
    "timeout": 3,  # no first token within the request timeout
    "failed": 4,  # was streaming on a replica that failed
}
_OK, _REJ, _TMO, _FAIL = 1, 2, 3, 4

# event kinds
_EV_DONE, _EV_READY, _EV_FAIL, _EV_RECONCILE = range(4)


@dataclass(frozen=True)
class SimConfig:
    profile: cm.ReplicaProfile = cm.DEFAULT_PROFILE
    seed: int = 0
    #: Kill one replica (or node, see ``failure_scope``) at this simulated second; None = no failure.
    failure_at: float | None = None
    failure_scope: str = "replica"
    #: Seconds between two samples of the time series (and the finest controller tick).
    sample_s: float = 1.0
    gpus_per_node: int = 8
    zones: tuple[str, ...] = ("zone-a", "zone-b")
    #: Seconds until the fleet manager notices a dead replica and starts a replacement.
    detect_s: float = 2.0
    #: Envoy least-request ``active_request_bias``.
    lr_bias: float = 1.0
    #: Upper bound on replicas the fleet manager will run.
    max_replicas: int = 1024
    #: Override the controller's routing (one of :data:`LB_NAMES`), None = the controller's.
    lb: str | None = None
    #: Settings of the cache-aware routings (``prefix``, ``gie``, ``oracle``).
    routing: RoutingParams = field(default_factory=RoutingParams)
    #: Prefill-backlog shedding from the start, ``(backlog_s, attempts)`` (a controller's ``Action.shed_backlog_s``
    #: replaces it); None = off.
    shed: tuple[float, int] | None = None
    #: Simulated seconds after the last arrival during which the fleet keeps being sampled and billed.
    tail_s: float = 0.0
    #: The controller is first called at this simulated second. The fleet starts warm but idle,
    #: so the first seconds of a trace window look like an idle fleet; a policy deciding on them
    #: (HPA with an empty stabilisation window) would scale a correctly sized fleet down to 1.
    #: Metrics cover the whole run, warm-up included.
    warmup_s: float = 30.0
    #: Pre-roll: replay the trace's first ``preroll_s`` seconds before it, and measure only the trace itself
    #: (:func:`simulate` cuts the result), so that an autoscaler is judged on the window after it has adapted to
    #: its load, as one that was already running would be, not on its convergence from the warm-start size.
    #: 0 = none (the trace alone, from a warm start).
    preroll_s: float = 0.0


@dataclass
class SimResult:
    """Everything a run produced: per-request outcomes, the sampled time series and the actions."""

    policy: str
    trace: str
    lb: str
    target_util: float
    profile: cm.ReplicaProfile
    # per request (aligned with the trace)
    arrival: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    work: np.ndarray
    ttft: np.ndarray  # absolute time of the first token (nan if none)
    finish: np.ndarray  # absolute completion time (nan if none)
    status: np.ndarray  # STATUS codes
    replica: np.ndarray  # replica id that served it (-1 if none)
    # time series, one row per sample
    ts_t: np.ndarray
    ts_ready: np.ndarray
    ts_provisioned: np.ndarray  # starting + ready + draining (billed)
    ts_target: np.ndarray
    ts_util: np.ndarray  # mean GPU utilisation over ready replicas in the interval
    ts_power_w: np.ndarray  # fleet power in the interval
    ts_active_max: np.ndarray  # busiest replica's active requests
    ts_active_mean: np.ndarray  # mean active requests over ready replicas
    # scaling actions: (time, old target, new target)
    actions: list[tuple[float, int, int]] = field(default_factory=list)
    failure_at: float | None = None
    #: Whether the controller can scale at all (False for the fixed fleet).
    scales: bool = True
    #: Ready replicas just before the failure.
    pre_failure_ready: int = 0
    gpu_seconds: float = 0.0
    energy_j: float = 0.0
    sample_s: float = 1.0
    end_t: float = 0.0
    #: Prefix cache (traces with ``hash_ids`` and ``profile.prefix_caching``), per request: prompt
    #: tokens found in the GPU cache / loaded from the host tier; -1 = never admitted. None without a cache.
    cached_tokens: np.ndarray | None = None
    host_cached_tokens: np.ndarray | None = None
    #: Requests a replica shed (prefill backlog over the bound) and Envoy retried on another replica.
    shed_retries: int = 0
    #: GPU-seconds billed in each sample interval (``gpu_seconds`` is their sum).
    ts_gpu_s: np.ndarray | None = None
    #: Per replica id: ``(queries, hits, host_hits)`` in prompt tokens (vLLM's
    #: ``prefix_cache_queries`` / ``prefix_cache_hits``); empty without a cache.
    replica_cache: dict[int, tuple[int, int, int]] = field(default_factory=dict)


class _Replica:
    __slots__ = (
        "rid", "node", "zone", "state", "created", "ready_at", "stopped",
        "running", "b", "D", "last_t", "stall_until", "kv_used", "waiting", "version",
        "acc_pf", "acc_bt", "acc_dt", "weight", "util_sum", "util_n", "routed", "done", "lost", "ttfts", "pstarts",
        "edf",
        "reaped", "cache",
    )

    def __init__(self, rid: int, node: int, zone: str, now: float, ready_at: float) -> None:
        self.rid = rid
        self.node = node
        self.zone = zone
        self.state = _STARTING if ready_at > now else _READY
        self.created = now
        self.ready_at = ready_at
        self.stopped = math.inf
        self.running: list[tuple[float, int]] = []  # heap of (finish progress D, request index)
        self.b = 0
        self.D = 0.0  # decode steps done so far (continuous)
        self.last_t = now
        self.stall_until = now  # end of queued prefill work
        self.kv_used = 0
        self.waiting: deque[int] = deque()
        self.version = 0
        self.acc_pf = 0.0  # prefill seconds in the current sample interval
        self.acc_bt = 0.0  # integral of batch size over decode time
        self.acc_dt = 0.0  # decode seconds
        self.weight = 1
        self.util_sum = 0.0
        self.util_n = 0
        self.routed = 0
        self.done = 0  # requests finished since the previous tick (vLLM's request_success_total)
        self.lost = 0
        #: (first-token time, TTFT) of admitted requests, in first-token order: a TTFT is observed (vLLM's
        #: histogram) when the first token comes out, not when the prefill is scheduled.
        self.ttfts: deque[tuple[float, float]] = deque()
        #: When each admitted request's prefill starts (non-decreasing: prefills run one after another). One that
        #: has not started is waiting, as vLLM counts it (``num_requests_waiting``: not scheduled yet).
        self.pstarts: deque[float] = deque()
        self.edf = 0.0  # Envoy EDF deadline (weighted least request with unequal weights)
        self.reaped = False  # a dead replica the controller acknowledged (direct mode)
        self.cache: PrefixCache | None = None


def _p99(x: list[float]) -> float | None:
    """Nearest-rank 99th percentile (cheap for the short per-tick lists), None when empty."""
    if not x:
        return None
    s = sorted(x)
    return float(s[max(0, math.ceil(0.99 * len(s)) - 1)])


def simulate(trace: Trace, controller: Controller, config: SimConfig | None = None) -> SimResult:
    """Replay ``trace`` through a fleet driven by ``controller``. Deterministic for ``config.seed``.

    With ``config.preroll_s`` > 0 the requests of the trace's first ``preroll_s`` seconds are replayed first (the
    trace itself then starts at ``preroll_s``), and the result covers the trace alone: its requests, the samples,
    actions, GPU time and energy after the pre-roll, times shifted back to the trace's own clock.
    """
    cfg = config or SimConfig()
    if cfg.preroll_s > 0:
        return _with_preroll(trace, controller, cfg)
    return _simulate(trace, controller, cfg)


def _with_preroll(trace: Trace, controller: Controller, cfg: SimConfig) -> SimResult:
    pre = float(cfg.preroll_s)
    n_pre = int(np.searchsorted(trace.t, pre, side="left"))
    ext = Trace(
        trace.name,
        np.concatenate((trace.t[:n_pre], trace.t + pre)),
        np.concatenate((trace.input_tokens[:n_pre], trace.input_tokens)),
        np.concatenate((trace.output_tokens[:n_pre], trace.output_tokens)),
        None if trace.hash_ids is None else trace.hash_ids[:n_pre] + trace.hash_ids,
    )
    inner = replace(cfg, preroll_s=0.0, failure_at=None if cfg.failure_at is None else cfg.failure_at + pre)
    r = _simulate(ext, controller, inner, measure_from=n_pre)
    keep = r.ts_t > pre + 1e-9
    g = r.ts_gpu_s if r.ts_gpu_s is not None else np.zeros(len(r.ts_t))
    sl = slice(n_pre, None)
    return replace(
        r,
        arrival=r.arrival[sl] - pre, input_tokens=r.input_tokens[sl], output_tokens=r.output_tokens[sl],
        work=r.work[sl], ttft=r.ttft[sl] - pre, finish=r.finish[sl] - pre, status=r.status[sl],
        replica=r.replica[sl],
        ts_t=r.ts_t[keep] - pre, ts_ready=r.ts_ready[keep], ts_provisioned=r.ts_provisioned[keep],
        ts_target=r.ts_target[keep], ts_util=r.ts_util[keep], ts_power_w=r.ts_power_w[keep],
        ts_active_max=r.ts_active_max[keep], ts_active_mean=r.ts_active_mean[keep], ts_gpu_s=g[keep],
        actions=[(t - pre, a, b) for t, a, b in r.actions if t >= pre],
        failure_at=None if r.failure_at is None else r.failure_at - pre,
        gpu_seconds=float(g[keep].sum()), energy_j=float((r.ts_power_w[keep] * r.sample_s).sum()),
        end_t=r.end_t - pre,
        cached_tokens=None if r.cached_tokens is None else r.cached_tokens[sl],
        host_cached_tokens=None if r.host_cached_tokens is None else r.host_cached_tokens[sl],
    )


def _simulate(trace: Trace, controller: Controller, cfg: SimConfig, measure_from: int = 0) -> SimResult:
    """:func:`simulate` without a pre-roll; ``shed_retries`` counts the requests from index ``measure_from``."""
    p = cfg.profile
    rng = np.random.default_rng(cfg.seed)
    lb = cfg.lb or controller.lb
    eds_managed = bool(getattr(controller, "eds_managed", False))
    #: The controller starts and stops replicas itself (the control step); no fleet manager reconciles.
    direct = bool(getattr(controller, "manages_replicas", False))
    if lb not in LB_NAMES:
        raise ValueError(f"unknown lb {lb!r}; known: {', '.join(LB_NAMES)}")
    rp = cfg.routing
    hid: tuple[tuple[int, ...], ...] | None = trace.hash_ids
    #: the replicas model a prefix cache when the trace says which prompts share prefixes
    cache_on = hid is not None and p.prefix_caching
    cache_blocks = cm.gpu_cache_blocks(p)
    host_blocks = p.host_kv_blocks
    host_load_s = cm.host_block_load_s(p)
    if cache_on and p.kv_block_tokens != BLOCK_TOKENS:
        raise ValueError(f"profile kv_block_tokens {p.kv_block_tokens} differs from the trace's "
                         f"hash_ids block size {BLOCK_TOKENS}")

    arr = np.ascontiguousarray(trace.t, dtype=np.float64)
    inp = np.ascontiguousarray(trace.input_tokens, dtype=np.int64)
    out = np.ascontiguousarray(trace.output_tokens, dtype=np.int64)
    n = len(arr)
    work = np.asarray(cm.request_work_s(p, inp.astype(np.float64), out.astype(np.float64)), dtype=np.float64)
    work_cum = np.concatenate(([0.0], np.cumsum(work)))
    in_cum = np.concatenate(([0.0], np.cumsum(inp, dtype=np.float64)))
    out_cum = np.concatenate(([0.0], np.cumsum(out, dtype=np.float64)))
    end_t = (float(arr[-1]) if n else 0.0) + cfg.tail_s
    end_t = math.ceil(end_t / cfg.sample_s) * cfg.sample_s if end_t > 0 else cfg.sample_s
    duration = max(end_t, cfg.sample_s)
    mean_load = float(work_cum[-1]) / duration

    info = FleetInfo(
        profile=p,
        mean_offered_load=mean_load,
        duration_s=duration,
        gpus_per_node=cfg.gpus_per_node,
        zones=cfg.zones,
        ttft_slo_s=ttft_slo_s(p, inp),
        mean_input_tokens=float(np.mean(inp)) if n else 0.0,
        mean_output_tokens=float(np.mean(out)) if n else 0.0,
    )

    # Python lists are much faster than numpy for the scalar hot path.
    arr_l = arr.tolist()
    inp_l = inp.tolist()
    out_l = out.tolist()
    ttft = [math.nan] * n
    fin = [math.nan] * n
    status = [0] * n
    served = [-1] * n
    retried = bytearray(n)
    ctok = [-1] * n  # GPU-cached prompt tokens per request
    htok = [-1] * n  # host-tier prompt tokens per request

    pf_s = p.prefill_s_per_token
    dbase = p.decode_base_s
    dper = p.decode_per_seq_s
    maxb = p.max_batch
    kvcap = p.kv_capacity_tokens
    qbound = p.queue_bound
    timeout = p.request_timeout_s
    bias = cfg.lr_bias

    replicas: list[_Replica] = []
    node_zone: list[str] = []
    node_used: list[int] = []
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0
    routable: list[_Replica] = []
    eq_weights = True
    rr_next = 0
    # prefetched uniforms for routing
    ubuf = rng.random(65536).tolist()
    upos = 0
    state = {"target": 0}
    actions: list[tuple[float, int, int]] = []
    completions: list[int] = []  # request indices in completion order (ok or timeout after running)
    lost_log: list[int] = []  # request indices lost, in order
    gpu_seconds = 0.0
    energy_j = 0.0
    # cache-aware routing state
    maglev_cache: dict[tuple[tuple[int, int], ...], Maglev] = {}
    route_state: dict[str, object] = {"maglev": None}
    # spill="least_request": the routable hosts' (names, weights, name hashes) for this EDS version, and the last
    # key's rendezvous ranking (a shed retry of the same request asks for its next entry)
    ranking_hosts: list[tuple[list[str], list[float], list[int]] | None] = [None]
    ranking_last: list[tuple[int, list[int]]] = [(-1, [])]
    gie_index = GieIndexer(
        rp.gie_lru_capacity if rp.gie_lru_capacity is not None else p.kv_capacity_tokens // rp.gie_block_tokens,
        BLOCK_TOKENS // rp.gie_block_tokens,
    )
    gie_snap: dict[int, tuple[int, float]] = {}
    gie_snap_t = [-math.inf]
    gie_rng = np.random.default_rng(cfg.seed + 7919)
    balance = rp.hash_balance_factor
    # prefix affinity spilling to least request (rendezvous pick, first attempt bounded by the replica's shedding)
    affinity_lr = lb == LB_PREFIX and rp.spill == "least_request"
    host_hash: dict[int, int] = {}
    stall_s = rp.affinity_stall_s
    # prefill-backlog shedding: [bound in seconds (0 = off), attempts in all, retries made]
    shed = [float(cfg.shed[0]), int(cfg.shed[1]), 0] if cfg.shed is not None else [0.0, 1, 0]

    def push(t: float, kind: int, a: int, b: int = 0) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, kind, a, b))

    def rebuild_routable() -> None:
        nonlocal routable, eq_weights
        routable = [r for r in replicas if r.state == _READY and r.weight > 0]
        route_state["maglev"] = ranking_hosts[0] = None
        ranking_last[0] = (-1, [])
        ws = {r.weight for r in routable}
        eq_weights = len(ws) <= 1
        if not eq_weights:
            # Envoy rebuilds the EDF schedule when the host set or weights change
            base = min((r.edf for r in routable), default=0.0)
            for r in routable:
                r.edf = base + (len(r.waiting) + r.b + 1) ** bias / r.weight

    def place(now: float, ready_at: float, zone: str = "") -> _Replica:
        # the zone asked for, else the zone with fewer live replicas; then a node there with a free GPU,
        # else a new node
        if zone not in cfg.zones:
            live = [r for r in replicas if r.state in (_STARTING, _READY, _DRAINING)]
            counts = {z: 0 for z in cfg.zones}
            for r in live:
                counts[r.zone] = counts.get(r.zone, 0) + 1
            zone = min(cfg.zones, key=lambda z: (counts[z], cfg.zones.index(z)))
        node = -1
        for i, (z, used) in enumerate(zip(node_zone, node_used, strict=True)):
            if z == zone and used < cfg.gpus_per_node:
                node = i
                break
        if node < 0:
            node_zone.append(zone)
            node_used.append(0)
            node = len(node_zone) - 1
        node_used[node] += 1
        r = _Replica(len(replicas), node, zone, now, ready_at)
        if cache_on:
            r.cache = PrefixCache(cache_blocks, p.kv_block_tokens, host_blocks)
        replicas.append(r)
        if ready_at > now:
            push(ready_at, _EV_READY, r.rid)
        return r

    def release(r: _Replica, now: float, new_state: int) -> None:
        r.state = new_state
        r.stopped = now
        node_used[r.node] -= 1

    def advance(r: _Replica, t: float) -> None:
        last = r.last_t
        if t <= last:
            return
        su = r.stall_until
        if su > last:
            r.acc_pf += (t if t < su else su) - last
        if r.b:
            start = last if last > su else su
            if t > start:
                dt = t - start
                b = r.b
                r.D += dt / (dbase + dper * b)
                r.acc_bt += b * dt
                r.acc_dt += dt
        r.last_t = t

    def schedule(r: _Replica) -> None:
        r.version += 1
        if r.b:
            fD = r.running[0][0]
            start = r.last_t if r.last_t > r.stall_until else r.stall_until
            rem = fD - r.D
            t = start + (rem if rem > 0 else 0.0) * (dbase + dper * r.b)
            push(t, _EV_DONE, r.rid, r.version)

    def lose(i: int, code: int, r: _Replica | None) -> None:
        status[i] = code
        lost_log.append(i)
        if r is not None:
            r.lost += 1

    def admit(r: _Replica, t: float) -> None:
        w = r.waiting
        while w and r.b < maxb:
            i = w[0]
            if t - arr_l[i] > timeout:
                w.popleft()
                lose(i, _TMO, r)
                continue
            need = inp_l[i] + out_l[i]
            cache = r.cache
            if cache is None:
                if r.kv_used + need > kvcap:
                    break
                pf = pf_s * inp_l[i]
            else:
                ids = hid[i]  # type: ignore[index]
                plan = cache.plan(ids, inp_l[i], need)
                if plan is None:
                    break
                pf = pf_s * (inp_l[i] - plan.gpu_tokens - plan.host_tokens) + plan.host_blocks * host_load_s
            w.popleft()
            su = r.stall_until
            if su < t:
                su = t
            su += pf
            if su - arr_l[i] > timeout:
                # the client gives up before its first token; the engine aborts it
                lose(i, _TMO, r)
                continue
            if cache is not None:
                cache.commit(ids, inp_l[i], need, plan)  # type: ignore[arg-type]
                ctok[i] = plan.gpu_tokens  # type: ignore[union-attr]
                htok[i] = plan.host_tokens  # type: ignore[union-attr]
            r.stall_until = su
            ttft[i] = su
            r.ttfts.append((su, su - arr_l[i]))
            r.pstarts.append(su - pf)
            o = out_l[i]
            if o <= 1:
                # the prefill produced the only token
                fin[i] = su
                status[i] = _OK
                completions.append(i)
                r.done += 1
                if cache is not None:
                    cache.release(ids, inp_l[i], need)
                continue
            r.kv_used += need
            heapq.heappush(r.running, (r.D + (o - 1), i))
            r.b += 1

    def pick_least_request() -> _Replica:
        nonlocal upos, ubuf
        nr = len(routable)
        if nr == 1:
            return routable[0]
        if upos + 2 >= len(ubuf):
            ubuf = rng.random(65536).tolist()
            upos = 0
        if eq_weights:
            a = routable[int(ubuf[upos] * nr)]
            c = routable[int(ubuf[upos + 1] * nr)]
            upos += 2
            return a if len(a.waiting) + a.b <= len(c.waiting) + c.b else c
        # Envoy's EDF scheduler over weight / (active + 1) ** bias, the effective weight
        # being computed when a host is (re)inserted, i.e. right after it is picked.
        r = routable[0]
        best = r.edf
        for x in routable:
            if x.edf < best:
                best = x.edf
                r = x
        r.edf = best + (len(r.waiting) + r.b + 2) ** bias / r.weight
        return r

    def shares() -> list[float]:
        tot = float(sum(x.weight for x in routable))
        return [x.weight / tot for x in routable]

    def pick_prefix(ids: tuple[int, ...], attempt: int = 0) -> _Replica:
        """Maglev on the prompt-prefix key with bounded loads; a retry's host selection ``attempt`` > 0 mutates the
        hash as Envoy's ``MaglevTable::chooseHost`` does (``hash ^= ~0 - attempt + 1``). With ``spill="least_request"``
        the key's ``attempt``-th replica in rendezvous order (the prefix filter's list), then least request."""
        h = prefix_key(ids, rp.prefix_blocks)
        if affinity_lr:
            hosts = ranking_hosts[0]
            if hosts is None:
                names = [f"replica-{x.rid}" for x in routable]
                hosts = ranking_hosts[0] = (names, [float(x.weight) for x in routable],
                                            [host_hash.setdefault(x.rid, fnv1a32(nm.encode()))
                                             for x, nm in zip(routable, names, strict=True)])
            last_h, top = ranking_last[0]
            if h != last_h:
                top = rendezvous_top(h & 0xFFFFFFFF, hosts[0], hosts[1], rp.affinity_choices, hosts[2])
                ranking_last[0] = (h, top)
            return routable[top[attempt]] if attempt < len(top) else pick_least_request()
        ml = route_state["maglev"]
        if ml is None:
            key = tuple((x.rid, x.weight) for x in routable)
            ml = maglev_cache.get(key)
            if ml is None:
                ml = maglev_cache[key] = Maglev([f"replica-{x.rid}" for x in routable],
                                                [float(x.weight) for x in routable], rp.maglev_table_size)
            route_state["maglev"] = ml
        if attempt > 0:
            h ^= (1 << 64) - attempt
        first = ml.lookup(h)  # type: ignore[attr-defined]
        if balance <= 0 or len(routable) == 1:
            return routable[first]
        act = [len(x.waiting) + x.b for x in routable]
        return routable[bounded_pick(first, h, act, shares(), balance)]

    def pick_cache_aware(i: int, t: float) -> _Replica:
        ids = hid[i] if hid is not None else ()
        if lb == LB_PREFIX:
            return pick_prefix(ids) if ids else pick_least_request()
        if lb == LB_ORACLE:
            act = [len(x.waiting) + x.b for x in routable]
            overall = sum(act)
            ws = shares()
            best: _Replica | None = None
            best_key: tuple[float, ...] = ()
            least: _Replica = routable[0]
            least_f = math.inf
            for x, a, wsh in zip(routable, act, ws, strict=True):
                f = a / host_slots(overall, wsh, balance) if balance > 0 else 0.0
                if f < least_f:
                    least, least_f = x, f
                if f > 1.0:
                    continue
                g, hb = x.cache.match(ids, inp_l[i]) if (x.cache is not None and ids) else (0, 0)
                k = (float(g + hb), float(g), -float(a))
                if best is None or k > best_key:
                    best, best_key = x, k
            return best if best is not None else least
        # GIE endpoint picker, default profile
        if t >= gie_snap_t[0] + rp.gie_metrics_refresh_s:
            gie_snap.clear()
            gie_snap_t[0] = t
        waiting: list[int] = []
        usage: list[float] = []
        for x in routable:
            sn = gie_snap.get(x.rid)
            if sn is None:
                u = x.cache.usage if x.cache is not None else x.kv_used / kvcap
                sn = gie_snap[x.rid] = (len(x.waiting), u)
            waiting.append(sn[0])
            usage.append(sn[1])
        total_g = min(inp_l[i] // rp.gie_block_tokens, rp.gie_max_prefix_blocks) if ids else 0
        per = gie_index.per_block
        gids = ids[: -(-total_g // per)] if total_g else ()
        matched = gie_index.match(gids, total_g) if total_g else {}
        scores = gie_scores(matched, total_g, [x.rid for x in routable], waiting, usage, rp)
        top = max(scores)
        ties = [k for k, sc in enumerate(scores) if sc == top]
        r = routable[ties[int(gie_rng.integers(len(ties)))] if len(ties) > 1 else ties[0]]
        if total_g:
            gie_index.add(gids, r.rid)
        return r

    def backlog_s(r: _Replica, t: float) -> float:
        """Seconds of prefill queued ahead of a request arriving now: the prefill in progress, then the waiting
        prompts (uncached size: the replica cannot know its cache hits before admission)."""
        su = r.stall_until - t
        return (su if su > 0 else 0.0) + pf_s * sum(inp_l[j] for j in r.waiting)

    def cache_saving_s(r: _Replica, i: int) -> float:
        """Prefill seconds the replica's prefix cache saves this request (GPU blocks skip prefill, host blocks load
        over PCIe instead): a request waits for the backlog but then prefills less here than anywhere cold."""
        if r.cache is None or hid is None:
            return 0.0
        g, h = r.cache.match(hid[i], inp_l[i])
        bt = p.kv_block_tokens
        return pf_s * bt * g + (pf_s * bt - host_load_s) * h

    def shed_retry(i: int, t: float, r: _Replica) -> _Replica:
        """Envoy's retry of a shed request: the replica answers 429 when its backlog exceeds the bound and this is
        not the last attempt; the route retries on a host not tried yet (previous-hosts predicate, up to 3 extra
        picks of the pool's balancer; prefix affinity re-hashes as Envoy's Maglev does, the GIE picker and the oracle
        re-pick by least request). The retry's few milliseconds are not modelled."""
        nonlocal rr_next
        nr = len(routable)
        tried = {r.rid}
        # Maglev re-hashes a retry; prefix affinity spilling to least request retries by least request
        ids = hid[i] if hid is not None and lb == LB_PREFIX and not affinity_lr else ()
        first = affinity_lr and hid is not None
        k = rp.affinity_choices if first else 0
        attempts = max(int(shed[1]), k + 1)
        for attempt in range(1, attempts):
            # the key's replicas take the first k attempts within the affinity bound; later ones the pool's, if any
            bound = rp.affinity_backlog_s if attempt <= k else (shed[0] if shed[0] > 0 else math.inf)
            saving = cache_saving_s(r, i)
            if backlog_s(r, t) - saving <= bound and not (
                    attempt <= k and stall_s > 0 and (pf_s * inp_l[i] - saving) * r.b > stall_s):
                return r
            if i >= measure_from:
                shed[2] += 1
            for pick in range(4):
                if attempt < k:
                    # the override-host list's next name (the key's next replica), then least request
                    c = pick_prefix(hid[i], attempt)  # type: ignore[index]
                elif lb == LB_ROUND_ROBIN:
                    c = routable[rr_next % nr]
                    rr_next += 1
                elif ids:
                    c = pick_prefix(ids, pick)
                else:
                    c = pick_least_request()
                if c.rid not in tried:
                    break
            r = c
            tried.add(r.rid)
        return r

    def route(i: int, t: float) -> None:
        nonlocal rr_next
        nr = len(routable)
        if nr == 0:
            lose(i, _REJ, None)
            return
        if inp_l[i] + out_l[i] > kvcap or (cache_on and -(-(inp_l[i] + out_l[i]) // p.kv_block_tokens) > cache_blocks):
            lose(i, _REJ, None)
            return
        if lb in CACHE_AWARE_LBS:
            r = pick_cache_aware(i, t)
        elif nr == 1:
            r = routable[0]
        elif lb == LB_ROUND_ROBIN:
            r = routable[rr_next % nr]
            rr_next += 1
        else:
            r = pick_least_request()
        if (shed[0] > 0 or affinity_lr) and nr > 1:
            r = shed_retry(i, t, r)
        r.routed += 1
        served[i] = r.rid
        if len(r.waiting) >= qbound:
            lose(i, _REJ, r)
            return
        advance(r, t)
        r.waiting.append(i)
        if r.b < maxb:
            admit(r, t)
            schedule(r)

    def complete(r: _Replica, t: float) -> None:
        advance(r, t)
        run = r.running
        lim = r.D + 1e-7
        while run and run[0][0] <= lim:
            _, i = heapq.heappop(run)
            r.b -= 1
            r.kv_used -= inp_l[i] + out_l[i]
            if r.cache is not None:
                r.cache.release(hid[i], inp_l[i], inp_l[i] + out_l[i])  # type: ignore[index]
            fin[i] = t
            status[i] = _OK
            completions.append(i)
            r.done += 1
        admit(r, t)
        if r.state == _DRAINING and not r.b and not r.waiting:
            release(r, t, _GONE)
            return
        schedule(r)

    def fail(r: _Replica, t: float) -> None:
        advance(r, t)
        release(r, t, _DEAD)
        r.version += 1
        retry: list[int] = []
        for _, i in r.running:
            if ttft[i] > t and not retried[i]:
                retry.append(i)
                ttft[i] = math.nan
            else:
                lose(i, _FAIL, r)
        for i in r.waiting:
            if not retried[i]:
                retry.append(i)
            else:
                lose(i, _FAIL, r)
        r.running = []
        r.waiting.clear()
        r.b = 0
        r.kv_used = 0
        if r.cache is not None:
            r.cache.clear()
        rebuild_routable()
        retry.sort(key=lambda i: arr_l[i])
        for i in retry:
            retried[i] = 1
            route(i, t)
        push(t + cfg.detect_s, _EV_RECONCILE, 0)

    def live_count() -> int:
        return sum(1 for r in replicas if r.state in (_STARTING, _READY))

    def reconcile(t: float, drain_first: tuple[int, ...] = ()) -> None:
        target = state["target"]
        live = [r for r in replicas if r.state in (_STARTING, _READY)]
        k = len(live)
        changed = False
        if k < target:
            for _ in range(target - k):
                place(t, t + p.cold_start_s)
            changed = True
        elif k > target:
            excess = k - target
            pri = {rid: j for j, rid in enumerate(drain_first)}
            starting = sorted(
                (r for r in live if r.state == _STARTING), key=lambda r: (pri.get(r.rid, len(pri)), -r.created)
            )
            for r in starting[:excess]:
                release(r, t, _GONE)
                r.version += 1
                excess -= 1
            if excess > 0:
                ready = [r for r in live if r.state == _READY]
                ready.sort(key=lambda r: (pri.get(r.rid, len(pri)), len(r.waiting) + r.b, -r.rid))
                for r in ready[:excess]:
                    advance(r, t)
                    r.state = _DRAINING
                    if not r.b and not r.waiting:
                        release(r, t, _GONE)
            changed = True
        if changed:
            rebuild_routable()

    def apply(t: float, act: Action) -> None:
        if act.shed_backlog_s is not None:
            shed[0], shed[1] = float(act.shed_backlog_s), int(act.shed_attempts)
        if act.weights:
            for rid, w in act.weights.items():
                if 0 <= rid < len(replicas):
                    replicas[rid].weight = max(0, int(w))  # 0 = not in EDS
            rebuild_routable()
        if direct:
            apply_direct(t, act)
            return
        if act.target_replicas is not None:
            new = max(1, min(int(act.target_replicas), cfg.max_replicas))
            old = state["target"]
            if new != old:
                actions.append((t, old, new))
                state["target"] = new
            reconcile(t, act.drain_first)

    def apply_direct(t: float, act: Action) -> None:
        """Start and stop exactly what the controller said (the live loop's scaler calls)."""
        changed = False
        for rid in act.stop:
            if not 0 <= rid < len(replicas):
                continue
            r = replicas[rid]
            if r.state == _DEAD:
                r.reaped = True
            elif r.state == _STARTING:
                release(r, t, _GONE)
                r.version += 1
                changed = True
            elif r.state == _READY:
                advance(r, t)
                r.state = _DRAINING
                if not r.b and not r.waiting:
                    release(r, t, _GONE)
                changed = True
        live_now = live_count()
        for zone in act.start:
            if live_now >= cfg.max_replicas:
                break
            place(t, t + p.cold_start_s, zone)
            live_now += 1
            changed = True
        if act.target_replicas is not None:
            new = max(0, min(int(act.target_replicas), cfg.max_replicas))
            if new != state["target"]:
                actions.append((t, state["target"], new))
                state["target"] = new
        if changed:
            rebuild_routable()

    # --- initial fleet, warm
    init = max(1, min(int(controller.initial_replicas(info)), cfg.max_replicas))
    state["target"] = init
    for _ in range(init):
        place(0.0, 0.0)
    rebuild_routable()

    if cfg.failure_at is not None and float(cfg.failure_at) <= end_t:
        push(float(cfg.failure_at), _EV_FAIL, 0)

    # --- time series buffers
    n_samples = int(round(end_t / cfg.sample_s))
    ts_t = np.zeros(n_samples)
    ts_ready = np.zeros(n_samples, dtype=np.int64)
    ts_prov = np.zeros(n_samples, dtype=np.int64)
    ts_target = np.zeros(n_samples, dtype=np.int64)
    ts_util = np.zeros(n_samples)
    ts_power = np.zeros(n_samples)
    ts_gpu = np.zeros(n_samples)
    ts_amax = np.zeros(n_samples)
    ts_amean = np.zeros(n_samples)
    k_sample = 0
    next_sample = cfg.sample_s
    tick_s = max(float(controller.tick_s), cfg.sample_s)
    next_tick = max(tick_s, math.ceil(cfg.warmup_s / cfg.sample_s) * cfg.sample_s)
    last_tick = 0.0
    comp_ptr = 0
    lost_ptr = 0
    arr_ptr_tick = 0
    pre_failure_ready = 0
    failure_time: float | None = None

    def sample(t: float) -> None:
        nonlocal k_sample, gpu_seconds, energy_j
        dt = cfg.sample_s
        nready = 0
        prov = 0
        usum = 0.0
        amax = 0
        asum = 0
        e0 = energy_j
        g0 = gpu_seconds
        for r in replicas:
            st = r.state
            if st in (_GONE, _DEAD):
                if r.stopped > t - dt:
                    # billed for the part of the interval it was alive
                    alive = r.stopped - max(r.created, t - dt)
                    if alive > 0:
                        gpu_seconds += alive * p.gpus
                        energy_j += alive * cm.power_w(p, 0.0)
                continue
            prov += 1
            alive = t - max(r.created, t - dt)
            gpu_seconds += alive * p.gpus
            if st == _STARTING:
                energy_j += alive * cm.power_w(p, 0.0)
                continue
            advance(r, t)
            busy = r.acc_pf + r.acc_dt
            if busy > 0:
                mb = r.acc_bt / r.acc_dt if r.acc_dt > 0 else 0.0
                u = cm.gpu_utilization(p, mb, r.acc_pf / busy) * min(busy / dt, 1.0)
            else:
                u = 0.0
            r.acc_pf = r.acc_bt = r.acc_dt = 0.0
            r.util_sum += u
            r.util_n += 1
            energy_j += dt * cm.power_w(p, u)
            if st == _READY:
                nready += 1
                usum += u
                a = len(r.waiting) + r.b
                asum += a
                if a > amax:
                    amax = a
        ts_t[k_sample] = t
        ts_ready[k_sample] = nready
        ts_prov[k_sample] = prov
        ts_target[k_sample] = state["target"]
        ts_util[k_sample] = usum / nready if nready else 0.0
        ts_power[k_sample] = (energy_j - e0) / dt
        ts_gpu[k_sample] = gpu_seconds - g0
        ts_amax[k_sample] = amax
        ts_amean[k_sample] = asum / nready if nready else 0.0
        k_sample += 1

    def observe(t: float) -> FleetObservation:
        nonlocal comp_ptr, lost_ptr, arr_ptr_tick, last_tick
        window = t - last_tick
        j = int(np.searchsorted(arr, t, side="right"))
        na = j - arr_ptr_tick
        off = (work_cum[j] - work_cum[arr_ptr_tick]) / window if window > 0 else 0.0
        mi = (in_cum[j] - in_cum[arr_ptr_tick]) / na if na else 0.0
        mo = (out_cum[j] - out_cum[arr_ptr_tick]) / na if na else 0.0
        arr_ptr_tick = j
        # gateway request rate over the last RATE_WINDOW_S (a Prometheus rate() window), not just the tick
        jr = int(np.searchsorted(arr, t - RATE_WINDOW_S, side="right"))
        rate = (j - jr) / min(RATE_WINDOW_S, t) if t > 0 else 0.0
        done = completions[comp_ptr:]
        comp_ptr = len(completions)
        lat = [fin[i] - arr_l[i] for i in done]
        tt = [ttft[i] - arr_l[i] for i in done]
        nlost = len(lost_log) - lost_ptr
        lost_ptr = len(lost_log)
        eps = []
        for r in replicas:
            if r.state not in (_STARTING, _READY, _DRAINING) and not (direct and r.state == _DEAD and not r.reaped):
                continue
            gu = r.util_sum / r.util_n if r.util_n else 0.0
            tq = r.ttfts
            seen: list[float] = []
            while tq and tq[0][0] <= t:
                seen.append(tq.popleft()[1])
            ps = r.pstarts
            while ps and ps[0] <= t:
                ps.popleft()
            eps.append(
                EndpointObservation(
                    rid=r.rid,
                    address=f"10.{r.node // 250}.{r.node % 250}.{(r.rid % 250) + 2}:8000",
                    node=f"node-{r.node}",
                    zone=r.zone,
                    state="failed" if r.state == _DEAD else _STATE_NAMES[r.state],
                    age_s=t - r.ready_at,
                    weight=r.weight,
                    running=max(0, r.b - len(ps)),
                    waiting=len(r.waiting) + len(ps),
                    kv_util=r.kv_used / kvcap if r.cache is None else r.cache.usage,
                    gpu_util=gu,
                    routed=r.routed,
                    completed=r.done,
                    ttft_p99_s=_p99(seen),
                    ttft_mean_s=(sum(seen) / len(seen)) if seen else None,
                    lost=r.lost,
                )
            )
            r.util_sum = 0.0
            r.util_n = 0
            r.routed = 0
            r.done = 0
            r.lost = 0
        last_tick = t
        return FleetObservation(
            now=t,
            window_s=window,
            endpoints=tuple(eps),
            arrival_rps=rate,
            offered_load=float(off),
            mean_input_tokens=float(mi),
            mean_output_tokens=float(mo),
            ttft_p99_s=_p99(tt),
            latency_p99_s=_p99(lat),
            lost=nlost,
            target_replicas=state["target"],
        )

    # --- main loop
    i = 0
    inf = math.inf
    while True:
        ta = arr_l[i] if i < n else inf
        th = heap[0][0] if heap else inf
        if next_sample <= end_t + 1e-9 and next_sample < ta and next_sample < th:
            t = next_sample
            sample(t)
            if t >= next_tick - 1e-9:
                act = controller.step(observe(t))
                apply(t, act)
                next_tick += tick_s
            next_sample = round((k_sample + 1) * cfg.sample_s, 9)
            continue
        if ta == inf and th == inf:
            break
        if th <= ta:
            t, _, kind, a, b = heapq.heappop(heap)
            if kind == _EV_DONE:
                r = replicas[a]
                if r.version == b and r.state in (_READY, _DRAINING):
                    complete(r, t)
            elif kind == _EV_READY:
                r = replicas[a]
                if r.state == _STARTING:
                    r.state = _READY
                    r.last_t = t
                    r.stall_until = t
                    # an EDS-managed controller adds it to rotation itself (planning's ramp)
                    r.weight = 0 if eds_managed else 1
                    rebuild_routable()
            elif kind == _EV_FAIL:
                cands = [r for r in replicas if r.state == _READY]
                if cands:
                    failure_time = t
                    pre_failure_ready = len(cands)
                    victim = cands[int(rng.integers(len(cands)))]
                    if cfg.failure_scope == "node":
                        live_states = (_STARTING, _READY, _DRAINING)
                        for r in [x for x in replicas if x.node == victim.node and x.state in live_states]:
                            fail(r, t)
                    else:
                        fail(victim, t)
            elif kind == _EV_RECONCILE and not direct:
                reconcile(t)
            continue
        t = ta
        route(i, t)
        i += 1

    res = SimResult(
        policy=controller.name,
        trace=trace.name,
        lb=lb,
        target_util=float(controller.target_util),
        profile=p,
        arrival=arr,
        input_tokens=inp,
        output_tokens=out,
        work=work,
        ttft=np.array(ttft),
        finish=np.array(fin),
        status=np.array(status, dtype=np.int8),
        replica=np.array(served, dtype=np.int64),
        ts_t=ts_t[:k_sample],
        ts_ready=ts_ready[:k_sample],
        ts_provisioned=ts_prov[:k_sample],
        ts_target=ts_target[:k_sample],
        ts_util=ts_util[:k_sample],
        ts_power_w=ts_power[:k_sample],
        ts_active_max=ts_amax[:k_sample],
        ts_active_mean=ts_amean[:k_sample],
        actions=actions,
        failure_at=failure_time,
        scales=bool(getattr(controller, "scales", True)),
        pre_failure_ready=pre_failure_ready,
        gpu_seconds=gpu_seconds,
        energy_j=energy_j,
        sample_s=cfg.sample_s,
        end_t=end_t,
        cached_tokens=np.array(ctok, dtype=np.int64) if cache_on else None,
        host_cached_tokens=np.array(htok, dtype=np.int64) if cache_on else None,
        replica_cache={
            r.rid: (r.cache.queries_tokens, r.cache.hits_tokens, r.cache.host_hits_tokens)
            for r in replicas if r.cache is not None
        },
        shed_retries=int(shed[2]),
        ts_gpu_s=ts_gpu[:k_sample],
    )
    return res
