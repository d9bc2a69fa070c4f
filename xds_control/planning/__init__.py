"""Planning: from a policy decision and the fleet to a traffic plan the xDS layer can serve.

Public API::

    from xds_control.planning import plan_service, apply_to_pool, CoordinationTable

    result = plan_service(decision, signals, table, spec.traffic, now, acked_through)
    table = result.table                       # pass back next tick (None adopts the fleet)
    pool = apply_to_pool(pool, result)         # a new core.traffic.PoolPlan (dataclasses.replace)
    scaler.set(result.scaler_replicas); delete(result.removable)

Pure: no clocks, no I/O, inputs never mutated. See :mod:`.plan`, :mod:`.coordination`, :mod:`.weights`.
"""

from xds_control.planning.coordination import (
    ALLOWED,
    CoordinationTable,
    Transition,
    advance,
    ramp_fraction,
    select_drains,
)
from xds_control.planning.plan import (
    ServicePlanResult,
    apply_to_pool,
    endpoint_weights,
    locality_plan,
    outlier_plan,
    plan_service,
)
from xds_control.planning.weights import capped_allocation, headroom, largest_remainder

__all__ = [
    "ALLOWED",
    "CoordinationTable",
    "ServicePlanResult",
    "Transition",
    "advance",
    "apply_to_pool",
    "capped_allocation",
    "endpoint_weights",
    "headroom",
    "largest_remainder",
    "locality_plan",
    "outlier_plan",
    "plan_service",
    "ramp_fraction",
    "select_drains",
]
