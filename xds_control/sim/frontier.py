"""Cost frontiers: each policy's main knob swept, GPU-hours against SLO attainment (``evaluate --frontier``).

One setting per policy is one point, not a comparison: a cheaper, slower policy and a dearer, faster one are
both "better". The frontier of a policy is its (GPU-hours, SLO attainment) points over a sweep of its main knob,
and the headline figure is :func:`gpu_hours_at` the attainment target: the GPU-hours the policy needs to reach it.

Knobs (:data:`KNOBS`; every point's spec is the shipped preset with the knob merged in by
:func:`xds_control.config.policy.merge_overrides` and validated by :func:`xds_control.policies.load_policy_spec`;
an invalid combination is skipped and reported with the validator's reason):

==============  ==========================  ======================================================
policy          knob                        default values
==============  ==========================  ======================================================
threshold       ``l_high``                  0.3 ... 2.0 (``l_low`` kept at the preset's ratio to it)
predictive      ``target_utilization``      0.3 ... 1.25
comprehensive   ``target_utilization``      0.3 ... 1.25
hpa             ``metrics[0].target``       0.3 ... 1.0 for a utilisation signal, else preset x 1/8 ... 4
kpa             ``target``                  2 ... 256 (concurrency per replica)
apa             ``target``                  0.1 ... 0.85 for a fraction metric (kv_cache), else preset x 1/8 ... 4
sla             ``target_utilization``      0.4 ... 1.2 (of the profiled capacity)
fixed           replicas                    1 ... max(8, 2 x peak 60 s offered load); while attainment is
                                            below the target and still rising at the largest size, up to
                                            twice more: 4 sizes up to 2 x the largest
==============  ==========================  ======================================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import yaml

from xds_control.config.policy import merge_overrides, preset_path, resolve_policy
from xds_control.core.errors import SpecError
from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import Trace
from xds_control.policies import PolicySpec, ThresholdSpec, load_policy_spec
from xds_control.policies.apa import ApaSpec
from xds_control.policies.hpa import HpaSpec
from xds_control.sim.controller import Controller, FixedController, FleetInfo
from xds_control.sim.engine import PREROLL_S, SimConfig, preroll_for, simulate
from xds_control.sim.metrics import DEFAULT_SLO, Slo, compute_metrics
from xds_control.sim.policies import TICK_S, make_controller

__all__ = [
    "KNOBS",
    "UTIL_GRID",
    "THRESHOLD_GRID",
    "KPA_GRID",
    "APA_FRACTION_GRID",
    "SLA_GRID",
    "SUBJECT",
    "Frontier",
    "FrontierRun",
    "SizedFixed",
    "default_values",
    "fixed_sizes",
    "gpu_hours_at",
    "point_spec",
    "run_frontiers",
    "summarize",
]

#: The knob swept for each policy (by the base name of a ``NAME@rr`` / ``NAME@lr`` entry).
KNOBS: Mapping[str, str] = {
    "threshold": "l_high",
    "predictive": "target_utilization",
    "comprehensive": "target_utilization",
    "hpa": "metrics[0].target",
    "kpa": "target",
    "apa": "target",
    "sla": "target_utilization",
    "fixed": "replicas",
}
UTIL_GRID: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Predictive and comprehensive demand is in replica-equivalents at the cost model's reference batch (32), and a
#: replica meets a 100 ms TPOT far above it (batch ~190), so their target may pass 1: swept up to 1.25.
DEMAND_GRID: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25)
#: The load index is not a utilisation: its latency term passes 1 with any prompt longer than the latency
#: target, so ``l_high`` is swept up to its maximum (2).
THRESHOLD_GRID: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.6, 2.0)
KPA_GRID: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
#: APA's default metric is the KV-cache fraction (target 0.5 in the preset).
APA_FRACTION_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85)
#: The SLA planner's fraction of the profiled capacity may exceed 1 (a conservative profile).
SLA_GRID: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)
_HPA_FACTORS: tuple[float, ...] = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
_FRACTION_SIGNALS = frozenset({"cpu_util", "gpu_util", "gpu_mem", "kv_cache", "load"})
#: The method under evaluation; every other swept policy is a baseline.
SUBJECT = "comprehensive"
#: Fixed-fleet sweep: points of the first round, and how many times it may extend past its largest size
#: (4 more sizes, 1.25 ... 2 x the largest, each time).
FIXED_POINTS = 8
FIXED_EXTENSIONS = 2


class SizedFixed(FixedController):
    """A fixed fleet of exactly ``size`` replicas (round robin unless ``lb`` says otherwise), never scaling."""

    def __init__(self, size: int, **kw: Any) -> None:
        if int(size) != size or size < 1:
            raise ValueError(f"fixed fleet size must be an integer >= 1, got {size!r}")
        super().__init__(**kw)
        self.size = int(size)

    def initial_replicas(self, info: FleetInfo) -> int:
        return self.size


def _base(entry: str) -> str:
    return entry.partition("@")[0]


def _preset_data(name: str) -> dict[str, Any]:
    path = preset_path(name)
    data = yaml.safe_load(path.read_text()) if path is not None else None
    return dict(data) if isinstance(data, Mapping) else {"policy": name}


def _knob_override(name: str, value: float, base: Mapping[str, Any]) -> dict[str, Any]:
    if name == "threshold":
        spec = load_policy_spec(base)
        assert isinstance(spec, ThresholdSpec)
        ratio = spec.l_low / spec.l_high
        return {"l_high": value, "l_low": round(value * ratio, 6)}
    if name in ("predictive", "comprehensive", "sla"):
        return {"target_utilization": value}
    if name == "hpa":
        metrics = base.get("metrics")
        if not metrics:
            metrics = resolve_policy("hpa").model_dump(mode="json")["metrics"]
        first = dict(metrics[0])
        first["target"] = value
        return {"metrics": [first, *metrics[1:]]}
    if name in ("kpa", "apa"):
        return {"target": value}
    raise ValueError(f"no knob to sweep for policy {name!r}; known: {', '.join(KNOBS)}")


def point_spec(name: str, value: float, base: Mapping[str, Any] | None = None) -> PolicySpec:
    """The spec of one frontier point: the shipped preset ``name`` (or ``base``) with its knob at ``value``.

    Raises :class:`~xds_control.core.errors.SpecError` (a ValueError) naming the key when the combination is invalid.
    """
    data = dict(base) if base is not None else _preset_data(name)
    return load_policy_spec(merge_overrides(data, _knob_override(name, value, data)))


def default_values(name: str) -> tuple[float, ...]:
    """The default sweep of policy ``name``'s knob (not for ``fixed``: see :func:`fixed_sizes`)."""
    if name == "threshold":
        return THRESHOLD_GRID
    if name in ("predictive", "comprehensive"):
        return DEMAND_GRID
    if name == "kpa":
        return KPA_GRID
    if name == "sla":
        return SLA_GRID
    if name == "hpa":
        m0 = cast(HpaSpec, resolve_policy("hpa")).metrics[0]
        if m0.signal in _FRACTION_SIGNALS:
            return UTIL_GRID
        return tuple(float(f"{m0.target * f:.6g}") for f in _HPA_FACTORS)
    if name == "apa":
        apa = cast(ApaSpec, resolve_policy("apa"))
        if apa.metric in _FRACTION_SIGNALS:
            return APA_FRACTION_GRID
        return tuple(float(f"{apa.target * f:.6g}") for f in _HPA_FACTORS)
    raise ValueError(f"no knob to sweep for policy {name!r}; known: {', '.join(KNOBS)}")


