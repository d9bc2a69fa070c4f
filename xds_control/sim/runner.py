"""Run several policies over one trace and collect their metrics (used by the CLI and the bench).

:func:`evaluate` compares the shipped presets (``--policy``); :func:`evaluate_config` is the what-if replay of
a real serve config (``--config``): every autoscaled pool's resolved spec (preset or file + overrides) at the
config's ``controller.tick_s``, next to the ``--policy`` alternatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import Trace
from xds_control.sim.controller import LB_LEAST_REQUEST, LB_ROUND_ROBIN, Controller
from xds_control.sim.engine import PREROLL_S, SimConfig, SimResult, preroll_for, simulate
from xds_control.sim.metrics import DEFAULT_SLO, Slo, compute_metrics
from xds_control.sim.policies import make_controller

__all__ = ["Evaluation", "PoolWhatIf", "evaluate", "evaluate_config", "run_controllers"]


@dataclass
class Evaluation:
    trace: str
    speedup: float
    seed: int
    failure_at: float | None
    results: list[SimResult] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_controllers(
    trace: Trace,
    controllers: Sequence[Controller],
    *,
    speedup: float = 1.0,
    failure_at: float | None = None,
    failure_scope: str = "replica",
    seed: int = 0,
    profile: cm.ReplicaProfile = cm.DEFAULT_PROFILE,
    slo: Slo = DEFAULT_SLO,
    preroll_s: float = PREROLL_S,
) -> Evaluation:
    """Replay ``trace`` (sped up by ``speedup``) through each controller with the same seed; keyed by its name.

    ``preroll_s``: the trace's first seconds replayed before it, not measured (``SimConfig.preroll_s``).
    """
    tr = trace.sped_up(speedup)
    ev = Evaluation(trace=tr.name, speedup=speedup, seed=seed, failure_at=failure_at)
    cfg = SimConfig(profile=profile, seed=seed, failure_at=failure_at, failure_scope=failure_scope,
                    preroll_s=preroll_for(tr, preroll_s))
    for ctl in controllers:
        res = simulate(tr, ctl, cfg)
        ev.results.append(res)
        ev.metrics[ctl.name] = compute_metrics(res, slo)
    return ev


def evaluate(
    trace: Trace,
    policies: Sequence[str],
    *,
    speedup: float = 1.0,
    failure_at: float | None = None,
    failure_scope: str = "replica",
    seed: int = 0,
    profile: cm.ReplicaProfile = cm.DEFAULT_PROFILE,
    slo: Slo = DEFAULT_SLO,
    preroll_s: float = PREROLL_S,
) -> Evaluation:
    """Replay ``trace`` (sped up by ``speedup``) through each policy's shipped preset with the same seed.

    ``failure_at`` is in the sped-up time axis (seconds of simulated time).
    """
    return run_controllers(
        trace, [make_controller(name) for name in policies], speedup=speedup, failure_at=failure_at,
        failure_scope=failure_scope, seed=seed, profile=profile, slo=slo, preroll_s=preroll_s,
    )


@dataclass
class PoolWhatIf:
    """One autoscaled pool of a config replayed through the simulator, next to the alternatives."""

    service: str
    pool: str
    #: Column name of the pool's own run in :attr:`evaluation` (``SERVICE/POOL``).
    name: str
    #: Resolved policy: ``policy``, ``source`` (preset or file path), ``kind`` (preset / file), ``overrides``.
    resolved: dict[str, Any]
    lb: str
    profile: str
    cold_start_s: float
    evaluation: Evaluation
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service, "pool": self.pool, "name": self.name, **self.resolved, "lb": self.lb,
            "profile": self.profile, "cold_start_s": self.cold_start_s, "notes": list(self.notes),
            "policies": {k: dict(v) for k, v in self.evaluation.metrics.items()},
        }


def evaluate_config(
    config: Any,
    trace: Trace,
    alternatives: Sequence[str],
    *,
    speedup: float = 1.0,
    failure_at: float | None = None,
    failure_scope: str = "replica",
    seed: int = 0,
    profile: cm.ReplicaProfile | None = None,
    slo: Slo = DEFAULT_SLO,
    preroll_s: float = PREROLL_S,
) -> list[PoolWhatIf]:
    """For each autoscaled pool of ``config`` (a loaded :class:`xds_control.config.Config`): replay ``trace`` as
    that pool's traffic through its resolved spec (``pool.autoscale.spec``) at ``controller.tick_s``, and through
    each alternative (shipped presets at the same tick), on the pool's replica profile (``profile`` replaces it)
    with its ``load_delay_s`` as the cold start when set. The pool routes by its ``lb_policy`` (``random`` is
    simulated as round robin). An empty list when no pool is autoscaled.
    """
    tick_s = float(config.controller.tick_s)
    out: list[PoolWhatIf] = []
    for svc in config.services:
        for pool in svc.pools:
            auto = pool.autoscale
            if auto is None:
                continue
            notes: list[str] = []
            prof = profile or cm.get_profile(auto.replica.profile)
            if profile is None and auto.replica.load_delay_s is not None:
                prof = prof.with_(cold_start_s=float(auto.replica.load_delay_s))
            lb = LB_LEAST_REQUEST if pool.lb_policy == "least_request" else LB_ROUND_ROBIN
            if pool.lb_policy == "random":
                notes.append("lb_policy random is simulated as round robin (both ignore load)")
            if auto.initial_replicas is not None:
                notes.append("initial_replicas is not replayed: every run starts warm, sized for the trace's mean "
                             "load within the policy's bounds")
            spec = auto.spec
            rp = auto.resolved
            name = f"{svc.name}/{pool.name}"
            own = make_controller(f"{spec.policy}@{'lr' if lb == LB_LEAST_REQUEST else 'rr'}", spec=spec,
                                  tick_s=tick_s)
            own.name = name
            ctls: list[Controller] = [own, *(make_controller(alt, tick_s=tick_s) for alt in alternatives)]
            ev = run_controllers(trace, ctls, speedup=speedup, failure_at=failure_at, failure_scope=failure_scope,
                                 seed=seed, profile=prof, slo=slo, preroll_s=preroll_s)
            resolved = {"policy": spec.policy, "source": rp.source, "kind": rp.kind,
                        "overrides": dict(auto.overrides)}
            out.append(PoolWhatIf(service=svc.name, pool=pool.name, name=name, resolved=resolved, lb=lb,
                                  profile=prof.name, cold_start_s=prof.cold_start_s, evaluation=ev, notes=notes))
    return out
