"""Adapters from the real decision core (``xds_control.policies``, ``xds_control.planning``) to the
simulator's :class:`~xds_control.sim.controller.Controller` interface.

There is no simulator-only copy of any policy: :class:`CorePolicyController` turns a
:class:`~xds_control.sim.controller.FleetObservation` into the same
:class:`~xds_control.core.model.ServiceSignals` the live controller builds from scrapes, calls the
policy's pure ``decide(signals, state, spec, now)`` with simulated ``now``, keeps the returned
state, and applies ``Decision.target_replicas``. When ``xds_control.planning`` offers endpoint
weights, they are applied too (see :func:`_plan_weights`).

How simulated replicas become samples (one row per *ready* replica; starting replicas are
``pending_replicas``, draining ones are left out, as they are out of EDS):

==============  ===========================================================================
``gpu_util``    the cost model's utilisation averaged since the previous tick
``gpu_mem``     missing. vLLM preallocates ~90 % of GPU memory at start, so DCGM's FB_USED
                does not move with load; the KV-cache fraction carries memory pressure.
``cpu_util``    missing (the simulator has no CPU model); the load index renormalises.
``latency_s``   mean TTFT of the replica's requests that got their first token since the
                previous tick (missing if none)
``running``     requests in the batch; ``waiting``: in the replica's queue
``kv_cache``    reserved KV-cache fraction
``rps``         requests routed to the replica per second since the previous tick
``taken_at``    ``now`` (scrapes are fresh)
==============  ===========================================================================

Simulation presets (configuration, not code): each policy runs with its upstream/paper defaults
except where a default is expressed in a unit that does not fit an LLM replica; those overrides
are in :func:`default_spec` with their reason, and tuned on the w0/w1 trace windows only.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from xds_control.sim.controller import (
    LB_LEAST_REQUEST,
    LB_ROUND_ROBIN,
    Action,
    Controller,
    FixedController,
    FleetInfo,
    FleetObservation,
    mean_load_size,
)

__all__ = [
    "POLICY_NAMES",
    "PolicyUnavailable",
    "available_policies",
    "make_controller",
    "parse_policy_list",
    "CorePolicyController",
    "default_spec",
]

#: The six policies of ``--policy all``, in table order.
POLICY_NAMES: tuple[str, ...] = ("threshold", "predictive", "comprehensive", "hpa", "kpa", "fixed")

#: Routing each policy's plan asks Envoy for. The baselines keep Envoy's/Kubernetes' round robin;
#: the comprehensive method is the one with mesh-level traffic optimisation (weighted least request).
DEFAULT_LB = {
    "threshold": LB_ROUND_ROBIN,
    "predictive": LB_ROUND_ROBIN,
    "comprehensive": LB_LEAST_REQUEST,
    "hpa": LB_ROUND_ROBIN,
    "kpa": LB_ROUND_ROBIN,
    "fixed": LB_ROUND_ROBIN,
}
_LB_SUFFIX = {"rr": LB_ROUND_ROBIN, "lr": LB_LEAST_REQUEST}

#: Controller tick (simulated seconds between two decide() calls) per policy.
#: Every policy is called every 2 s (Knative's tick); HPA keeps its own 15 s sync inside decide().
DEFAULT_TICK_S = {"threshold": 2.0, "predictive": 2.0, "comprehensive": 2.0, "hpa": 2.0, "kpa": 2.0}


class PolicyUnavailable(LookupError):
    """The policy's module is not importable (not written yet, or broken)."""


def _policy_module(name: str) -> Any:
    try:
        return importlib.import_module(f"xds_control.policies.{name}")
    except ImportError as e:
        raise PolicyUnavailable(f"policy {name!r} is not available: xds_control.policies.{name} ({e})") from None


def available_policies() -> tuple[str, ...]:
    out = []
    for n in POLICY_NAMES:
        if n == "fixed":
            out.append(n)
            continue
        try:
            mod = _policy_module(n)
        except PolicyUnavailable:
            continue
        if hasattr(mod, "decide"):
            out.append(n)
    return tuple(out)


def parse_policy_list(text: str) -> list[str]:
    """``"all"`` or a comma list of ``NAME`` / ``NAME@rr`` / ``NAME@lr``; raises ``ValueError`` naming the bad one."""
    text = text.strip()
    if text == "all":
        return list(POLICY_NAMES)
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise ValueError("empty policy list")
    for n in names:
        base, _, suffix = n.partition("@")
        if base not in POLICY_NAMES or (suffix and suffix not in _LB_SUFFIX):
            raise ValueError(
                f"unknown policy {n!r}; known: {', '.join(POLICY_NAMES)} or all "
                f"(optionally NAME@rr / NAME@lr to force round robin / least request)"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"policy listed twice in {text!r}")
    return names