def fixed_sizes(trace: Trace, profile: cm.ReplicaProfile = cm.DEFAULT_PROFILE, points: int = FIXED_POINTS) -> list[int]:
    """Fixed-fleet sizes from 1 to ``max(points, ceil(2 x peak offered load))``, the peak over 60 s windows
    of arrivals in replica-equivalents (cost-model work per second); about ``points`` sizes, evenly spread."""
    peak = 0.0
    if len(trace.t):
        work = np.asarray(cm.request_work_s(profile, trace.input_tokens.astype(np.float64),
                                            trace.output_tokens.astype(np.float64)))
        cum = np.concatenate(([0.0], np.cumsum(work)))
        ends = np.arange(60.0, max(trace.duration_s, 60.0) + 1.0, 1.0)
        hi = np.searchsorted(trace.t, ends, side="right")
        lo = np.searchsorted(trace.t, ends - 60.0, side="right")
        peak = float(np.max((cum[hi] - cum[lo]) / 60.0))
    upper = max(points, math.ceil(2.0 * peak))
    return sorted({int(round(x)) for x in np.linspace(1, upper, points)})


def gpu_hours_at(points: Sequence[Mapping[str, Any]], level: float) -> float | None:
    """GPU-hours needed to reach attainment ``level`` on a frontier (points with ``gpu_hours``, ``slo_attainment``).

    The cheapest point at or above ``level`` (hi) and, among the points no dearer than it, the most attaining
    point below ``level`` (lo; the cheaper on ties): linear interpolation between them. hi's GPU-hours when no
    point is below it; None when no point reaches ``level``.
    """
    pts = [(float(p["gpu_hours"]), float(p["slo_attainment"])) for p in points]
    above = [p for p in pts if p[1] >= level - 1e-12]
    if not above:
        return None
    hg, ha = min(above, key=lambda p: (p[0], -p[1]))
    below = [p for p in pts if p[1] < level - 1e-12 and p[0] <= hg]
    if not below or ha <= level + 1e-12:
        return round(hg, 4)
    lg, la = max(below, key=lambda p: (p[1], -p[0]))
    return round(lg + (level - la) * (hg - lg) / (ha - la), 4)


