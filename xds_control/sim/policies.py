"""Which controllers ``xds-control evaluate`` runs: the shipped presets through the control step.

``evaluate --policy NAME`` runs exactly what ``serve`` runs for a pool with ``autoscale.policy: NAME``: the
preset file ``xds_control/config/presets/NAME.yaml`` (resolved by :func:`xds_control.config.policy.resolve_policy`,
the one resolution path) driven by :func:`xds_control.control.step.control_step` through
:class:`~xds_control.sim.adapter.StepController`, ticking every ``controller.tick_s`` (the config default,
1 s). ``fixed`` is the baseline that never scales (:class:`~xds_control.sim.controller.FixedController`).

There is no simulator-only spec and no simulator-only copy of any policy.
"""

from __future__ import annotations

from xds_control.config.policy import resolve_policy
from xds_control.config.schema import ControllerConfig
from xds_control.policies import POLICIES, PolicySpec
from xds_control.sim.adapter import StepController
from xds_control.sim.controller import LB_LEAST_REQUEST, LB_ROUND_ROBIN, Controller, FixedController
from xds_control.sim.routing import LB_GIE, LB_ORACLE, LB_PREFIX

__all__ = ["POLICY_NAMES", "DEFAULT_LB", "TICK_S", "parse_policy_list", "make_controller", "preset_spec"]

#: The policies of ``--policy all``, in table order: every registered policy, then the fixed fleet.
POLICY_NAMES: tuple[str, ...] = (*POLICIES, "fixed")

#: Routing each policy's plan asks Envoy for. The baselines keep Envoy's/Kubernetes' round robin;
#: the comprehensive method is the one with mesh-level traffic optimisation (weighted least request).
DEFAULT_LB = {name: LB_ROUND_ROBIN for name in POLICY_NAMES} | {"comprehensive": LB_LEAST_REQUEST}
#: ``NAME@SUFFIX`` routings: round robin, least request, and the prefix-cache-aware ones of
#: :mod:`xds_control.sim.routing` (prefix affinity with a load bound, the GIE endpoint picker, an oracle).
_LB_SUFFIX = {"rr": LB_ROUND_ROBIN, "lr": LB_LEAST_REQUEST, "prefix": LB_PREFIX, "gie": LB_GIE, "oracle": LB_ORACLE}

#: Seconds between two control steps: the live loop's default ``controller.tick_s``.
TICK_S: float = float(ControllerConfig().tick_s)


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
                f"(optionally NAME@rr / NAME@lr / NAME@prefix / NAME@gie / NAME@oracle to choose the routing)"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"policy listed twice in {text!r}")
    return names


def preset_spec(name: str) -> PolicySpec:
    """The shipped preset ``name``, resolved as ``serve`` resolves it."""
    return resolve_policy(name)


def make_controller(entry: str, *, spec: PolicySpec | None = None, tick_s: float = TICK_S) -> Controller:
    """A controller for ``NAME`` or ``NAME@rr`` / ``NAME@lr`` (see :func:`parse_policy_list`).

    ``spec`` replaces the shipped preset (a what-if run); ``tick_s`` is ``controller.tick_s``.
    """
    base, _, suffix = entry.partition("@")
    lb = _LB_SUFFIX[suffix] if suffix else DEFAULT_LB[base]
    if base == "fixed":
        return FixedController(lb=lb, name=entry)
    return StepController(spec if spec is not None else preset_spec(base), lb=lb, name=entry, tick_s=tick_s)
