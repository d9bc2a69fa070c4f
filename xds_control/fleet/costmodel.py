"""The cost model of one inference replica — the single source of truth for the simulator and the emulated replica.

Everything that says how long a replica takes to serve a request lives here, so that
``xds-control evaluate`` (the discrete-event simulator in :mod:`xds_control.sim`) and
``xds-control replica`` (the emulated HTTP replica of the live demo) agree. The module is
pure: no I/O, no clocks, no asyncio, no numpy. Every function is plain arithmetic, so it
also accepts numpy arrays for the token-count arguments (``min``/``max`` are avoided in the
array-friendly ones, see each docstring).

Model
-----
A replica is one vLLM-style engine on one GPU doing *continuous batching*:

* **prefill** of a request costs ``prefill_s_per_token × input_tokens`` seconds of GPU time
  and produces the first token (TTFT = queueing + prefill);
* every **decode step** produces one token for each sequence in the running batch and takes
  ``decode_base_s + decode_per_seq_s × batch`` seconds (memory-bandwidth bound: the weights
  are read once per step, plus a per-sequence KV-cache read);
* one engine **iteration** that also carries prefill tokens (chunked prefill) takes
  ``step_time_s(p, batch, prefill_tokens)`` = decode step + prefill cost;
* at most ``max_batch`` sequences run at once and their reserved KV cache
  (``input_tokens + output_tokens`` each) must fit in ``kv_capacity_tokens``;
* an engine step prefills at most ``max_num_batched_tokens`` prompt tokens (vLLM's per-step token budget; a
  longer prompt takes a step alone): the emulated replica admits waiting prompts into a step up to it, the
  simulator prefills one prompt after another, and in both a prompt whose prefill has not started is waiting;
* at most ``queue_bound`` requests wait per replica; a request that finds the queue full is
  rejected, one that gets no first token within ``request_timeout_s`` times out — both are
  *lost tasks*;
* a new replica serves nothing for ``cold_start_s`` seconds;
* **prefix cache** (when requests carry block hashes): the KV cache is ``gpu_cache_blocks`` blocks
  of ``kv_block_tokens``; a request's leading prompt blocks already cached skip prefill (at least
  one token is always computed); blocks of running requests are pinned, free blocks are evicted
  least recently used first, into the optional host tier (``host_kv_blocks``), whose hits cost
  ``host_block_load_s`` per block instead of recomputing ``kv_block_tokens`` tokens.

Public API (stable; the emulated replica imports it)
----------------------------------------------------
``ReplicaProfile``                  frozen dataclass holding the parameters above.
``PROFILES``, ``DEFAULT_PROFILE``,  named profiles; ``get_profile(name)`` raises ``KeyError``
``get_profile(name)``               with the known names.
``prefill_time_s(p, input_tokens)`` GPU seconds to prefill a prompt.
``decode_step_time_s(p, batch)``    seconds of one decode step for ``batch`` sequences (batch ≥ 1).
``step_time_s(p, batch, prefill_tokens=0)``  one engine iteration (decode + chunked prefill).
``fits_kv_cache(p, kv_used_tokens, input_tokens, output_tokens)``  admission check.
``kv_tokens(input_tokens, output_tokens)``   KV tokens a request reserves.
``gpu_utilization(p, batch, prefill_fraction=0.0)``  utilisation estimate in [0, 1].
``request_work_s(p, input_tokens, output_tokens)``   GPU seconds a request costs at the
                                    profile's reference batch (the unit of "offered load").
``isolated_latency_s(p, input_tokens, output_tokens, batch=1)``  (ttft_s, total_s) for a
                                    request that never waits, decoding in a batch of ``batch``.
``capacity_rps(p, mean_input_tokens, mean_output_tokens)``  sustainable requests/s of one replica.
``power_w(p, utilization)``         electrical power of the replica's GPU at a utilisation.
``gpu_cache_blocks(p)``, ``kv_block_bytes(p)``, ``host_block_load_s(p)``,
``cached_prefill_time_s(p, input_tokens, gpu_cached_tokens, host_blocks, host_tokens)``  prefix
                                    cache: capacity in blocks, block size, host-tier load time,
                                    prefill time when part of the prompt is cached.

Sources for the default profile (``"llama3-8b-48gb"``: Llama-3/3.1-8B, BF16, vLLM, one 48 GB
GPU such as an NVIDIA L40S — the seed paper's nodes carry 8 × 48 GB GPUs):

* weights 8.03 B params × 2 B = 16.1 GB; KV cache per token = 2 (K,V) × 32 layers × 8 KV heads
  × 128 dims × 2 B = 128 KiB (grouped-query attention, Llama-3 model card / config.json);
  vLLM's default ``gpu_memory_utilization=0.9`` leaves 43.2 GB, minus weights and ~2 GB of
  activations/CUDA graphs ≈ 25 GB ≈ 190 k tokens → ``kv_capacity_tokens = 180_000``.
* decode at batch 1: a public vLLM sweep of Llama-3.1-8B on an A100-40GB (1.56 TB/s) measured
  ≈ 75 tok/s at concurrency 1 (≈ 77 % of the bandwidth roofline) and a 6.6× throughput gain at
  concurrency 8 (johnmusgrave.com, "vLLM throughput-latency sweep on NVIDIA A100"). Scaled to
  the L40S's 864 GB/s: 16.1 GB / 0.864 TB/s / 0.77 ≈ 24 ms per step → ``decode_base_s = 0.024``;
  ``decode_per_seq_s = 0.0004`` gives 7× at batch 8 and ≈ 2 000 output tok/s at vLLM's default
  ``max_num_seqs = 256``, the order of vLLM's published offline throughput for 8B models on
  48 GB cards.
* prefill: 2 × 8 GFLOP per token at ~50 % of the L40S's 181 dense BF16 TFLOPS ≈ 5 500 prompt
  tok/s → ``prefill_s_per_token = 1.8e-4`` (a 2 048-token prompt: 0.37 s).
* ``cold_start_s = 20``: vLLM loading 16 GB of weights from local NVMe plus CUDA-graph capture
  with the image already pulled. Published extremes: 4 s hot start (llm-d fast model actuation)
  and ~240 s for a Qwen3-8B pod from scratch (llm-d keda-epp guide); see the ``"slow-start"``
  profile.
* ``queue_bound = 128`` waiting requests (Envoy's default circuit breaker is 1 024 pending
  requests per cluster; per replica we bound lower so overload shows up as loss, not as
  minutes of queueing), ``request_timeout_s = 60`` (xds-control's route timeout default).
* power: L40S TDP 350 W, ~80 W idle with the model loaded.

The GPU-utilisation model is deliberately *not* nvidia-smi's "a kernel was running" (pegged at
100 % by a single request, dcgm-exporter#301). It estimates how much of the replica's useful
capacity is in use: prefill is compute bound (1.0); a decode step with ``b`` sequences uses
``util_decode_floor + (1 - util_decode_floor) × min(b, reference_batch) / reference_batch``; idle
is 0. ``reference_batch`` (32: ~37 ms per output token) is the batch of a replica that is "full"
for interactive serving, and :func:`request_work_s` prices decode tokens at that batch, so a
replica whose offered load (work seconds per second) is 1.0 also shows a utilisation of about 1.0
— utilisation-driven policies and the simulator's capacity agree. Below ``reference_batch`` it is
linear in ``b``, so averaging the batch size over time gives the time-averaged utilisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

__all__ = [
    "ReplicaProfile",
    "PROFILES",
    "DEFAULT_PROFILE",
    "get_profile",
    "prefill_time_s",
    "decode_step_time_s",
    "step_time_s",
    "kv_tokens",
    "fits_kv_cache",
    "gpu_utilization",
    "request_work_s",
    "isolated_latency_s",
    "capacity_rps",
    "power_w",
    "gpu_cache_blocks",
    "kv_block_bytes",
    "host_block_load_s",
    "cached_prefill_time_s",
]


@dataclass(frozen=True, slots=True)
class ReplicaProfile:
    """Performance parameters of one inference replica (one engine on ``gpus`` GPUs)."""

    name: str = "llama3-8b-48gb"
    #: GPU seconds of prefill per prompt token (compute bound).
    prefill_s_per_token: float = 1.8e-4
    #: Seconds of one decode step at batch 1 (weights read once per step).
    decode_base_s: float = 0.024
    #: Extra seconds per sequence in the decode batch (KV-cache reads, attention).
    decode_per_seq_s: float = 0.0004
    #: Maximum sequences decoding at once (vLLM ``max_num_seqs``).
    max_batch: int = 256
    #: Prompt tokens one engine step prefills at most (vLLM ``max_num_batched_tokens``; 2,048 is vLLM V1's
    #: default for the OpenAI server on GPUs under 70 GB): the emulated replica admits waiting prompts into a
    #: step until the next would pass it (a longer prompt takes a step alone); the rest keep waiting
    #: (``num_requests_waiting``), as the simulator's prefills run one after another.
    max_num_batched_tokens: int = 2048
    #: KV-cache capacity in tokens; a request reserves input + output tokens.
    kv_capacity_tokens: int = 180_000
    #: Maximum requests waiting (not yet admitted to the batch) per replica.
    queue_bound: int = 128
    #: Seconds from "start a replica" until it can serve.
    cold_start_s: float = 20.0
    #: A request with no first token this many seconds after arrival is lost (the client gives
    #: up waiting); once it streams, it runs to completion.
    request_timeout_s: float = 60.0
    #: Utilisation of a decode step at batch 1 (memory bound, SMs mostly waiting).
    util_decode_floor: float = 0.3
    #: Batch size of a "full" replica: :func:`request_work_s` prices decode tokens at it and
    #: :func:`gpu_utilization` reaches 1.0 at it.
    reference_batch: int = 32
    #: GPUs per replica (tensor parallelism); GPU-hours count this many per replica-hour.
    gpus: int = 1
    #: GPU memory in GB (documentation; the KV capacity above is derived from it).
    gpu_memory_gb: float = 48.0
    #: Power of each GPU idle with the model loaded, and at full utilisation (TDP), in watts.
    idle_power_w: float = 80.0
    max_power_w: float = 350.0
    #: Automatic prefix caching (vLLM APC) when the trace carries block hashes: full prompt blocks
    #: already in the replica's KV cache skip prefill. See :func:`gpu_cache_blocks`.
    prefix_caching: bool = True
    #: Tokens per prefix-cache block (the Mooncake trace's ``hash_ids`` granularity).
    kv_block_tokens: int = 512
    #: KV-cache bytes per token (Llama-3-8B: 2 × 32 layers × 8 KV heads × 128 dims × 2 B = 128 KiB).
    kv_bytes_per_token: int = 131_072
    #: Host-memory (CPU) KV tier per replica, in blocks; 0 = none (vLLM CPU offload / LMCache).
    host_kv_blocks: int = 0
    #: Host → GPU load bandwidth in GB/s (PCIe 4.0 x16 ≈ 25 GB/s effective).
    host_load_gbps: float = 25.0

    def __post_init__(self) -> None:
        for fname in (
            "prefill_s_per_token",
            "decode_base_s",
            "decode_per_seq_s",
            "cold_start_s",
            "request_timeout_s",
            "util_decode_floor",
            "idle_power_w",
            "max_power_w",
        ):
            v = getattr(self, fname)
            if not v >= 0:  # also rejects NaN
                raise ValueError(f"ReplicaProfile.{fname} must be >= 0, got {v!r}")
        for fname in ("max_batch", "kv_capacity_tokens", "reference_batch", "gpus", "kv_block_tokens",
                      "kv_bytes_per_token", "max_num_batched_tokens"):
            v = getattr(self, fname)
            if int(v) != v or v < 1:
                raise ValueError(f"ReplicaProfile.{fname} must be an integer >= 1, got {v!r}")
        if int(self.host_kv_blocks) != self.host_kv_blocks or self.host_kv_blocks < 0:
            raise ValueError(f"ReplicaProfile.host_kv_blocks must be an integer >= 0, got {self.host_kv_blocks!r}")
        if not self.host_load_gbps > 0:
            raise ValueError(f"ReplicaProfile.host_load_gbps must be > 0, got {self.host_load_gbps!r}")
        if self.queue_bound < 0:
            raise ValueError(f"ReplicaProfile.queue_bound must be >= 0, got {self.queue_bound!r}")
        if self.decode_base_s <= 0:
            raise ValueError("ReplicaProfile.decode_base_s must be > 0")
        if self.util_decode_floor > 1:
            raise ValueError("ReplicaProfile.util_decode_floor must be <= 1")

    def with_(self, **changes: Any) -> ReplicaProfile:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


DEFAULT_PROFILE = ReplicaProfile()

PROFILES: Mapping[str, ReplicaProfile] = MappingProxyType(
    {
        "llama3-8b-48gb": DEFAULT_PROFILE,
        # Same engine, but a pod started from scratch (image pull, weight download): llm-d
        # measured ~240 s for Qwen3-8B at TP1 (guides keda-epp.md).
        "slow-start": replace(DEFAULT_PROFILE, name="slow-start", cold_start_s=240.0),
        # A deliberately tiny replica for tests and the live demo on a laptop: easy to saturate.
        "tiny": ReplicaProfile(
            name="tiny",
            prefill_s_per_token=1e-3,
            decode_base_s=0.01,
            decode_per_seq_s=0.001,
            max_batch=8,
            kv_capacity_tokens=16_384,
            queue_bound=16,
            cold_start_s=2.0,
            request_timeout_s=30.0,
            reference_batch=4,
        ),
    }
)


def get_profile(name: str) -> ReplicaProfile:
    """The named profile; ``KeyError`` names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown replica profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


