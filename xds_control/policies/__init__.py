"""Scaling policies: pure ``decide(signals, state, spec, now) -> (Decision, new_state)`` functions.

Public API (what the simulator and the controller call)::

    from xds_control.policies import POLICIES, load_policy_spec, decide

    spec = load_policy_spec({"policy": "comprehensive", ...})  # a mapping; raises SpecError
    state = None                                               # first call
    decision, state = decide(signals, state, spec, now)        # every tick, now = float seconds

* ``POLICIES[name]`` is a :class:`PolicyDef` (``spec_cls``, ``decide``, ``state_cls``) for
  ``threshold``, ``predictive``, ``comprehensive``, and the baselines ``hpa`` (Kubernetes HPA v2),
  ``kpa`` (Knative), ``apa`` (AIBrix) and ``sla`` (Dynamo's SLA planner, aggregated).
* State values are frozen dataclasses: keep the one returned and pass it back next tick; never
  share one state between services. ``None`` starts fresh.
* Nothing here reads a clock, does I/O or mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from xds_control.core.errors import FieldProblem, SpecError, spec_error_from_pydantic
from xds_control.core.model import Decision, ServiceSignals
from xds_control.policies import apa, comprehensive, hpa, kpa, predictive, sla, threshold
from xds_control.policies.apa import ApaSpec, ApaState
from xds_control.policies.comprehensive import ComprehensiveSpec, ComprehensiveState
from xds_control.policies.hpa import HpaSpec, HpaState
from xds_control.policies.kpa import KpaSpec, KpaState
from xds_control.policies.predictive import PredictiveSpec, PredictiveState
from xds_control.policies.sla import SlaSpec, SlaState
from xds_control.policies.specs import OutlierSpec, PolicySpecBase, TrafficSpec
from xds_control.policies.threshold import ThresholdSpec, ThresholdState

__all__ = [
    "POLICIES",
    "PolicyDef",
    "PolicySpec",
    "decide",
    "load_policy_spec",
    "validate_policy_spec",
    "ThresholdSpec",
    "PredictiveSpec",
    "ComprehensiveSpec",
    "HpaSpec",
    "KpaSpec",
    "ApaSpec",
    "SlaSpec",
    "TrafficSpec",
    "OutlierSpec",
    "PolicySpecBase",
]

PolicySpec = ThresholdSpec | PredictiveSpec | ComprehensiveSpec | HpaSpec | KpaSpec | ApaSpec | SlaSpec


@dataclass(frozen=True, slots=True)
class PolicyDef:
    name: str
    spec_cls: type[BaseModel]
    decide: Callable[[ServiceSignals, Any, Any, float], tuple[Decision, Any]]
    state_cls: type
    summary: str


POLICIES: Mapping[str, PolicyDef] = {
    "threshold": PolicyDef("threshold", ThresholdSpec, threshold.decide, ThresholdState,
                           "Seed rule method: L > L_high up, L < L_low down (hysteresis, cooldowns, 6/min)."),
    "predictive": PolicyDef("predictive", PredictiveSpec, predictive.decide, PredictiveState,
                            "Damped-Holt forecast over 15 min; forecast peak under 90 % of capacity."),
    "comprehensive": PolicyDef("comprehensive", ComprehensiveSpec, comprehensive.decide, ComprehensiveState,
                               "Predictive + burst mode + headroom/locality weights, ramps and drains."),
    "hpa": PolicyDef("hpa", HpaSpec, hpa.decide, HpaState, "Kubernetes HPA v2, upstream defaults."),
    "kpa": PolicyDef("kpa", KpaSpec, kpa.decide, KpaState, "Knative KPA, upstream defaults."),
    "apa": PolicyDef("apa", ApaSpec, apa.decide, ApaState,
                     "AIBrix APA: KV-cache use vs target with fluctuation tolerances, x2 rates, upstream defaults."),
    "sla": PolicyDef("sla", SlaSpec, sla.decide, SlaState,
                     "Dynamo SLA planner (aggregated): predicted req/s over profiled capacity at the SLO."),
}


def load_policy_spec(data: Mapping[str, Any]) -> PolicySpec:
    """Validate a policy spec from a mapping (YAML files are read by :mod:`xds_control.config.policy`).

    The mapping must have ``policy:`` naming one of :data:`POLICIES`. Raises
    :class:`~xds_control.core.errors.SpecError` whose message names each bad key, its value and the
    allowed range (or the allowed keys, for unknown ones).
    """
    return validate_policy_spec(data, "policy spec")


def validate_policy_spec(data: Any, origin: str) -> PolicySpec:
    """:func:`load_policy_spec` with ``origin`` (a file name, say) in the error message."""
    if not isinstance(data, Mapping):
        raise SpecError(f"invalid {origin}", [FieldProblem("<root>", data, "must be a mapping")])
    name = data.get("policy")
    if name not in POLICIES:
        raise SpecError(
            f"invalid {origin}",
            [FieldProblem("policy", name, "unknown policy", "one of " + ", ".join(POLICIES))],
        )
    cls = POLICIES[cast(str, name)].spec_cls  # a str: it is one of the keys
    try:
        return cls.model_validate(dict(data))  # type: ignore[return-value]  # the union member POLICIES names
    except ValidationError as exc:
        raise spec_error_from_pydantic(f"invalid {origin} ({name})", exc, cls) from None


def decide(signals: ServiceSignals, state: Any, spec: PolicySpec, now: float) -> tuple[Decision, Any]:
    """Dispatch to ``POLICIES[spec.policy].decide``. ``state`` None starts fresh."""
    return POLICIES[spec.policy].decide(signals, state, spec, now)
