"""Small pure helpers shared by the policies: reasons/explanations, bounds, action-rate windows."""

from __future__ import annotations

import math

import numpy as np

from xds_control.core.model import Reason, ServiceSignals
from xds_control.loadindex import LoadReport

__all__ = ["Notes", "clamp", "recent", "stale_note", "fmt"]


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


class Notes:
    """Accumulates structured reasons while a policy decides; renders the short explanation."""

    def __init__(self) -> None:
        self.reasons: list[Reason] = []

    def add(
        self,
        code: str,
        message: str,
        signal: str | None = None,
        value: float | None = None,
        threshold: float | None = None,
    ) -> None:
        self.reasons.append(Reason(code, message, signal, value, threshold))

    def codes(self) -> set[str]:
        return {r.code for r in self.reasons}

    def explanation(self, head: str) -> str:
        tail = "; ".join(r.message for r in self.reasons)
        return f"{head}: {tail}" if tail else head


def clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def recent(times: tuple[float, ...], now: float, window_s: float) -> tuple[float, ...]:
    """The entries of ``times`` less than ``window_s`` seconds before ``now``."""
    return tuple(t for t in times if now - t < window_s)


def stale_note(notes: Notes, signals: ServiceSignals, report: LoadReport, treated_as: str = "saturated") -> None:
    """Report stale or absent samples of ready endpoints (always, so silence never hides them)."""
    if report.n_stale_ready == 0:
        return
    ready_stale = np.flatnonzero(report.saturated & signals.frame.ready)
    keys = [signals.frame.keys[i] for i in ready_stale[:3]]
    more = "" if ready_stale.size <= 3 else f" +{ready_stale.size - 3} more"
    notes.add(
        "stale_as_" + treated_as.split()[0],
        f"{report.n_stale_ready}/{report.n_ready} ready endpoints had stale or no samples "
        f"({', '.join(keys)}{more}), counted as {treated_as}",
        signal="staleness",
        value=float(report.n_stale_ready),
    )
