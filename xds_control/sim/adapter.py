"""The simulated world's adapter to the control step: the same controller ``serve`` runs.

:class:`StepController` is the simulator's :class:`~xds_control.sim.controller.Controller`. Every tick it
builds the :class:`~xds_control.control.step.Observation` the live loop (:mod:`xds_control.runtime.loop`)
would build from the scaler, the signal source and Envoy, calls
:func:`~xds_control.control.step.control_step` with the shipped policy spec, and applies the actions the way
the live loop does: start one replica per ``start`` entry, stop exactly the ``stop`` and ``reap`` ids, and
route on the plan's endpoints and weights (an endpoint absent from the plan's EDS, or DRAINING, gets no new
requests) and with the pool's prefill-backlog shedding (``PoolPlan.shed``, as Envoy's route retries it; a plan
without it leaves the fleet's ``SimConfig.shed``, the pool's setting outside the policy).

How simulated replicas become observations (one sample per *ready* replica, as a scrape of its /metrics):

==============  ===========================================================================
``status``      starting / ready / failed (a dead replica until the step reaps it); a replica the
                step stopped is draining in the fleet and, as in the live loop, no longer shown
``gpu_util``    the cost model's utilisation averaged since the previous tick (DCGM)
``gpu_mem``     missing: vLLM preallocates ~90 % of GPU memory, the KV-cache fraction carries it
``cpu_util``    missing (no CPU model; the load index renormalises)
``latency_s``   mean TTFT of the replica's requests that got their first token since the previous tick
``running``     requests in the batch; ``waiting``: in the replica's queue (vLLM's gauges)
``kv_cache``    reserved KV-cache fraction
``rps``         requests the replica finished per second since the previous tick (the live scrape's rate of
                ``vllm:request_success_total``: completions, so a saturated replica's rps is its throughput)
``taken_at``    ``now`` (scrapes are fresh)
request rate    the gateway's arrivals per second over the last 10 s (Envoy's upstream_rq_total rate)
==============  ===========================================================================

Where the worlds still differ is listed in EVALUATION.md ("Simulated and live: the differences"): ACKs
arrive by the next tick (the live loop sees a push ACKed on its next tick too), samples are fresh, and
crashes are seen on the next tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xds_control.config import parse_config, to_traffic_plan
from xds_control.control.step import (
    ControlSpec,
    ControlState,
    Observation,
    PoolObs,
    PoolSpec,
    ReplicaObs,
    ReplicaStatus,
    control_step,
)
from xds_control.core.model import Decision, EndpointSample
from xds_control.core.traffic import HealthStatus
from xds_control.policies import PolicySpec
from xds_control.sim.controller import (
    LB_ROUND_ROBIN,
    Action,
    FleetInfo,
    FleetObservation,
    mean_load_size,
)

__all__ = ["StepController", "SERVICE", "POOL", "target_utilization"]

#: Names of the one simulated service and its autoscaled pool.
SERVICE = "llm"
POOL = "llm"
_STATUS = {"starting": ReplicaStatus.STARTING, "ready": ReplicaStatus.READY, "failed": ReplicaStatus.FAILED}


def target_utilization(spec: Any) -> float:
    """The utilisation a policy aims for (offered load / ready replicas), for sizing and the trigger-delay metric."""
    for attr in ("l_high", "target_utilization"):
        v = getattr(spec, attr, None)
        if isinstance(v, (int, float)) and 0 < v <= 2:
            return float(v)
    ms = getattr(spec, "metrics", ())
    if ms and getattr(ms[0], "signal", "") in ("gpu_util", "load", "cpu_util", "kv_cache"):
        return float(ms[0].target)
    return 0.8


def _base_plan(lb: str) -> Any:
    """The plan of a config with one autoscaled pool (the endpoints come from the step)."""
    cfg = parse_config({
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
        "services": [{"name": SERVICE, "pools": [{
            "name": POOL, "lb_policy": "round_robin" if lb == LB_ROUND_ROBIN else "least_request",
            "autoscale": {"policy": "threshold"}}]}],
    }, "<simulated fleet>")
    return to_traffic_plan(cfg)


@dataclass
class StepController:
    """Runs :func:`~xds_control.control.step.control_step` on the simulated fleet with ``spec``."""

    spec: PolicySpec
    lb: str = LB_ROUND_ROBIN
    name: str = ""
    #: Simulated seconds between two steps: ``controller.tick_s`` of the config (default 1 s).
    tick_s: float = 1.0
    #: Every Decision returned (for explanations/debugging); off by default to keep memory flat.
    keep_decisions: bool = False
    decisions: list[Decision] = field(default_factory=list)
    #: The fleet follows the step's start/stop actions (no ReplicaSet in between) and its EDS weights.
    manages_replicas: bool = True
    eds_managed: bool = True
    scales: bool = True
    target_util: float = 0.8
    _cspec: ControlSpec | None = None
    _state: ControlState = field(default_factory=ControlState)
    _last_now: float | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.spec.policy
        self.target_util = target_utilization(self.spec)

    def initial_replicas(self, info: FleetInfo) -> int:
        """The fleet at t = 0: sized for the trace's mean load at the policy's target, within its bounds."""
        self._cspec = ControlSpec((PoolSpec(SERVICE, POOL, self.spec, tuple(info.zones)),), _base_plan(self.lb))
        self._state = ControlState()
        self._last_now = None
        n = mean_load_size(info, self.target_util)
        return max(1, min(max(n, self.spec.min_replicas), self.spec.max_replicas))

    def observation(self, obs: FleetObservation) -> tuple[Observation, dict[str, int]]:
        """The step's observation of the fleet, and endpoint key -> replica id."""
        w = obs.window_s if obs.window_s > 0 else 1.0
        replicas: list[ReplicaObs] = []
        samples: dict[str, EndpointSample | None] = {}
        rid_of: dict[str, int] = {}
        for e in obs.endpoints:
            status = _STATUS.get(e.state)
            if status is None:  # draining: stopped by the step, out of its view as in the live loop
                continue
            replicas.append(ReplicaObs(str(e.rid), e.address, status, zone=e.zone))
            rid_of[e.address] = e.rid
            if status is ReplicaStatus.READY:
                samples[e.address] = EndpointSample(
                    gpu_util=e.gpu_util, latency_s=e.ttft_mean_s, running=float(e.running),
                    waiting=float(e.waiting), kv_cache=e.kv_util, rps=e.completed / w, taken_at=obs.now)
        pool = PoolObs(POOL, tuple(replicas), samples=samples, request_rate=obs.arrival_rps)
        # A plan pushed at one tick is ACKed (in milliseconds) before the next: the live loop sees the ACK
        # of the previous tick's plan, never of the current one.
        return Observation(obs.now, {POOL: pool}, acked_through=self._last_now), rid_of

    def step(self, obs: FleetObservation) -> Action:
        assert self._cspec is not None, "initial_replicas() first"
        observation, rid_of = self.observation(obs)
        res = control_step(observation, self._state, self._cspec)
        self._state = res.state
        self._last_now = obs.now
        if not res.pools or res.plan is None:
            return Action()
        act = res.pools[0]
        if self.keep_decisions:
            self.decisions.append(act.decision)
        pool = res.plan.pool(POOL)
        weights = {rid: 0 for rid in rid_of.values()}
        if pool is not None:
            for e in pool.endpoints:
                if e.key in rid_of and e.health is HealthStatus.HEALTHY:
                    weights[rid_of[e.key]] = max(1, int(e.weight))
        stop = tuple(int(x) for x in (*act.reap, *act.stop))
        shed = pool.shed if pool is not None else None
        return Action(target_replicas=int(act.decision.target_replicas), weights=weights,
                      start=act.start, stop=stop, shed_backlog_s=shed.backlog_s if shed is not None else None,
                      shed_attempts=shed.attempts if shed is not None else 1)
