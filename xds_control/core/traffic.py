"""The traffic plan: what Envoy should do, as plain immutable values.

A :class:`TrafficPlan` is the boundary between deciding and serving. The static
config produces one directly; the controller produces one from a policy decision
and the fleet. ``xds_control.snapshot`` turns it into Envoy resources. Nothing
here knows about protobuf, gRPC or clocks.

Naming contract (relied on by the snapshot builder and by tests):

* each :class:`ListenerPlan` becomes an Envoy Listener *and* a RouteConfiguration
  with the same name;
* each :class:`ServicePlan` becomes one virtual host inside the route
  configurations of the listeners that carry it;
* each :class:`PoolPlan` becomes one EDS Cluster and one ClusterLoadAssignment,
  both named after the pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class HealthStatus(str, Enum):
    """Envoy's ``core.v3.HealthStatus`` values that a plan may set on an endpoint."""

    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"
    #: Envoy stops sending *new* requests to a draining endpoint but lets in-flight ones finish.
    DRAINING = "DRAINING"
    DEGRADED = "DEGRADED"


class LbPolicy(str, Enum):
    ROUND_ROBIN = "round_robin"
    #: Envoy's weighted least-request (power of two choices, weight/(active+1)^bias).
    LEAST_REQUEST = "least_request"
    RANDOM = "random"


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""

    @property
    def key(self) -> str:
        """Stable string form ``region/zone/sub_zone`` used as a dict key."""
        return f"{self.region}/{self.zone}/{self.sub_zone}"


@dataclass(frozen=True, slots=True)
class EndpointPlan:
    """One upstream endpoint (an inference replica) as Envoy should see it."""

    address: str
    port: int
    locality: Locality = Locality()
    #: Envoy ``load_balancing_weight``; must be >= 1 (Envoy rejects 0). Use
    #: ``health=DRAINING`` to take an endpoint out of rotation.
    weight: int = 1
    health: HealthStatus = HealthStatus.HEALTHY

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class OutlierDetectionPlan:
    """Envoy ``cluster.v3.OutlierDetection`` settings (defaults follow Envoy's, except where noted)."""

    consecutive_5xx: int = 5
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10
    #: Success-rate ejection; Envoy's default minimum hosts is 5.
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    #: Failure-percentage ejection; off when ``None`` (Envoy's default: enforcing 0).
    failure_percentage_threshold: int | None = None
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    consecutive_gateway_failure: int | None = None


@dataclass(frozen=True, slots=True)
class PrefixRoutingPlan:
    """Prefix-cache affinity: requests whose prompts start alike go to the same replica, within a load bound.

    Envoy does it alone: a Lua filter hashes the first ``prefix_bytes`` of the prompt into a key, then

    * ``spill="maglev"``: the route hashes on the key (request header set by the filter) and the
      cluster balances with Maglev and bounded loads (``hash_balance_factor``); a retry re-hashes;
    * ``spill="least_request"``: the filter picks the key's replica by rendezvous hashing over the pool's routable
      endpoints (pushed in the route, :mod:`xds_control.core.affinity`) and names it in
      :data:`AFFINITY_ENDPOINT_HEADER` (the best ``affinity_choices`` of them, best first); the cluster's
      override-host policy sends one attempt to each in turn, then retries by least request. The replica bounds
      the affinity: on those attempts it sheds (429) when its queued prefill, less what its prefix cache saves
      this request, is over ``affinity_backlog_s`` (:data:`SHED_FIRST_BACKLOG_HEADER`,
      :data:`AFFINITY_ATTEMPTS_HEADER`), and the retry goes on.
    """

    #: Bytes of the prompt (as sent, JSON-escaped) that make the affinity key.
    prefix_bytes: int = 4096
    #: Envoy ``consistent_hashing_lb_config.hash_balance_factor``: no replica takes more than
    #: ``factor / 100`` times the average outstanding requests (>= 100). ``spill="maglev"`` only.
    hash_balance_factor: int = 125
    #: Where the prompt is: ``auto`` (by path: chat completions -> ``messages``, else ``prompt``),
    #: ``prompt`` or ``messages``.
    extract: str = "auto"
    #: Bodies longer than this (by ``content-length``) are not inspected: the request falls back to the
    #: plain balancer.
    max_body_bytes: int = 262_144
    #: Where a request goes when its replica is over the bound: ``maglev`` or ``least_request`` (see above).
    spill: str = "least_request"
    #: ``spill="least_request"``: the affinity attempts' shedding bound in seconds of queued prefill less the cache's
    #: saving (0 = the key's replica takes the request only when its cache saves at least the wait).
    affinity_backlog_s: float = 0.0
    #: ``spill="least_request"``: how many of the key's replicas (best rendezvous scores first) get one attempt each
    #: before least request (2: a hot key lives on two replicas).
    affinity_choices: int = 2
    #: ``spill="least_request"``: the decode stall (seconds of this request's uncached prefill x the replica's
    #: running requests) the key's replica accepts to take a request on an affinity attempt; 0 = no limit.
    affinity_stall_s: float = 0.0


#: ``spill="least_request"``: the request header naming the key's replica (``address:port``; one per prefix-routed
#: pool of the route, comma-separated), read by the cluster's ``envoy.load_balancing_policies.override_host``.
AFFINITY_ENDPOINT_HEADER = "x-xds-control-endpoint"
#: ``spill="least_request"``: the affinity attempts' shedding bound (seconds), sent to the replica.
SHED_FIRST_BACKLOG_HEADER = "x-xds-control-shed-first-backlog-s"
#: ``spill="least_request"``: how many first attempts are affinity attempts (``affinity_choices``), sent to the replica.
AFFINITY_ATTEMPTS_HEADER = "x-xds-control-affinity-attempts"
#: ``spill="least_request"``: the affinity attempts' decode-stall budget (seconds x requests), sent to the replica.
AFFINITY_STALL_HEADER = "x-xds-control-affinity-stall-s"