def _spec_class(mod: Any, name: str) -> Any:
    for attr in dir(mod):
        obj = getattr(mod, attr)
        if attr.lower() == f"{name}spec" and isinstance(obj, type):
            return obj
    raise PolicyUnavailable(f"xds_control.policies.{name} has no {name.capitalize()}Spec")


def default_spec(name: str, info: FleetInfo) -> Any:
    """The spec a policy runs with in the simulator (see the module docstring)."""
    mod = _policy_module(name)
    cls = _spec_class(mod, name)
    slo = info.ttft_slo_s
    p = info.profile
    overrides: dict[str, Any] = {"max_replicas": 1000}
    li: dict[str, Any] = {}
    fields = getattr(cls, "model_fields", {})
    if "load_index" in fields:
        # The seed's 200 ms latency target is below the prefill time of a median prompt on a 48 GB
        # GPU (0.2-0.4 s for 1-2 k tokens); D_net = 1 at the TTFT SLO instead.
        li["latency_target_s"] = slo
    if "startup_s" in fields:
        # The forecast horizon is the replica start-up time; the simulated fleet's is the profile's.
        overrides["startup_s"] = float(p.cold_start_s)  # type: ignore[attr-defined]
    if "demand_signal" in fields and info.mean_input_tokens > 0:
        # Demand from the gateway's request rate over one replica's benchmarked capacity, instead of
        # the sum of load indices: a saturated replica reports L ~ 1 whatever the queue behind it
        # (censored demand), so forecasting on L under-provisions every surge (seen on w0/w1).
        # rps_per_replica is what an operator's benchmark of the traffic mix gives: the cost
        # model's capacity at the trace's mean token counts.
        from xds_control.fleet import costmodel as cm

        overrides["demand_signal"] = "rps"
        overrides["rps_per_replica"] = cm.capacity_rps(p, info.mean_input_tokens, info.mean_output_tokens)
    if name == "threshold":
        overrides["latency_trigger_s"] = slo
    if name == "hpa":
        hpa = mod
        # Upstream default is CPU 80 %; an inference pod's CPU says little and the simulator has
        # none. The common GPU setup: DCGM GPU utilisation as a Pods metric, target 70 %.
        overrides["metrics"] = (hpa.HpaMetricSpec(signal="gpu_util", type="Pods", target=0.7),)
    if name == "kpa":
        # Knative's concurrency target 100 is for web pods; a replica is full at the cost model's
        # reference batch (32). Target half of it per pod (llm-d's running-request threshold is 16).
        overrides["target"] = float(max(1, p.reference_batch // 2))  # type: ignore[attr-defined]
    if li:
        base_li = fields["load_index"].default_factory() if fields["load_index"].default_factory else None
        if base_li is not None:
            overrides["load_index"] = base_li.model_copy(update=li)
    # Only pass overrides the spec knows.
    overrides = {k: v for k, v in overrides.items() if k in fields}
    return cls(**overrides)


def _target_util(name: str, spec: Any) -> float:
    for attr in ("l_high", "target_util", "target_utilization"):
        v = getattr(spec, attr, None)
        if isinstance(v, (int, float)) and 0 < v <= 2:
            return float(v)
    if name == "hpa":
        ms = getattr(spec, "metrics", ())
        if ms and getattr(ms[0], "signal", "") in ("gpu_util", "load", "cpu_util", "kv_cache"):
            return float(ms[0].target)
    return 0.8


@dataclass
class CorePolicyController:
    """Runs one ``xds_control.policies.<name>.decide`` and ``xds_control.planning.plan_service`` in the simulator.

    Every tick: the policy sees the ready replicas (starting ones as ``pending_replicas``); planning
    sees ready and starting replicas (starting = not ready) so its coordination table and drain
    choice match the fleet. Envoy is taken to ACK every plan at once (``acked_through = now``).
    Planning's weights are applied as EDS weights: 0 (PENDING, WARMING, DRAINING) takes a replica
    out of rotation, so a newly ready replica only gets traffic once planning ramps it in
    (``eds_managed``). Planning's drain choice is passed to the fleet as ``drain_first``.
    """

    policy: str
    lb: str = LB_ROUND_ROBIN
    name: str = ""
    tick_s: float = 2.0
    spec: Any = None
    spec_factory: Callable[[FleetInfo], Any] | None = None
    target_util: float = 0.8
    #: Apply xds_control.planning (weights, ramps, drain choice). Off = every ready replica equal.
    use_planning: bool = True
    #: Every Decision returned (for explanations/debugging); off by default to keep memory flat.
    keep_decisions: bool = False
    decisions: list[Any] = field(default_factory=list)
    eds_managed: bool = False
    _state: Any = None
    _table: Any = None
    _decide: Any = None

    def __post_init__(self) -> None:
        self.name = self.name or self.policy
        mod = _policy_module(self.policy)
        if not hasattr(mod, "decide"):
            raise PolicyUnavailable(f"xds_control.policies.{self.policy} has no decide()")
        self._decide = mod.decide
        if self.use_planning:
            try:
                importlib.import_module("xds_control.planning")
            except ImportError:
                self.use_planning = False
        self.eds_managed = self.use_planning

    def initial_replicas(self, info: FleetInfo) -> int:
        if self.spec is None:
            self.spec = (self.spec_factory or (lambda i: default_spec(self.policy, i)))(info)
        self.target_util = _target_util(self.policy, self.spec)
        self._state = None
        self._table = None
        n = mean_load_size(info, self.target_util)
        lo = getattr(self.spec, "min_replicas", 1)
        hi = getattr(self.spec, "max_replicas", n)
        return max(1, min(max(n, lo), hi))

    def _frame(self, eps: list[Any], zones: list[str], obs: FleetObservation) -> Any:
        from xds_control.core.model import SignalFrame

        zidx = {z: i for i, z in enumerate(zones)}
        w = obs.window_s if obs.window_s > 0 else 1.0
        ready = np.array([e.state == "ready" for e in eps], dtype=bool)
        nan = math.nan

        def col(vals: list[float]) -> np.ndarray:
            a = np.array(vals, dtype=np.float64)
            a[~ready] = nan  # a starting replica has no metrics endpoint yet
            return a

        return SignalFrame.from_arrays(
            [e.address for e in eps],
            ready=ready,
            locality=np.array([zidx[e.zone] for e in eps], dtype=np.int32),
            localities=tuple(f"sim/{z}/" for z in zones),
            gpu_util=col([e.gpu_util for e in eps]),
            latency_s=col([nan if e.ttft_mean_s is None else e.ttft_mean_s for e in eps]),
            running=col([e.running for e in eps]),
            waiting=col([e.waiting for e in eps]),
            kv_cache=col([e.kv_util for e in eps]),
            rps=col([e.routed / w for e in eps]),
            taken_at=col([obs.now] * len(eps)),
        )

    def signals(self, obs: FleetObservation) -> tuple[Any, Any, list[int]]:
        """(policy signals: ready replicas only, planning signals: ready + starting, rids of the latter)."""
        from xds_control.core.model import ServiceSignals

        zones = sorted({e.zone for e in obs.endpoints}) or [""]
        ready_eps = [e for e in obs.endpoints if e.state == "ready"]
        live_eps = [e for e in obs.endpoints if e.state in ("ready", "starting")]
        starting = len(live_eps) - len(ready_eps)
        psig = ServiceSignals(
            service="llm",
            frame=self._frame(ready_eps, zones, obs),
            current_replicas=int(obs.target_replicas),
            pending_replicas=starting,
            request_rate=obs.arrival_rps,
        )
        if not starting:
            return psig, psig, [e.rid for e in live_eps]  # same replicas: one frame serves both
        lsig = ServiceSignals(
            service="llm",
            frame=self._frame(live_eps, zones, obs),
            current_replicas=int(obs.target_replicas),
            pending_replicas=starting,
            request_rate=obs.arrival_rps,
        )
        return psig, lsig, [e.rid for e in live_eps]

    def step(self, obs: FleetObservation) -> Action:
        psig, lsig, rids = self.signals(obs)
        decision, self._state = self._decide(psig, self._state, self.spec, obs.now)
        if self.keep_decisions:
            self.decisions.append(decision)
        if not self.use_planning:
            return Action(target_replicas=int(decision.target_replicas))
        from dataclasses import replace as dc_replace

        from xds_control.loadindex import compute_load
        from xds_control.planning import plan_service

        li = getattr(self.spec, "load_index", None)
        if li is not None and len(lsig.frame) != len(psig.frame):
            decision = dc_replace(decision, load=compute_load(lsig.frame, li, obs.now))
        traffic = getattr(self.spec, "traffic", None)
        if traffic is None:
            return Action(target_replicas=int(decision.target_replicas))
        res = plan_service(decision, lsig, self._table, traffic, obs.now, obs.now)
        self._table = res.table
        weights = {rid: int(w) for rid, w in zip(rids, res.weight.tolist())}
        from xds_control.core.model import EndpointPhase as P

        drains = tuple(
            rid for rid, ph in zip(rids, res.phase.tolist()) if ph in (int(P.DRAINING), int(P.REMOVABLE))
        )
        return Action(target_replicas=int(decision.target_replicas), weights=weights, drain_first=drains)


def make_controller(entry: str) -> Controller:
    """A controller for ``NAME`` or ``NAME@rr`` / ``NAME@lr`` (see :func:`parse_policy_list`)."""
    base, _, suffix = entry.partition("@")
    lb = _LB_SUFFIX[suffix] if suffix else DEFAULT_LB[base]
    if base == "fixed":
        return FixedController(lb=lb, name=entry)
    return CorePolicyController(policy=base, lb=lb, name=entry, tick_s=DEFAULT_TICK_S.get(base, 2.0))
