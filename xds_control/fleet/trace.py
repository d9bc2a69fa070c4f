"""Request traces, one module for the live path and the simulator.

Rows are ``timestamp_s,input_tokens,output_tokens`` CSVs, optionally gzip-compressed (``.gz``) and
optionally with a fourth column ``hash_ids``: the request's prompt as space-separated ids of
``BLOCK_TOKENS``-token blocks, chained on the prefix (equal ids = equal prefix up to and including
that block; the Mooncake trace's format). Two views of them:

* :class:`Trace` -- aligned numpy arrays sorted by arrival time, plus the optional ``hash_ids``
  (the simulator's view): :func:`load_trace`, :func:`synthetic`, :func:`surge`,
  :func:`shared_prefix` (generated groups of long shared prefixes with short questions);
* :class:`TraceRequest` rows (the load generator's and the demo's view): :func:`read_trace`,
  :func:`write_trace`, :func:`generate_surge`, :func:`as_requests` (converts a :class:`Trace`).

Real traces live in ``../shared/traces`` (never copied into the repository).

The built-in surge of the demo is shaped like a flash crowd in the real traces: a calm
Poisson load at ``base_rps``, a sharp rise over ``rise_s`` seconds to
``peak_rps``, a plateau of ``hold_s`` seconds, then an exponential decay
(time constant ``decay_tau_s``) back to ``base_rps``. Arrivals are a
non-homogeneous Poisson process drawn by thinning; token counts are lognormal
around medians taken from the Azure 2023 conversation trace (prompt median about
1,000 tokens, output median about 200), clipped. Same ``seed`` → same trace.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Trace", "TraceError", "HEADER", "HASH_COLUMN", "BLOCK_TOKENS", "load_trace", "synthetic", "surge",
           "shared_prefix", "SharedPrefixShape",
           "TraceRequest", "SurgeShape", "rate_at", "generate_surge", "read_trace", "write_trace", "as_requests"]

HEADER = ("timestamp_s", "input_tokens", "output_tokens")
#: Optional fourth column: space-separated prefix-chained block ids.
HASH_COLUMN = "hash_ids"
#: Tokens per ``hash_ids`` block (Mooncake's 512).
BLOCK_TOKENS = 512


def _open_text(path: str) -> io.TextIOBase:
    """Open a trace for reading as text; ``.gz`` files are decompressed."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def _parse_ids(path: str, lineno: int, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split())
    except ValueError:
        raise TraceError(f"trace file {path!r} line {lineno}: bad {HASH_COLUMN} {text[:60]!r} "
                         "(expected space-separated integers)") from None