@dataclass
class Frontier:
    """One policy's sweep."""

    policy: str
    knob: str
    #: ``{"value", "gpu_hours", "slo_attainment"}`` per point, sorted by GPU-hours.
    points: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"value", "reason"}`` per knob value whose spec did not validate.
    skipped: list[dict[str, Any]] = field(default_factory=list)
    gpu_hours_at_slo: float | None = None
    best_attainment: float | None = None
    #: Set when no policy reaches the target (see :attr:`FrontierRun.summary`).
    gpu_hours_at_common_attainment: float | None = None
    #: The attainment target ``gpu_hours_at_slo`` is for.
    attainment: float = 0.99

    def to_json(self, common: bool) -> dict[str, Any]:
        d: dict[str, Any] = {
            "knob": self.knob, "frontier": self.points, "gpu_hours_at_slo": self.gpu_hours_at_slo,
            "best_attainment": self.best_attainment,
        }
        if self.gpu_hours_at_slo is not None:
            # the cheapest point already meets the target: the sweep does not bracket it from below
            d["gpu_hours_at_slo_is_upper_bound"] = bool(self.points[0]["slo_attainment"] > self.attainment)
        if common:
            d["gpu_hours_at_common_attainment"] = self.gpu_hours_at_common_attainment
        if self.skipped:
            d["skipped"] = self.skipped
        return d


@dataclass
class FrontierRun:
    trace: str
    attainment: float
    frontiers: dict[str, Frontier]
    summary: dict[str, Any]
    runs: int

    def policies_json(self) -> dict[str, dict[str, Any]]:
        common = self.summary.get("common_attainment") is not None
        return {k: f.to_json(common) for k, f in self.frontiers.items()}


# --- the runs (in worker processes when there are several)

_CTX: dict[str, Any] = {}


def _init(trace: Trace, cfg: SimConfig, slo: Slo, tick_s: float) -> None:
    _CTX.update(trace=trace, cfg=cfg, slo=slo, tick_s=tick_s)


def _controller(entry: str, spec: PolicySpec | None, size: int | None, tick_s: float) -> Controller:
    if size is not None:
        fixed = make_controller(entry)
        return SizedFixed(size, target_util=fixed.target_util, lb=fixed.lb, name=entry)
    return make_controller(entry, spec=spec, tick_s=tick_s)


def _run(job: tuple[int, str, PolicySpec | None, int | None]) -> tuple[int, float, float]:
    k, entry, spec, size = job
    res = simulate(_CTX["trace"], _controller(entry, spec, size, _CTX["tick_s"]), _CTX["cfg"])
    m = compute_metrics(res, _CTX["slo"])
    return k, float(m["gpu_hours"]), float(m["slo_attainment"])


