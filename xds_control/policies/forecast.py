"""Demand forecasting for the predictive policies: bucketing and damped Holt smoothing.

Contract: pure numpy functions; no state of their own.

Why damped Holt (double exponential smoothing with a damped trend, Gardner & McKenzie 1985):

* The seed forecasts from 10-20 minutes of history. That window holds ramps and bursts but not a
  season: inference traffic is diurnal/weekly, so a seasonal model (Holt-Winters) would need hours
  of history to fit even one period; within 15 minutes a level + trend model is what the data
  can support. (Seasonality is better fed in as a scheduled floor, as AIBrix does.)
* A trend term is what lets us provision *before* a ramp peaks (one replica start-up ahead);
  damping (phi < 1) keeps a short ramp from being extrapolated into a runaway scale-up.
* It is O(n) over ~90 buckets, deterministic, and explainable in one sentence (level, trend,
  residual), unlike ARIMA fits or learned models.

Optional seasonality (:func:`holt_winters`, additive, damped trend): off by default, for the one
case a 15-minute window *can* hold several periods: short cycles such as batch jobs or cron-driven
clients firing every few minutes. It needs two full seasons of history and otherwise falls back to
plain damped Holt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["bucketize", "HoltFit", "holt_damped", "holt_winters", "forecast_peak"]


def bucketize(times: np.ndarray, values: np.ndarray, now: float, bucket_s: float, history_s: float) -> np.ndarray:
    """Mean of ``values`` per ``bucket_s`` bucket ending at ``now``, oldest first.

    Only buckets from the first one holding data are returned; empty buckets in between are
    forward-filled from the previous bucket. Observations older than ``history_s`` are ignored.
    """
    if times.size == 0:
        return np.empty(0)
    nb = max(1, int(math.ceil(history_s / bucket_s)))
    age = now - times
    ok = (age >= 0) & (age < nb * bucket_s) & ~np.isnan(values)
    if not ok.any():
        return np.empty(0)
    b = np.floor(age[ok] / bucket_s).astype(np.int64)  # 0 = most recent
    sums = np.bincount(b, weights=values[ok], minlength=nb)
    counts = np.bincount(b, minlength=nb)
    oldest = int(b.max())
    sums, counts = sums[: oldest + 1][::-1], counts[: oldest + 1][::-1]
    out = np.empty(oldest + 1)
    last = math.nan
    for i in range(oldest + 1):  # <= history_s / bucket_s iterations (~90)
        if counts[i]:
            last = sums[i] / counts[i]
        out[i] = last
    return out


@dataclass(frozen=True, slots=True)
class HoltFit:
    level: float
    trend: float
    #: Root-mean-square one-step-ahead error over the fitted series (0 with < 3 points).
    rmse: float
    n: int
    phi: float
    #: Additive seasonal offsets (one per bucket of the season), or None without seasonality.
    season: tuple[float, ...] | None = None

    def at(self, steps: int) -> float:
        """Forecast ``steps`` buckets ahead: level + trend * sum_{i=1..steps} phi^i (+ season offset)."""
        if steps <= 0:
            return self.level
        s = float(steps) if self.phi == 1.0 else self.phi * (1 - self.phi**steps) / (1 - self.phi)
        out = self.level + self.trend * s
        if self.season:
            out += self.season[(self.n - 1 + steps) % len(self.season)]
        return out


def holt_damped(y: np.ndarray, alpha: float, beta: float, phi: float) -> HoltFit:
    """Fit damped Holt to ``y`` (oldest first). Initial level y[0], initial trend y[1] - y[0]."""
    n = int(y.size)
    if n == 0:
        return HoltFit(math.nan, 0.0, 0.0, 0, phi)
    level = float(y[0])
    trend = float(y[1] - y[0]) if n > 1 else 0.0
    sq = 0.0
    cnt = 0
    for i in range(1, n):
        pred = level + phi * trend
        err = float(y[i]) - pred
        if i >= 2:  # the first step only seeds the trend
            sq += err * err
            cnt += 1
        new_level = alpha * float(y[i]) + (1 - alpha) * pred
        trend = beta * (new_level - level) + (1 - beta) * phi * trend
        level = new_level
    return HoltFit(level, trend, math.sqrt(sq / cnt) if cnt else 0.0, n, phi)


def holt_winters(y: np.ndarray, alpha: float, beta: float, gamma: float, phi: float, m: int) -> HoltFit:
    """Additive Holt-Winters with damped trend, season of ``m`` buckets; plain Holt below 2 seasons."""
    n = int(y.size)
    if m < 2 or n < 2 * m:
        return holt_damped(y, alpha, beta, phi)
    first, second = y[:m], y[m : 2 * m]
    level = float(first.mean())
    trend = float(second.mean() - first.mean()) / m
    season = [float(v) - level for v in first]
    sq = 0.0
    cnt = 0
    for i in range(m, n):
        si = i % m
        prev = level + phi * trend
        err = float(y[i]) - (prev + season[si])
        sq += err * err
        cnt += 1
        new_level = alpha * (float(y[i]) - season[si]) + (1 - alpha) * prev
        trend = beta * (new_level - level) + (1 - beta) * phi * trend
        season[si] = gamma * (float(y[i]) - new_level) + (1 - gamma) * season[si]
        level = new_level
    return HoltFit(level, trend, math.sqrt(sq / cnt) if cnt else 0.0, n, phi, tuple(season))


def forecast_peak(fit: HoltFit, steps: int) -> float:
    """Largest forecast over 1..steps buckets ahead (without a season it is monotone: an endpoint)."""
    if fit.season:
        return max(fit.at(k) for k in range(1, max(1, steps) + 1))
    return max(fit.at(1), fit.at(max(1, steps)))