class TraceError(ValueError):
    """A trace file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace: arrival offset in seconds and token counts."""

    timestamp_s: float
    input_tokens: int
    output_tokens: int
    #: Prefix-chained ids of the prompt's ``BLOCK_TOKENS``-token blocks; empty when the trace has none.
    hash_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class SurgeShape:
    """Parameters of the built-in surge (rates in requests/s, times in seconds)."""

    duration_s: float = 120.0
    base_rps: float = 2.0
    peak_rps: float = 10.0
    #: Calm period before the crowd arrives.
    calm_s: float = 30.0
    #: Rise from base to peak (a sharp crowd: a few seconds).
    rise_s: float = 4.0
    #: Plateau at peak.
    hold_s: float = 25.0
    #: Time constant of the exponential decay after the plateau.
    decay_tau_s: float = 15.0
    input_tokens_median: float = 1000.0
    input_tokens_sigma: float = 0.8
    input_tokens_max: int = 8000
    output_tokens_median: float = 200.0
    output_tokens_sigma: float = 0.7
    output_tokens_max: int = 1000

    def validate(self) -> None:
        for name in ("duration_s", "base_rps", "peak_rps", "input_tokens_median", "output_tokens_median"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                raise ValueError(f"SurgeShape.{name} must be a finite number >= 0, got {v!r}")
        for name in ("calm_s", "rise_s", "hold_s", "decay_tau_s", "input_tokens_sigma", "output_tokens_sigma"):
            v = getattr(self, name)
            if not v >= 0:
                raise ValueError(f"SurgeShape.{name} must be >= 0, got {v!r}")
        if self.input_tokens_max < 1 or self.output_tokens_max < 1:
            raise ValueError("SurgeShape token maxima must be >= 1")

    def scaled(self, time_factor: float) -> SurgeShape:
        """The same shape with every duration multiplied by ``time_factor`` (rates unchanged)."""
        from dataclasses import replace

        f = time_factor
        return replace(self, duration_s=self.duration_s * f, calm_s=self.calm_s * f, rise_s=self.rise_s * f,
                       hold_s=self.hold_s * f, decay_tau_s=self.decay_tau_s * f)  # fmt: skip


def rate_at(shape: SurgeShape, t: float) -> float:
    """Arrival rate (requests/s) of the surge at ``t`` seconds."""
    b, p = shape.base_rps, shape.peak_rps
    if t < shape.calm_s:
        return b
    x = t - shape.calm_s
    if x < shape.rise_s:
        return b + (p - b) * x / shape.rise_s
    x -= shape.rise_s
    if x < shape.hold_s:
        return p
    x -= shape.hold_s
    if shape.decay_tau_s <= 0:
        return b
    return b + (p - b) * math.exp(-x / shape.decay_tau_s)


def generate_surge(shape: SurgeShape | None = None, *, seed: int = 0) -> list[TraceRequest]:
    """Draw the surge as a list of requests sorted by time (deterministic for a seed)."""
    shape = shape or SurgeShape()
    shape.validate()
    rng = random.Random(seed)
    rmax = max(shape.base_rps, shape.peak_rps)
    out: list[TraceRequest] = []
    if rmax <= 0:
        return out
    t = 0.0
    mu_in, mu_out = math.log(shape.input_tokens_median), math.log(shape.output_tokens_median)
    while True:
        t += rng.expovariate(rmax)
        if t >= shape.duration_s:
            break
        # Draw tokens for every candidate so the token stream does not depend on the thinning.
        n_in = int(round(rng.lognormvariate(mu_in, shape.input_tokens_sigma)))
        n_out = int(round(rng.lognormvariate(mu_out, shape.output_tokens_sigma)))
        if rng.random() * rmax < rate_at(shape, t):
            out.append(TraceRequest(round(t, 6), min(max(n_in, 1), shape.input_tokens_max),
                                    min(max(n_out, 1), shape.output_tokens_max)))  # fmt: skip
    return out


def read_trace(
    path: str | os.PathLike[str], *, speedup: float = 1.0, duration_s: float | None = None
) -> list[TraceRequest]:
    """Read a ``timestamp_s,input_tokens,output_tokens[,hash_ids]`` CSV (``.gz`` too).

    Timestamps are divided by ``speedup``; with ``duration_s`` only requests
    arriving before that many (sped-up) seconds are kept. Rows are sorted by time.
    """
    if not speedup > 0:
        raise TraceError(f"speedup must be > 0, got {speedup!r}")
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise TraceError(f"trace file {p!r} does not exist")
    out: list[TraceRequest] = []
    with _open_text(p) as fh:
        rd = csv.reader(fh)
        header = next(rd, None)
        cols = tuple(c.strip().lstrip("\ufeff") for c in header) if header is not None else ()
        if cols not in (HEADER, (*HEADER, HASH_COLUMN)):
            raise TraceError(f"trace file {p!r}: header is {header!r}, expected {','.join(HEADER)!r} "
                             f"(optionally followed by {HASH_COLUMN!r})")
        with_ids = len(cols) == 4
        for lineno, row in enumerate(rd, start=2):
            if not row:
                continue
            try:
                ts, a, b = float(row[0]) / speedup, int(float(row[1])), int(float(row[2]))
            except (ValueError, IndexError):
                raise TraceError(f"trace file {p!r} line {lineno}: bad row {row!r}") from None
            if not (math.isfinite(ts) and ts >= 0 and a >= 0 and b >= 0):
                raise TraceError(f"trace file {p!r} line {lineno}: values must be finite and >= 0")
            if duration_s is not None and ts >= duration_s:
                continue
            ids = _parse_ids(p, lineno, row[3]) if with_ids and len(row) > 3 else ()
            out.append(TraceRequest(ts, a, b, ids))
    out.sort(key=lambda r: r.timestamp_s)
    return out


def write_trace(path: str | os.PathLike[str], rows: Iterable[TraceRequest]) -> None:
    """Write rows as a trace CSV; with a ``hash_ids`` column when any row carries block ids."""
    rows = list(rows)
    with_ids = any(r.hash_ids for r in rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow((*HEADER, HASH_COLUMN) if with_ids else HEADER)
        for r in rows:
            row: list[object] = [f"{r.timestamp_s:.6f}", r.input_tokens, r.output_tokens]
            if with_ids:
                row.append(" ".join(map(str, r.hash_ids)))
            w.writerow(row)


def as_requests(trace: Any) -> Sequence[TraceRequest]:
    """Accept a list of :class:`TraceRequest` or any object with ``t``/``input_tokens``/``output_tokens``
    columns (e.g. the simulator's ``Trace``)."""
    if hasattr(trace, "t") and hasattr(trace, "input_tokens") and hasattr(trace, "output_tokens"):
        ids = getattr(trace, "hash_ids", None) or [()] * len(trace.t)
        return [
            TraceRequest(float(t), int(a), int(b), tuple(h))
            for t, a, b, h in zip(trace.t, trace.input_tokens, trace.output_tokens, ids, strict=True)
        ]
    return list(trace)





@dataclass(frozen=True)
class Trace:
    name: str
    #: Arrival times in seconds from the start, non-decreasing, float64.
    t: np.ndarray
    #: Prompt tokens per request, int64 >= 0.
    input_tokens: np.ndarray
    #: Generated tokens per request, int64 >= 0.
    output_tokens: np.ndarray
    #: Per request, the prefix-chained ids of its prompt's ``BLOCK_TOKENS``-token blocks; None when the
    #: trace carries no prefix information (the simulator then models no prefix cache).
    hash_ids: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.t)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise TraceError(f"trace {self.name!r}: columns have different lengths")
        if self.hash_ids is not None and len(self.hash_ids) != n:
            raise TraceError(f"trace {self.name!r}: hash_ids has {len(self.hash_ids)} rows, expected {n}")
        if n and np.any(np.diff(self.t) < 0):
            raise TraceError(f"trace {self.name!r}: timestamps are not sorted")

    def __len__(self) -> int:
        return len(self.t)

    @property
    def duration_s(self) -> float:
        return float(self.t[-1]) if len(self.t) else 0.0

    def sped_up(self, speedup: float) -> Trace:
        """The same requests with the time axis divided by ``speedup`` (``> 1`` makes a surge)."""
        if not speedup > 0:
            raise TraceError(f"speedup must be > 0, got {speedup!r}")
        if speedup == 1:
            return self
        return Trace(f"{self.name}@x{speedup:g}", self.t / speedup, self.input_tokens, self.output_tokens,
                     self.hash_ids)

    def window(self, start_s: float, end_s: float) -> Trace:
        """The requests arriving in ``[start_s, end_s)``, times shifted so that ``start_s`` is 0."""
        lo = int(np.searchsorted(self.t, start_s, side="left"))
        hi = int(np.searchsorted(self.t, end_s, side="left"))
        ids = self.hash_ids[lo:hi] if self.hash_ids is not None else None
        return Trace(f"{self.name}[{start_s:g},{end_s:g})", self.t[lo:hi] - start_s, self.input_tokens[lo:hi],
                     self.output_tokens[lo:hi], ids)

    def without_hash_ids(self) -> Trace:
        """The same requests with no prefix information."""
        return Trace(self.name, self.t, self.input_tokens, self.output_tokens)


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a trace CSV (or ``.csv.gz``), with or without a ``hash_ids`` column.

    Raises :class:`TraceError` for a missing file, a wrong header or bad rows.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise TraceError(f"trace file {p!r} does not exist")
    try:
        with _open_text(p) as fh:
            header = fh.readline().strip().lstrip("\ufeff")
            cols = tuple(c.strip() for c in header.split(","))
            if cols == (*HEADER, HASH_COLUMN):
                return _load_with_ids(p, fh)
            if cols != HEADER:
                raise TraceError(f"trace file {p!r}: header is {header!r}, expected {','.join(HEADER)!r} "
                                 f"(optionally followed by {HASH_COLUMN!r})")
            try:
                data = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
            except ValueError as e:
                raise TraceError(f"trace file {p!r}: unreadable row ({e})") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise TraceError(f"trace file {p!r}: cannot read ({e})") from None
    if data.size == 0:
        raise TraceError(f"trace file {p!r} has no requests")
    if data.shape[1] != 3:
        raise TraceError(f"trace file {p!r}: expected 3 columns, got {data.shape[1]}")
    if not np.all(np.isfinite(data)) or np.any(data < 0):
        raise TraceError(f"trace file {p!r}: values must be finite and >= 0")
    t = data[:, 0]
    order = np.argsort(t, kind="stable")
    return Trace(_trace_name(p), t[order], data[order, 1].astype(np.int64), data[order, 2].astype(np.int64))


def _trace_name(p: str) -> str:
    base = os.path.basename(p)
    if base.endswith(".gz"):
        base = base[:-3]
    return os.path.splitext(base)[0]


def _load_with_ids(p: str, fh: Iterable[str]) -> Trace:
    ts: list[float] = []
    ins: list[int] = []
    outs: list[int] = []
    ids: list[tuple[int, ...]] = []
    for lineno, line in enumerate(fh, start=2):
        line = line.strip()
        if not line:
            continue
        parts = line.split(",", 3)
        try:
            t, a, b = float(parts[0]), int(float(parts[1])), int(float(parts[2]))
        except (ValueError, IndexError):
            raise TraceError(f"trace file {p!r} line {lineno}: bad row {line[:80]!r}") from None
        if not (math.isfinite(t) and t >= 0 and a >= 0 and b >= 0):
            raise TraceError(f"trace file {p!r} line {lineno}: values must be finite and >= 0")
        ts.append(t)
        ins.append(a)
        outs.append(b)
        ids.append(_parse_ids(p, lineno, parts[3]) if len(parts) > 3 else ())
    if not ts:
        raise TraceError(f"trace file {p!r} has no requests")
    t_arr = np.array(ts, dtype=np.float64)
    order = np.argsort(t_arr, kind="stable")
    return Trace(_trace_name(p), t_arr[order], np.array(ins, dtype=np.int64)[order],
                 np.array(outs, dtype=np.int64)[order], tuple(ids[k] for k in order.tolist()))


@dataclass(frozen=True)
class SharedPrefixShape:
    """A generated shared-prefix workload: groups of long prefixes (system prompts, documents) with short questions.

    Each request picks a group with Zipf popularity (``P(group k) ∝ 1 / (k + 1) ** zipf_s``; 0 = uniform),
    sends that group's ``prefix_blocks`` × ``BLOCK_TOKENS`` prefix followed by a fresh question of
    about ``question_tokens`` tokens (uniform in ±50 %), and asks for about ``output_tokens``. Arrivals
    are Poisson at ``rate_rps`` for ``duration_s``.
    """

    groups: int = 64
    prefix_blocks: int = 8
    zipf_s: float = 1.0
    question_tokens: int = 256
    output_tokens: int = 128
    rate_rps: float = 10.0
    duration_s: float = 600.0

    def validate(self) -> None:
        for name in ("groups", "prefix_blocks", "question_tokens", "output_tokens"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"SharedPrefixShape.{name} must be an integer >= 1, got {v!r}")
        for name in ("zipf_s", "rate_rps", "duration_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"SharedPrefixShape.{name} must be a finite number >= 0, got {v!r}")
        if not self.rate_rps > 0 or not self.duration_s > 0:
            raise ValueError(f"SharedPrefixShape.rate_rps and duration_s must be > 0, got "
                             f"{self.rate_rps!r} and {self.duration_s!r}")


def shared_prefix(shape: SharedPrefixShape | None = None, *, seed: int = 0, name: str | None = None) -> Trace:
    """Generate a :class:`SharedPrefixShape` workload as a :class:`Trace` with ``hash_ids`` (deterministic for a seed).

    Group ``g``'s prefix blocks have ids ``g * prefix_blocks + j``; question blocks get fresh ids above
    all prefix ids, so equal ids mean equal prefixes, as in Mooncake.
    """
    sh = shape or SharedPrefixShape()
    sh.validate()
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(sh.rate_rps * sh.duration_s))
    t = np.sort(rng.uniform(0.0, sh.duration_s, n))
    w = 1.0 / np.arange(1, sh.groups + 1, dtype=np.float64) ** sh.zipf_s
    # a random popularity order, so that group ids carry no rank
    grp = rng.permutation(sh.groups)[rng.choice(sh.groups, size=n, p=w / w.sum())]
    q = rng.integers(max(1, sh.question_tokens // 2), sh.question_tokens * 3 // 2 + 1, n)
    o = rng.integers(max(1, sh.output_tokens // 2), sh.output_tokens * 3 // 2 + 1, n)
    pb = sh.prefix_blocks
    inp = pb * BLOCK_TOKENS + q
    next_id = sh.groups * pb
    ids: list[tuple[int, ...]] = []
    for k in range(n):
        g = int(grp[k])
        nq = -(-int(q[k]) // BLOCK_TOKENS)
        ids.append(tuple(range(g * pb, (g + 1) * pb)) + tuple(range(next_id, next_id + nq)))
        next_id += nq
    label = name or f"shared_prefix_g{sh.groups}_p{pb}_z{sh.zipf_s:g}_r{sh.rate_rps:g}"
    return Trace(label, t, inp.astype(np.int64), o.astype(np.int64), tuple(ids))


def synthetic(
    rate_fn,
    duration_s: float,
    *,
    seed: int = 0,
    input_tokens: int | tuple[int, int] = 1024,
    output_tokens: int | tuple[int, int] = 64,
    name: str = "synthetic",
) -> Trace:
    """A Poisson trace whose rate (requests/s) at time ``t`` is ``rate_fn(t)`` (thinning).

    Token counts are constants, or drawn uniformly from ``(lo, hi)`` inclusive.
    """
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, duration_s, 1001)
    rmax = max(float(max(rate_fn(x) for x in grid)), 1e-9)
    n_cand = rng.poisson(rmax * duration_s)
    cand = np.sort(rng.uniform(0.0, duration_s, n_cand))
    keep = rng.uniform(0.0, rmax, n_cand) < np.array([rate_fn(x) for x in cand])
    t = cand[keep]

    def tokens(spec: int | tuple[int, int]) -> np.ndarray:
        if isinstance(spec, tuple):
            return rng.integers(spec[0], spec[1] + 1, len(t)).astype(np.int64)
        return np.full(len(t), int(spec), dtype=np.int64)

    return Trace(name, t, tokens(input_tokens), tokens(output_tokens))


def surge(
    base_rps: float,
    peak_rps: float,
    *,
    duration_s: float = 600.0,
    ramp_start_s: float = 200.0,
    ramp_s: float = 60.0,
    hold_s: float = 180.0,
    seed: int = 0,
    input_tokens: int | tuple[int, int] = 1024,
    output_tokens: int | tuple[int, int] = 64,
) -> Trace:
    """A steady load that ramps linearly to ``peak_rps``, holds, and ramps back down."""

    def rate(t: float) -> float:
        if t < ramp_start_s:
            return base_rps
        x = t - ramp_start_s
        if x < ramp_s:
            return base_rps + (peak_rps - base_rps) * x / ramp_s
        x -= ramp_s
        if x < hold_s:
            return peak_rps
        x -= hold_s
        if x < ramp_s:
            return peak_rps - (peak_rps - base_rps) * x / ramp_s
        return base_rps

    return synthetic(
        rate, duration_s, seed=seed, input_tokens=input_tokens, output_tokens=output_tokens, name="surge"
    )