def _run_all(jobs: list[tuple[int, str, PolicySpec | None, int | None]], workers: int,
             init: tuple[Trace, SimConfig, Slo, float]) -> dict[int, tuple[float, float]]:
    out: dict[int, tuple[float, float]] = {}
    if workers <= 1 or len(jobs) < 2:
        _init(*init)
        for j in jobs:
            k, g, a = _run(j)
            out[k] = (g, a)
        return out
    # Longest first (many replicas, low targets) keeps both workers busy to the end.
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), initializer=_init, initargs=init) as ex:
        for k, g, a in ex.map(_run, jobs, chunksize=1):
            out[k] = (g, a)
    return out


def run_frontiers(
    trace: Trace,
    policies: Sequence[str],
    *,
    attainment: float = 0.99,
    speedup: float = 1.0,
    seed: int = 0,
    profile: cm.ReplicaProfile = cm.DEFAULT_PROFILE,
    slo: Slo = DEFAULT_SLO,
    failure_at: float | None = None,
    failure_scope: str = "replica",
    tick_s: float = TICK_S,
    values: Mapping[str, Sequence[float]] | None = None,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
    shed: tuple[float, int] | None = None,
    preroll_s: float = PREROLL_S,
) -> FrontierRun:
    """Sweep each policy's knob (``values[NAME]`` replaces the default grid) and build the frontiers.

    ``policies`` are ``NAME`` / ``NAME@rr`` / ``NAME@lr`` entries; ``workers`` processes (at most 2) run the
    simulations. Deterministic for ``seed`` whatever ``workers``. ``shed`` (``(backlog_s, attempts)``) gives every
    pool prefill-backlog shedding unless its policy's plan sets its own (``SimConfig.shed``). ``preroll_s``: the
    trace's first seconds replayed before it, not measured (``SimConfig.preroll_s``).
    """
    if not 0 < attainment <= 1:
        raise ValueError(f"attainment must be in (0, 1], got {attainment!r}")
    workers = max(1, min(int(workers), 2, os.cpu_count() or 1))
    tr = trace.sped_up(speedup)
    cfg = SimConfig(profile=profile, seed=seed, failure_at=failure_at, failure_scope=failure_scope, shed=shed,
                    preroll_s=preroll_for(tr, preroll_s))
    init = (tr, cfg, slo, tick_s)
    given = dict(values or {})
    frontiers: dict[str, Frontier] = {}
    jobs: list[tuple[int, str, PolicySpec | None, int | None]] = []
    job_of: dict[int, tuple[str, float]] = {}

    def add(entry: str, value: float, spec: PolicySpec | None, size: int | None) -> None:
        k = len(job_of)
        job_of[k] = (entry, value)
        jobs.append((k, entry, spec, size))

    for entry in policies:
        name = _base(entry)
        fr = frontiers[entry] = Frontier(policy=entry, knob=KNOBS.get(name, "-"))
        if name not in KNOBS:
            fr.skipped.append({"value": None, "reason": f"no knob to sweep for policy {name!r}; known: "
                                                        f"{', '.join(KNOBS)}"})
            continue
        if name == "fixed":
            for size in given.get(entry, given.get(name)) or fixed_sizes(tr, profile):
                if int(size) != size or size < 1:
                    fr.skipped.append({"value": size, "reason": "a fleet size must be an integer >= 1"})
                    continue
                add(entry, int(size), None, int(size))
            continue
        for v in given.get(entry, given.get(name)) or default_values(name):
            try:
                spec = point_spec(name, float(v))
            except SpecError as e:
                fr.skipped.append({"value": v, "reason": str(e).replace("\n", "; ")})
                continue
            add(entry, float(v), spec, None)

    results: dict[int, tuple[float, float]] = {}
    extended = dict.fromkeys(frontiers, 0)
    while jobs:
        if progress:
            progress(f"running {len(jobs)} simulations on {workers} process(es)")
        results.update(_run_all(sorted(jobs, key=_cost_guess, reverse=True), workers, init))
        jobs = []
        # the fixed fleet: extend past the largest size while attainment is below the target and still rising
        for entry in frontiers:
            if _base(entry) != "fixed" or entry in given or "fixed" in given or extended[entry] >= FIXED_EXTENSIONS:
                continue
            mine = sorted((v, results[k][1]) for k, (e, v) in job_of.items() if e == entry)
            if len(mine) < 2:
                continue
            (_, a1), (v2, a2) = mine[-2], mine[-1]
            if a2 < attainment and a2 > a1 + 1e-3:
                extended[entry] += 1
                top = int(v2)
                for size in sorted({max(top + i, round(top * (1 + 0.25 * i))) for i in range(1, 5)}):
                    add(entry, size, None, size)
    for k, (entry, value) in job_of.items():
        g, a = results[k]
        frontiers[entry].points.append({"value": value, "gpu_hours": g, "slo_attainment": a})
    for fr in frontiers.values():
        fr.points.sort(key=lambda p: (p["gpu_hours"], p["slo_attainment"]))
        fr.best_attainment = max((p["slo_attainment"] for p in fr.points), default=None)
        fr.gpu_hours_at_slo = gpu_hours_at(fr.points, attainment)
        fr.attainment = attainment
    summary = summarize(frontiers, attainment)
    return FrontierRun(trace=tr.name, attainment=attainment, frontiers=frontiers, summary=summary, runs=len(job_of))


