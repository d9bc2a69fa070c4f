"""Request traces: loading the ``timestamp_s,input_tokens,output_tokens`` CSVs and making synthetic ones.

A :class:`Trace` is three aligned numpy arrays sorted by arrival time. Real traces live in
``../shared/traces`` (never copied into the repository); tests build synthetic ones with
:func:`synthetic` or :func:`surge`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["Trace", "TraceError", "HEADER", "load_trace", "synthetic", "surge"]

HEADER = ("timestamp_s", "input_tokens", "output_tokens")


class TraceError(ValueError):
    """The trace file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Trace:
    name: str
    #: Arrival times in seconds from the start, non-decreasing, float64.
    t: np.ndarray
    #: Prompt tokens per request, int64 >= 0.
    input_tokens: np.ndarray
    #: Generated tokens per request, int64 >= 0.
    output_tokens: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.t)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise TraceError(f"trace {self.name!r}: columns have different lengths")
        if n and np.any(np.diff(self.t) < 0):
            raise TraceError(f"trace {self.name!r}: timestamps are not sorted")

    def __len__(self) -> int:
        return len(self.t)

    @property
    def duration_s(self) -> float:
        return float(self.t[-1]) if len(self.t) else 0.0

    def sped_up(self, speedup: float) -> "Trace":
        """The same requests with the time axis divided by ``speedup`` (``> 1`` makes a surge)."""
        if not speedup > 0:
            raise TraceError(f"speedup must be > 0, got {speedup!r}")
        if speedup == 1:
            return self
        return Trace(f"{self.name}@x{speedup:g}", self.t / speedup, self.input_tokens, self.output_tokens)


def load_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a trace CSV. Raises :class:`TraceError` for a missing file, a wrong header or bad rows."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise TraceError(f"trace file {p!r} does not exist")
    with open(p, encoding="utf-8") as fh:
        header = fh.readline().strip().lstrip("\ufeff")
        cols = tuple(c.strip() for c in header.split(","))
        if cols != HEADER:
            raise TraceError(f"trace file {p!r}: header is {header!r}, expected {','.join(HEADER)!r}")
        try:
            data = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise TraceError(f"trace file {p!r}: unreadable row ({e})") from None
    if data.size == 0:
        raise TraceError(f"trace file {p!r} has no requests")
    if data.shape[1] != 3:
        raise TraceError(f"trace file {p!r}: expected 3 columns, got {data.shape[1]}")
    if not np.all(np.isfinite(data)) or np.any(data < 0):
        raise TraceError(f"trace file {p!r}: values must be finite and >= 0")
    t = data[:, 0]
    order = np.argsort(t, kind="stable")
    name = os.path.splitext(os.path.basename(p))[0]
    return Trace(name, t[order], data[order, 1].astype(np.int64), data[order, 2].astype(np.int64))


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
