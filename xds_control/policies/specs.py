"""Spec fields shared by every policy, and the traffic-shaping spec consumed by planning.

Contract: specs are frozen pydantic models with ``extra="forbid"``; every field documents
its unit, default and the reason for the default. Use
:func:`xds_control.policies.load_policy_spec` to validate user input: it raises
:class:`xds_control.core.errors.SpecError` naming key, value and allowed range.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from xds_control.core.traffic import ShedPlan
from xds_control.loadindex import LoadIndexSpec

__all__ = ["OutlierSpec", "TrafficSpec", "PolicySpecBase"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OutlierSpec(_Spec):
    """Envoy outlier detection for the pool's cluster. Defaults are Envoy's except failure percentage."""

    consecutive_5xx: int = Field(
        5, ge=1, le=1000, description="Eject after this many consecutive 5xx. Envoy default 5."
    )
    interval_s: float = Field(10.0, gt=0, le=3600, description="Ejection sweep interval, seconds. Envoy default 10 s.")
    base_ejection_time_s: float = Field(
        30.0, gt=0, le=3600,
        description="Base ejection time (multiplied by ejection count), seconds. Envoy default 30 s.",
    )
    max_ejection_percent: int = Field(
        10, ge=0, le=100, description="Most of the pool that may be ejected at once, percent. Envoy default 10."
    )
    allow_single_ejection: bool = Field(
        True,
        description="Raise max_ejection_percent to ceil(100/n) on a pool of n endpoints so that one bad replica "
        "can always be ejected (10 % of a pool under 10 hosts is less than one host). Default true.",
    )
    success_rate_minimum_hosts: int = Field(5, ge=1, le=10000, description="Envoy default 5.")
    success_rate_request_volume: int = Field(100, ge=1, le=1_000_000, description="Envoy default 100.")
    success_rate_stdev_factor: float = Field(
        1.9, gt=0, le=100, description="Standard deviations below the mean success rate to eject. Envoy default 1.9."
    )
    failure_percentage_threshold: int | None = Field(
        85, ge=0, le=100,
        description="Eject hosts whose failure percentage exceeds this. Default 85 and ON (Envoy's default "
        "enforcing is 0): failing LLM replicas must leave rotation; null turns it off.",
    )
    failure_percentage_minimum_hosts: int = Field(5, ge=1, le=10000, description="Envoy default 5.")
    failure_percentage_request_volume: int = Field(50, ge=1, le=1_000_000, description="Envoy default 50.")


class TrafficSpec(_Spec):
    """How planning turns a decision into endpoint weights, localities and coordination."""

    weighting: str = Field(
        "equal",
        pattern="^(equal|headroom)$",
        description="'equal': every serving endpoint gets the same weight (the baselines: plain round robin). "
        "'headroom': weight proportional to max(0, saturation - L) + headroom_floor. Default equal.",
    )
    weight_scale: int = Field(
        100, ge=1, le=10_000,
        description="Mean integer weight of a fully serving endpoint. Default 100: 1 % resolution; Envoy "
        "weights are uint32 >= 1.",
    )
    hotspot_cap: float = Field(
        2.0, ge=1.0, le=100.0,
        description="No endpoint gets more than hotspot_cap x the mean weight. Default 2: an idle replica may "
        "take twice its share, not all the traffic (the thundering herd GIE warns about between polls).",
    )
    saturation: float = Field(
        1.0, gt=0.0, le=10.0, description="Load index at which an endpoint has no headroom. Default 1.0."
    )
    headroom_floor: float = Field(
        0.05, gt=0.0, le=1.0,
        description="Added to every endpoint's headroom so saturated endpoints keep a trickle (weight >= 1 "
        "anyway). Default 0.05.",
    )
    warmup_s: float = Field(
        0.0, ge=0.0, le=3600.0,
        description="Seconds a newly ready endpoint waits before entering EDS (cache warm-up). Default 0.",
    )
    ramp_window_s: float = Field(
        0.0, ge=0.0, le=3600.0,
        description="Seconds over which a new endpoint's weight ramps up, counted from Envoy's ACK. Default 0 "
        "(no ramp, the baselines); the comprehensive preset uses 60 s.",
    )
    ramp_min_fraction: float = Field(
        0.1, gt=0.0, le=1.0,
        description="Weight fraction at the start of the ramp. Default 0.1: Envoy slow start's min_weight_percent 10.",
    )
    ramp_aggression: float = Field(
        1.0, gt=0.0, le=10.0,
        description="Ramp shape: fraction = max(min, (t/window)^(1/aggression)), as Envoy slow start. "
        "Default 1 (linear).",
    )
    drain_timeout_s: float | None = Field(
        300.0, gt=0.0, le=86_400.0,
        description="A draining endpoint whose in-flight count never reaches 0 (or is unknown) becomes removable "
        "after this many seconds since the drain was ACKed. Default 300 s (long LLM streams); null = wait forever.",
    )
    envoy_slow_start_window_s: float | None = Field(
        None, gt=0.0, le=3600.0,
        description="Also set Envoy's slow_start_config on the cluster (seconds). Default null: planning ramps "
        "weights itself, which also works when every endpoint is new (envoy PR #24689).",
    )
    local_locality: str | None = Field(
        None,
        description="Locality key (region/zone/sub_zone) of the proxies. When set, it is priority 0 and traffic "
        "spills to the next locality only while it is saturated. Default null: all localities priority 0.",
    )
    locality_order: tuple[str, ...] = Field(
        (), description="Spill order after local_locality (nearest first). Unlisted localities follow, sorted."
    )
    spill_threshold: float = Field(
        0.85, gt=0.0, le=10.0,
        description="A locality whose mean load index is >= this is saturated and shares priority 0 with the "
        "next locality. Default 0.85 (just under the seed's 90 % overload line).",
    )
    outlier: OutlierSpec | None = Field(
        default_factory=OutlierSpec, description="Outlier detection for the pool; null leaves it unset."
    )
    shed_prefill_backlog_s: float | None = Field(
        None, gt=0.0, le=60.0,
        description="Prefill-backlog shedding: a replica with more than this many seconds of prompt prefill queued "
        "answers a new request 429 and Envoy retries it at once on another replica (never on the last attempt, so "
        "nothing is lost). Long prompts then wait behind no other prompt while any replica is free. Needs a replica "
        "that honours the x-xds-control-shed-* headers (xds-control replica does; see README). Default null (off); "
        "the comprehensive preset uses 0.5 s.",
    )
    shed_attempts: int = Field(
        3, ge=2, le=10,
        description="Prefill-backlog shedding: attempts in all, the first included; the last is always accepted. "
        "Default 3.",
    )

    def shed_plan(self) -> ShedPlan | None:
        """The pool's prefill-backlog shedding as the traffic plan carries it, or ``None`` when off."""
        if self.shed_prefill_backlog_s is None:
            return None
        return ShedPlan(self.shed_prefill_backlog_s, self.shed_attempts)

    @model_validator(mode="after")
    def _one_ramp(self) -> TrafficSpec:
        if self.envoy_slow_start_window_s is not None and self.ramp_window_s > 0:
            raise ValueError(
                f"ramp_window_s ({self.ramp_window_s}) and envoy_slow_start_window_s "
                f"({self.envoy_slow_start_window_s}) would ramp new endpoints twice: set one of them (0 / null)"
            )
        return self


class PolicySpecBase(_Spec):
    """Fields every policy spec has."""

    policy: str = Field(description="Policy name: one of xds_control.policies.POLICIES (threshold, predictive, "
                        "comprehensive, hpa, kpa, apa, sla).")
    min_replicas: int = Field(
        1, ge=0, le=100_000, description="Lower bound on target replicas. Default 1 (0 allows scale to zero)."
    )
    max_replicas: int = Field(
        100, ge=1, le=100_000, description="Upper bound on target replicas. Default 100."
    )
    load_index: LoadIndexSpec = Field(default_factory=LoadIndexSpec, description="Load index weights and staleness.")
    traffic: TrafficSpec = Field(default_factory=TrafficSpec, description="Weights, ramps, drains, localities.")

    @model_validator(mode="after")
    def _min_le_max(self) -> PolicySpecBase:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        return self
