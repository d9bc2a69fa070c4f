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
DEFAULT_TICK_S = {"threshold": 2.0, "predictive": 2.0, "comprehensive": 2.0, "kpa": 2.0}


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


def _plan_weights(planner: Callable[..., Any] | None, decision: Any, signals: Any, spec: Any, now: float,
                  rids: list[int]) -> dict[int, int] | None:
    """Endpoint weights from ``xds_control.planning`` if it exposes a usable function, else None."""
    if planner is None:
        return None
    try:
        out = planner(decision, signals, spec, now)
    except TypeError:
        return None
    weights = getattr(out, "weights", out)
    if isinstance(weights, dict):
        keymap = {k: rid for k, rid in zip(signals.frame.keys, rids)}
        return {keymap[k]: int(w) for k, w in weights.items() if k in keymap}
    arr = np.asarray(weights)
    if arr.shape == (len(rids),):
        return {rid: max(1, int(w)) for rid, w in zip(rids, arr.tolist())}
    return None


@dataclass
class CorePolicyController:
    """Runs one ``xds_control.policies.<name>.decide`` in the simulator."""

    policy: str
    lb: str = LB_ROUND_ROBIN
    name: str = ""
    tick_s: float = 2.0
    spec: Any = None
    spec_factory: Callable[[FleetInfo], Any] | None = None
    target_util: float = 0.8
    #: Every Decision returned (for explanations/debugging); off by default to keep memory flat.
    keep_decisions: bool = False
    decisions: list[Any] = field(default_factory=list)
    _state: Any = None
    _decide: Any = None
    _signals_cls: Any = None
    _frame_cls: Any = None
    _planner: Any = None

    def __post_init__(self) -> None:
        self.name = self.name or self.policy
        mod = _policy_module(self.policy)
        if not hasattr(mod, "decide"):
            raise PolicyUnavailable(f"xds_control.policies.{self.policy} has no decide()")
        self._decide = mod.decide
        from xds_control.core.model import ServiceSignals, SignalFrame

        self._signals_cls = ServiceSignals
        self._frame_cls = SignalFrame
        self._planner = None  # set in initial_replicas when planning offers weights

    def initial_replicas(self, info: FleetInfo) -> int:
        if self.spec is None:
            self.spec = (self.spec_factory or (lambda i: default_spec(self.policy, i)))(info)
        self.target_util = _target_util(self.policy, self.spec)
        if getattr(self.spec, "policy", None) and hasattr(self.spec, "tick_interval_s"):
            self.tick_s = float(self.spec.tick_interval_s)
        if hasattr(self.spec, "sync_period_s"):
            self.tick_s = float(self.spec.sync_period_s)
        self._state = None
        n = mean_load_size(info, self.target_util)
        lo = getattr(self.spec, "min_replicas", 1)
        hi = getattr(self.spec, "max_replicas", n)
        return max(1, min(max(n, lo), hi))

    def signals(self, obs: FleetObservation) -> tuple[Any, list[int]]:
        eps = [e for e in obs.endpoints if e.state == "ready"]
        starting = sum(1 for e in obs.endpoints if e.state == "starting")
        zones = sorted({e.zone for e in obs.endpoints}) or [""]
        zidx = {z: i for i, z in enumerate(zones)}
        w = obs.window_s if obs.window_s > 0 else 1.0
        frame = self._frame_cls.from_arrays(
            [e.address for e in eps],
            ready=True,
            locality=np.array([zidx[e.zone] for e in eps], dtype=np.int32),
            localities=tuple(f"sim/{z}/" for z in zones),
            gpu_util=np.array([e.gpu_util for e in eps]),
            latency_s=np.array([math.nan if e.ttft_mean_s is None else e.ttft_mean_s for e in eps]),
            running=np.array([e.running for e in eps], dtype=np.float64),
            waiting=np.array([e.waiting for e in eps], dtype=np.float64),
            kv_cache=np.array([e.kv_util for e in eps]),
            rps=np.array([e.routed / w for e in eps]),
            taken_at=obs.now,
        )
        sig = self._signals_cls(
            service="llm",
            frame=frame,
            current_replicas=int(obs.target_replicas),
            pending_replicas=starting,
            request_rate=obs.arrival_rps,
        )
        return sig, [e.rid for e in eps]

    def step(self, obs: FleetObservation) -> Action:
        sig, rids = self.signals(obs)
        decision, self._state = self._decide(sig, self._state, self.spec, obs.now)
        if self.keep_decisions:
            self.decisions.append(decision)
        weights = _plan_weights(self._planner, decision, sig, self.spec, obs.now, rids)
        return Action(target_replicas=int(decision.target_replicas), weights=weights)


def make_controller(entry: str) -> Controller:
    """A controller for ``NAME`` or ``NAME@rr`` / ``NAME@lr`` (see :func:`parse_policy_list`)."""
    base, _, suffix = entry.partition("@")
    lb = _LB_SUFFIX[suffix] if suffix else DEFAULT_LB[base]
    if base == "fixed":
        return FixedController(lb=lb, name=entry)
    return CorePolicyController(policy=base, lb=lb, name=entry, tick_s=DEFAULT_TICK_S.get(base, 2.0))
