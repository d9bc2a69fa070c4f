"""Integer endpoint weights from headroom: capped proportional allocation + largest-remainder rounding.

Contract (pure, vectorized, inputs never mutated):

* :func:`capped_allocation` solves ``w = clip(lam * h, lo, hi)`` with ``sum(w) == total`` (the
  water-filling problem) for ``h > 0``; requires ``n*lo <= total <= n*hi``.
* :func:`largest_remainder` rounds non-negative reals to integers with a prescribed integer sum,
  moving each value by less than 1 (floors, then +1 to the largest fractional parts).
  Values that are already integers never move, so an integer upper bound is never exceeded.
* :func:`headroom` is ``max(0, saturation - L) + floor``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["headroom", "capped_allocation", "largest_remainder"]


def headroom(load: np.ndarray, saturation: float, floor: float) -> np.ndarray:
    return np.maximum(saturation - load, 0.0) + floor


def capped_allocation(h: np.ndarray, total: float, lo: float, hi: float, iters: int = 60) -> np.ndarray:
    n = h.size
    if n == 0:
        return np.empty(0)
    if not (n * lo - 1e-9 <= total <= n * hi + 1e-9):
        raise ValueError(f"infeasible allocation: total {total} outside [{n * lo}, {n * hi}]")
    hsum = float(h.sum())
    w = h * (total / hsum)
    if w.min() >= lo and w.max() <= hi:  # fast path: no bound binds
        return w
    if w.min() >= lo:
        # Only the cap binds (the usual case): water-fill. Fix violators at hi, rescale the rest up;
        # rescaling only raises the free ones, so fixed ones stay valid. Each round fixes >= 1.
        capped = np.zeros(n, dtype=bool)
        for _ in range(n):
            capped |= w > hi
            free = ~capped
            rest = total - hi * np.count_nonzero(capped)
            hf = float(h[free].sum())
            w = np.where(capped, hi, h * (rest / hf) if hf > 0 else 0.0)
            if not (w[free] > hi).any():
                break
        if w.min() >= lo - 1e-12:
            return w
    # f(lam) = sum(clip(lam*h, lo, hi)) is non-decreasing: bisect, then solve the free set exactly.
    a, b = 0.0, hi / float(h.min())
    buf = np.empty(n)
    for _ in range(iters):
        mid = 0.5 * (a + b)
        np.multiply(h, mid, out=buf)
        np.clip(buf, lo, hi, out=buf)
        if buf.sum() < total:
            a = mid
        else:
            b = mid
    lam = 0.5 * (a + b)
    x = h * lam
    at_hi = x >= hi
    at_lo = (x <= lo) & ~at_hi
    free = ~(at_hi | at_lo)
    rest = total - hi * np.count_nonzero(at_hi) - lo * np.count_nonzero(at_lo)
    hf = float(h[free].sum())
    if hf > 0:
        lam = rest / hf
    out = np.clip(h * lam, lo, hi)
    return out


def largest_remainder(x: np.ndarray, total: int) -> np.ndarray:
    """Round ``x >= 0`` to int64 with ``sum == total`` (|total - sum(x)| must be < n)."""
    fl = np.floor(x + 1e-9)  # a value a hair under an integer counts as that integer (frac <= 0)
    out = fl.astype(np.int64)
    r = int(total - out.sum())
    frac = x - fl
    if r > 0:
        # the r largest fractional parts (argpartition: O(n); ties broken deterministically)
        idx = np.argpartition(-frac, r - 1)[:r] if r < out.size else np.arange(out.size)
        out[idx] += 1
    elif r < 0:  # float fuzz only: undo the roundings-up that had the least support
        idx = np.argsort(frac, kind="stable")[:-r]
        out[idx] -= 1
    return out