#: Request headers Envoy adds to requests routed to a pool that sheds (:class:`ShedPlan`): the bound in seconds
#: and the total number of attempts. Envoy's own ``x-envoy-attempt-count`` tells the replica which attempt it is.
SHED_BACKLOG_HEADER = "x-xds-control-shed-backlog-s"
SHED_ATTEMPTS_HEADER = "x-xds-control-shed-attempts"
#: The status a replica answers a shed request with; the route retries it on another endpoint.
SHED_STATUS = 429


@dataclass(frozen=True, slots=True)
class ShedPlan:
    """Prefill-backlog shedding: a replica whose queued prefill work exceeds ``backlog_s`` seconds turns a new
    request away (``SHED_STATUS``) unless it is the last of ``attempts``, and Envoy retries it at once on another
    endpoint (previous-hosts predicate). A long prompt then waits behind no other prompt when some replica is free.

    Envoy carries it: the pool's weighted cluster adds ``SHED_BACKLOG_HEADER`` and ``SHED_ATTEMPTS_HEADER`` to each
    request, the virtual host sends ``x-envoy-attempt-count``, the route retries ``SHED_STATUS`` up to
    ``attempts - 1`` times and the cluster's retry budget is 100 % of active requests (a shed request holds at
    most one retry), so a retry is never refused for the budget. The last attempt is always accepted: nothing is
    lost to shedding.
    """

    #: Seconds of queued prefill work above which a replica sheds a new request.
    backlog_s: float = 0.5
    #: Attempts in all (the first and the retries); the last one is never shed.
    attempts: int = 3


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """A pool of interchangeable replicas: one Envoy cluster with its endpoints."""

    name: str
    endpoints: tuple[EndpointPlan, ...] = ()
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    #: Per-locality weights keyed by :attr:`Locality.key`. When set, the cluster uses
    #: locality-weighted load balancing; localities missing from the map get weight 1.
    locality_weights: tuple[tuple[str, int], ...] | None = None
    #: Per-locality priority keyed by :attr:`Locality.key` (0 = most preferred);
    #: traffic spills to priority 1 only when priority 0 is not healthy enough.
    locality_priorities: tuple[tuple[str, int], ...] | None = None
    outlier_detection: OutlierDetectionPlan | None = None
    #: Envoy slow start for new endpoints (round robin and least request only).
    slow_start_window_s: float | None = None
    slow_start_aggression: float = 1.0
    slow_start_min_weight_percent: float = 10.0
    connect_timeout_s: float = 1.0
    #: Speak HTTP/2 to the upstream (gRPC inference servers); HTTP/1.1 otherwise.
    http2: bool = False
    #: Active health check path (HTTP GET), or ``None`` for none.
    health_check_path: str | None = None
    health_check_interval_s: float = 1.0
    #: Maximum concurrent requests to the pool (Envoy circuit breaker), ``None`` = Envoy default.
    max_requests: int | None = None
    #: Prefix-cache affinity (Maglev with bounded loads replaces ``lb_policy``); ``None`` = off.
    prefix_routing: PrefixRoutingPlan | None = None
    #: Prefill-backlog shedding with retry elsewhere; ``None`` = off.
    shed: ShedPlan | None = None


@dataclass(frozen=True, slots=True)
class RetryPlan:
    retry_on: str = "connect-failure,refused-stream,reset,503"
    num_retries: int = 2
    per_try_timeout_s: float | None = None
    #: Retry budget as a fraction of active requests (Envoy circuit breaker retry_budget).
    budget_percent: float = 20.0
    #: Retries always allowed whatever the budget. Not Envoy's 3: a replica that dies resets every request it
    #: was serving at once (up to its batch size), and each needs its retry at that moment; with 3, some were
    #: refused (``upstream_rq_retry_overflow``) and lost (tests/faults, replica SIGKILL under load).
    budget_min_concurrency: int = 16


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """A routed service: requests matching ``hosts`` + ``prefix`` are split over pools by weight."""

    name: str
    #: (pool name, weight) pairs; weights are non-negative integers, at least one positive.
    pools: tuple[tuple[str, int], ...]
    hosts: tuple[str, ...] = ("*",)
    prefix: str = "/"
    #: RE2 path regex; when set it replaces ``prefix``.
    regex: str | None = None
    timeout_s: float = 60.0
    retry: RetryPlan | None = None
    #: Set when a pool of the service routes on the prompt prefix: the route hashes on the prefix key
    #: (the first such pool's extraction settings are used).
    prefix_routing: PrefixRoutingPlan | None = None


@dataclass(frozen=True, slots=True)
class ListenerPlan:
    name: str
    address: str
    port: int
    #: Names of the services carried by this listener, in match order.
    services: tuple[str, ...] = ()
    #: Carry the (per-route enabled) Lua filter that computes the prompt-prefix key.
    prefix_filter: bool = False


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """Everything Envoy needs, as values. Validated by :func:`xds_control.snapshot.build_snapshot`."""

    listeners: tuple[ListenerPlan, ...] = ()
    services: tuple[ServicePlan, ...] = ()
    pools: tuple[PoolPlan, ...] = ()
    #: Free-form labels carried into logs and the admin API (e.g. the decision that produced it).
    labels: tuple[tuple[str, str], ...] = field(default=())

    def pool(self, name: str) -> PoolPlan | None:
        for p in self.pools:
            if p.name == name:
                return p
        return None
