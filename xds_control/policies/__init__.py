"""Scaling policies: pure ``decide(signals, state, spec, now) -> (Decision, new_state)`` functions.

Public API (what the simulator and the controller call)::

    from xds_control.policies import POLICIES, load_policy_spec, decide

    spec = load_policy_spec("policies/comprehensive.yaml")     # or a dict; raises SpecError
    state = None                                               # first call
    decision, state = decide(signals, state, spec, now)        # every tick, now = float seconds

* ``POLICIES[name]`` is a :class:`PolicyDef` (``spec_cls``, ``decide``, ``state_cls``) for
  ``threshold``, ``predictive``, ``comprehensive``, ``hpa`` and ``kpa``.
* State values are frozen dataclasses: keep the one returned and pass it back next tick; never
  share one state between services. ``None`` starts fresh.
* Nothing here reads a clock, does I/O or mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from xds_control.core.errors import FieldProblem, SpecError, spec_error_from_pydantic
from xds_control.core.model import Decision, ServiceSignals
from xds_control.policies import comprehensive, hpa, kpa, predictive, threshold
from xds_control.policies.comprehensive import ComprehensiveSpec, ComprehensiveState
from xds_control.policies.hpa import HpaSpec, HpaState
from xds_control.policies.kpa import KpaSpec, KpaState
from xds_control.policies.predictive import PredictiveSpec, PredictiveState
from xds_control.policies.specs import OutlierSpec, PolicySpecBase, TrafficSpec
from xds_control.policies.threshold import ThresholdSpec, ThresholdState

__all__ = [
    "POLICIES",
    "PolicyDef",
    "PolicySpec",
    "decide",
    "load_policy_spec",
    "ThresholdSpec",
    "PredictiveSpec",
    "ComprehensiveSpec",
    "HpaSpec",
    "KpaSpec",
    "TrafficSpec",
    "OutlierSpec",
    "PolicySpecBase",
]

PolicySpec = ThresholdSpec | PredictiveSpec | ComprehensiveSpec | HpaSpec | KpaSpec


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
}


def load_policy_spec(source: Mapping[str, Any] | str | Path) -> PolicySpec:
    """Validate a policy spec from a mapping, a YAML file path, or YAML text.

    The mapping must have ``policy:`` naming one of :data:`POLICIES`. Raises
    :class:`~xds_control.core.errors.SpecError` whose message names each bad key, its value and the
    allowed range (or the allowed keys, for unknown ones).
    """
    origin = "policy spec"
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))):
        path = Path(source)
        origin = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read {origin}", [FieldProblem("<file>", str(path), str(exc))]) from None
        data = _yaml(text, origin)
    elif isinstance(source, str):
        data = _yaml(source, origin)
    else:
        data = dict(source)
    if not isinstance(data, Mapping):
        raise SpecError(f"invalid {origin}", [FieldProblem("<root>", data, "must be a mapping")])
    name = data.get("policy")
    if name not in POLICIES:
        raise SpecError(
            f"invalid {origin}",
            [FieldProblem("policy", name, "unknown policy", "one of " + ", ".join(POLICIES))],
        )
    cls = POLICIES[name].spec_cls
    try:
        return cls.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        raise spec_error_from_pydantic(f"invalid {origin} ({name})", exc, cls) from None


def _yaml(text: str, origin: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"invalid YAML in {origin}", [FieldProblem(where, None, problem, show_value=False)]) from None


def decide(signals: ServiceSignals, state: Any, spec: PolicySpec, now: float) -> tuple[Decision, Any]:
    """Dispatch to ``POLICIES[spec.policy].decide``. ``state`` None starts fresh."""
    return POLICIES[spec.policy].decide(signals, state, spec, now)
