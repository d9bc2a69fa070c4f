"""Run several policies over one trace and collect their metrics (used by the CLI and the bench)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import Trace
from xds_control.sim.engine import SimConfig, SimResult, simulate
from xds_control.sim.metrics import compute_metrics
from xds_control.sim.policies import make_controller

__all__ = ["Evaluation", "evaluate"]


@dataclass
class Evaluation:
    trace: str
    speedup: float
    seed: int
    failure_at: float | None
    results: list[SimResult] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def evaluate(
    trace: Trace,
    policies: Sequence[str],
    *,
    speedup: float = 1.0,
    failure_at: float | None = None,
    failure_scope: str = "replica",
    seed: int = 0,
    profile: cm.ReplicaProfile = cm.DEFAULT_PROFILE,
) -> Evaluation:
    """Replay ``trace`` (sped up by ``speedup``) through each policy with the same seed.

    ``failure_at`` is in the sped-up time axis (seconds of simulated time).
    """
    tr = trace.sped_up(speedup)
    ev = Evaluation(trace=tr.name, speedup=speedup, seed=seed, failure_at=failure_at)
    cfg = SimConfig(profile=profile, seed=seed, failure_at=failure_at, failure_scope=failure_scope)
    for name in policies:
        ctl = make_controller(name)
        res = simulate(tr, ctl, cfg)
        ev.results.append(res)
        ev.metrics[name] = compute_metrics(res)
    return ev