def prefill_time_s(p: ReplicaProfile, input_tokens: Any) -> Any:
    """GPU seconds to prefill ``input_tokens`` prompt tokens (array friendly)."""
    return p.prefill_s_per_token * input_tokens


def decode_step_time_s(p: ReplicaProfile, batch: Any) -> Any:
    """Seconds of one decode step producing one token for each of ``batch`` sequences (array friendly).

    Meaningful for ``batch >= 1``; an empty batch takes no step.
    """
    return p.decode_base_s + p.decode_per_seq_s * batch


def step_time_s(p: ReplicaProfile, batch: int, prefill_tokens: int = 0) -> float:
    """One engine iteration: a decode step for ``batch`` sequences plus ``prefill_tokens`` of chunked prefill."""
    t = prefill_tokens * p.prefill_s_per_token
    if batch > 0:
        t += p.decode_base_s + p.decode_per_seq_s * batch
    return t


def kv_tokens(input_tokens: Any, output_tokens: Any) -> Any:
    """KV-cache tokens a request reserves for its whole life (array friendly)."""
    return input_tokens + output_tokens


def fits_kv_cache(p: ReplicaProfile, kv_used_tokens: int, input_tokens: int, output_tokens: int) -> bool:
    """Whether a request fits next to ``kv_used_tokens`` already reserved."""
    return kv_used_tokens + input_tokens + output_tokens <= p.kv_capacity_tokens