def _cost_guess(job: tuple[int, str, PolicySpec | None, int | None]) -> float:
    """Rough relative run time (more replicas = longer): big fixed fleets and low targets first."""
    _, _, spec, size = job
    if size is not None:
        return float(size)
    v = getattr(spec, "target_utilization", None) or getattr(spec, "l_high", None) or 0.5
    return 1.0 / float(v)


def summarize(frontiers: Mapping[str, Frontier], attainment: float) -> dict[str, Any]:
    """The comparison: who reaches ``attainment``, the best baseline (every policy but :data:`SUBJECT`) and the
    subject's GPU-hours over its. When no policy reaches ``attainment``, every frontier is compared at the
    highest attainment the best baseline reaches (``common_attainment``; sets ``gpu_hours_at_common_attainment``).
    """
    reached = [k for k, f in frontiers.items() if f.gpu_hours_at_slo is not None]
    baselines = [k for k in frontiers if _base(k) != SUBJECT] or list(frontiers)
    s: dict[str, Any] = {"attainment_target": attainment, "reached_by": reached, "common_attainment": None,
                         "best_baseline": None, "best_baseline_gpu_hours": None}
    subj = next((k for k in frontiers if _base(k) == SUBJECT), None)
    if reached:
        at_slo = [k for k in baselines if frontiers[k].gpu_hours_at_slo is not None]
        if at_slo:
            best = min(at_slo, key=lambda k: frontiers[k].gpu_hours_at_slo or math.inf)
            s["best_baseline"], s["best_baseline_gpu_hours"] = best, frontiers[best].gpu_hours_at_slo
        s["note"] = f"compared at the attainment target {attainment:g}"
    elif frontiers:
        best = max(baselines, key=lambda k: frontiers[k].best_attainment or 0.0)
        level = frontiers[best].best_attainment or 0.0
        for f in frontiers.values():
            f.gpu_hours_at_common_attainment = gpu_hours_at(f.points, level)
        s["common_attainment"] = level
        s["best_baseline"] = best
        s["best_baseline_gpu_hours"] = frontiers[best].gpu_hours_at_common_attainment
        s["note"] = (f"no policy reaches attainment {attainment:g}; compared at {level:.4g}, the highest "
                     f"attainment the best baseline ({best}) reaches")
    if subj is not None and s["best_baseline_gpu_hours"]:
        mine = (frontiers[subj].gpu_hours_at_common_attainment if s["common_attainment"] is not None
                else frontiers[subj].gpu_hours_at_slo)
        s["subject"] = subj
        s["subject_vs_best_baseline"] = round(mine / s["best_baseline_gpu_hours"], 4) if mine is not None else None
    return s
