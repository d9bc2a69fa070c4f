"""What the simulator shows a controller, and what a controller answers.

A *controller* is the part of xds-control that decides: it reads what the fleet looks like and
returns a replica target and endpoint weights. The simulator calls :meth:`Controller.step` every
``tick_s`` simulated seconds. Adapters in :mod:`xds_control.sim.policies` wrap the real decision
core (``xds_control.policies`` / ``xds_control.planning``) in this interface; the only controller
defined here is :class:`FixedController`, the "fixed fleet sized for the mean load" baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "EndpointObservation",
    "FleetObservation",
    "Action",
    "FleetInfo",
    "Controller",
    "FixedController",
    "ttft_slo_s",
    "WAIT_SLO_S",
    "mean_load_size",
    "LB_LEAST_REQUEST",
    "LB_ROUND_ROBIN",
]

LB_LEAST_REQUEST = "least_request"
LB_ROUND_ROBIN = "round_robin"


@dataclass(frozen=True, slots=True)
class EndpointObservation:
    """One replica as a metrics scrape would show it at ``FleetObservation.now``."""

    rid: int
    #: ``host:port``-style stable name, e.g. ``"10.0.3.2:8000"``.
    address: str
    node: str
    zone: str
    #: ``"starting"``, ``"ready"``, ``"draining"`` or ``"failed"`` (a dead replica, shown to controllers that
    #: manage replicas until they stop it; to others dead replicas are not shown).
    state: str
    #: Seconds since the replica became ready (negative while starting).
    age_s: float
    weight: int
    #: Requests running in the batch, waiting in the queue, and both.
    running: int
    waiting: int
    #: Fraction of the KV cache reserved, in [0, 1].
    kv_util: float
    #: Mean GPU utilisation (cost-model estimate) since the previous tick, in [0, 1].
    gpu_util: float
    #: Requests routed to this replica since the previous tick.
    routed: int
    #: Requests this replica finished since the previous tick (vLLM's ``request_success_total``).
    completed: int
    #: p99 and mean time to first token (s) of its requests that got a first token since the
    #: previous tick, or None.
    ttft_p99_s: float | None
    ttft_mean_s: float | None
    #: Its requests lost (rejected or timed out) since the previous tick.
    lost: int


@dataclass(frozen=True, slots=True)
class FleetObservation:
    now: float
    #: Seconds since the previous tick (the window the rates and percentiles cover).
    window_s: float
    endpoints: tuple[EndpointObservation, ...]
    #: Gateway request rate: arrivals per second over the last 10 s (a Prometheus ``rate()`` window).
    arrival_rps: float
    #: Offered load over the window in replica-equivalents (cost-model work seconds per second).
    offered_load: float
    #: Mean prompt and output tokens of the window's arrivals (0 when none).
    mean_input_tokens: float
    mean_output_tokens: float
    #: Fleet p99 TTFT and end-to-end latency (s) of requests completing in the window, or None.
    ttft_p99_s: float | None
    latency_p99_s: float | None
    #: Requests lost in the window.
    lost: int
    #: The replica target currently in force.
    target_replicas: int

    @property
    def ready(self) -> int:
        return sum(1 for e in self.endpoints if e.state == "ready")

    @property
    def starting(self) -> int:
        return sum(1 for e in self.endpoints if e.state == "starting")


@dataclass(frozen=True, slots=True)
class Action:
    """A controller's answer. ``None`` leaves that part unchanged.

    Two kinds of controller: a *managed* one sets ``target_replicas`` and the fleet manager (a ReplicaSet)
    starts, cancels, drains and replaces replicas to reach it; a controller with ``manages_replicas = True``
    (the control step) says exactly which replicas to ``start`` and ``stop``, as the live loop does with a
    scaler, and its ``target_replicas`` is only recorded.
    """

    target_replicas: int | None = None
    #: Envoy ``load_balancing_weight`` per replica id; 0 takes it out of rotation (not in EDS).
    #: Missing ids keep their weight.
    weights: Mapping[int, int] | None = None
    #: Replica ids to cancel/drain first when scaling down (planning's choice), in order.
    drain_first: tuple[int, ...] = ()
    #: ``manages_replicas`` only: start one replica per entry, in that zone ("" = the emptier zone).
    start: tuple[str, ...] = ()
    #: ``manages_replicas`` only: replica ids to stop (a ready one drains: in-flight requests finish;
    #: a starting one is cancelled; a failed one is acknowledged).
    stop: tuple[int, ...] = ()
    #: Prefill-backlog shedding bound in seconds (the plan's ``PoolPlan.shed``); 0 = off, None = unchanged (the
    #: fleet's ``SimConfig.shed`` until a controller sets it).
    shed_backlog_s: float | None = None
    #: Attempts in all when shedding (the last one is never shed).
    shed_attempts: int = 3


@dataclass(frozen=True, slots=True)
class FleetInfo:
    """What a controller may know before the run: the cost model and the trace's average load."""

    profile: object  # costmodel.ReplicaProfile (kept untyped to avoid an import cycle in docs)
    #: Mean offered load of the whole trace in replica-equivalents.
    mean_offered_load: float
    duration_s: float
    gpus_per_node: int
    zones: tuple[str, ...] = field(default=("zone-a", "zone-b"))
    #: The run's TTFT target for policies (see :func:`ttft_slo_s`), seconds.
    ttft_slo_s: float = 1.0
    #: Mean prompt and output tokens of the trace (an operator's benchmark of the traffic mix).
    mean_input_tokens: float = 0.0
    mean_output_tokens: float = 0.0