def gpu_utilization(p: ReplicaProfile, batch: float, prefill_fraction: float = 0.0) -> float:
    """Estimated GPU utilisation in [0, 1].

    ``batch`` is the (possibly time-averaged) number of decoding sequences while decoding,
    ``prefill_fraction`` the fraction of the interval spent in prefill. Idle (batch 0 and no
    prefill) is 0. See the module docstring for why this is not nvidia-smi's number.
    """
    pf = min(max(prefill_fraction, 0.0), 1.0)
    b = min(max(batch, 0.0), float(p.reference_batch))
    decode = 0.0 if b <= 0 else p.util_decode_floor + (1.0 - p.util_decode_floor) * b / p.reference_batch
    return pf * 1.0 + (1.0 - pf) * decode


def request_work_s(p: ReplicaProfile, input_tokens: Any, output_tokens: Any) -> Any:
    """GPU seconds a request costs on a loaded replica (array friendly).

    Prefill of every prompt token, then ``output_tokens - 1`` decode tokens each priced at one
    ``reference_batch``-th of a decode step at ``reference_batch`` (the first output token comes
    from prefill). Offered load in "replicas" is the sum of this over arrivals per second.
    """
    per_tok = (p.decode_base_s + p.decode_per_seq_s * p.reference_batch) / p.reference_batch
    decode_tokens = output_tokens - 1
    decode_tokens = decode_tokens * (decode_tokens > 0)
    return p.prefill_s_per_token * input_tokens + per_tok * decode_tokens


def isolated_latency_s(p: ReplicaProfile, input_tokens: int, output_tokens: int, batch: int = 1) -> tuple[float, float]:
    """``(ttft_s, total_s)`` of a request that does not queue and decodes in a batch of ``batch``."""
    ttft = prefill_time_s(p, input_tokens)
    steps = max(output_tokens - 1, 0)
    return ttft, ttft + steps * decode_step_time_s(p, max(batch, 1))


def capacity_rps(p: ReplicaProfile, mean_input_tokens: float, mean_output_tokens: float) -> float:
    """Requests per second one replica sustains (at the reference batch) for a given mix."""
    return 1.0 / float(request_work_s(p, mean_input_tokens, mean_output_tokens))


def power_w(p: ReplicaProfile, utilization: float) -> float:
    """Electrical power in watts of the replica's GPUs at ``utilization`` (linear idle→TDP)."""
    u = min(max(utilization, 0.0), 1.0)
    return p.gpus * (p.idle_power_w + (p.max_power_w - p.idle_power_w) * u)


def gpu_cache_blocks(p: ReplicaProfile) -> int:
    """Prefix-cache capacity of one replica in blocks: the whole KV cache, ``kv_capacity_tokens // kv_block_tokens``.

    Blocks of running requests are pinned; the free ones keep their contents (cached) until an
    allocation evicts the least recently used (vLLM automatic prefix caching).
    """
    return max(1, p.kv_capacity_tokens // p.kv_block_tokens)


def kv_block_bytes(p: ReplicaProfile) -> int:
    """Bytes of one KV-cache block."""
    return p.kv_block_tokens * p.kv_bytes_per_token


def host_block_load_s(p: ReplicaProfile) -> float:
    """Seconds to load one block from the host tier over PCIe: ``block bytes / host_load_gbps``.

    The default profile: 64 MiB / 25 GB/s ≈ 2.7 ms, against ≈ 92 ms to recompute its 512 tokens.
    """
    return kv_block_bytes(p) / (p.host_load_gbps * 1e9)


def cached_prefill_time_s(p: ReplicaProfile, input_tokens: int, gpu_cached_tokens: int = 0,
                          host_blocks: int = 0, host_tokens: int = 0) -> float:
    """Prefill seconds of a prompt whose first ``gpu_cached_tokens`` are in the GPU cache and the next
    ``host_tokens`` (``host_blocks`` blocks) are loaded from the host tier: the rest is computed."""
    computed = input_tokens - gpu_cached_tokens - host_tokens
    return p.prefill_s_per_token * (computed if computed > 0 else 0) + host_blocks * host_block_load_s(p)