#: Queueing allowance of the TTFT SLO: a request meets it when its TTFT is at most its own
#: prefill time plus this many seconds.
WAIT_SLO_S = 1.0


def ttft_slo_s(profile: Any, input_tokens: Any) -> float:
    """TTFT target of a run for the policies: the mean request's prefill time + :data:`WAIT_SLO_S`.

    The seed's 200 ms latency trigger is below the prefill time of a typical prompt on a 48 GB GPU
    (0.2-0.4 s for 1-2 k tokens), so latency targets are expressed against the workload. The mean,
    not the median, because policies compare it with a *mean* TTFT: with a median-based target a
    long-tailed prompt mix (Mooncake: mean 13 k tokens) reads as overloaded with empty queues.
    """
    import numpy as np

    from xds_control.fleet import costmodel as cm

    if len(input_tokens) == 0:
        return WAIT_SLO_S
    mean = float(np.mean(input_tokens))
    return WAIT_SLO_S + float(cm.prefill_time_s(profile, mean))


@runtime_checkable
class Controller(Protocol):
    #: Name shown in the table and the JSON.
    name: str
    #: Simulated seconds between two calls of :meth:`step`.
    tick_s: float
    #: The utilisation the policy aims for (offered load / ready replicas); used by the
    #: trigger-delay metric: a surge starts when offered load > ready replicas × target_util.
    target_util: float
    #: How the mesh routes: :data:`LB_LEAST_REQUEST` (Envoy weighted least request) or
    #: :data:`LB_ROUND_ROBIN`.
    lb: str

    def initial_replicas(self, info: FleetInfo) -> int:
        """Replicas ready at t = 0."""
        ...

    def step(self, obs: FleetObservation) -> Action:
        """Decide at ``obs.now``. Must be deterministic given the observations."""
        ...


def mean_load_size(info: FleetInfo, target_util: float) -> int:
    """Replicas needed to carry the trace's mean load at ``target_util``."""
    import math

    return max(1, math.ceil(info.mean_offered_load / max(target_util, 1e-9) - 1e-9))


class FixedController:
    """The baseline: a fixed fleet sized for the mean load (at ``target_util``), round robin, never scales."""

    def __init__(self, *, target_util: float = 0.8, lb: str = LB_ROUND_ROBIN, name: str = "fixed") -> None:
        self.name = name
        self.scales = False
        self.tick_s = 10.0
        self.target_util = target_util
        self.lb = lb

    def initial_replicas(self, info: FleetInfo) -> int:
        return mean_load_size(info, self.target_util)

    def step(self, obs: FleetObservation) -> Action:
        return Action()
