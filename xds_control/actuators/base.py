"""The Scaler port: what the controller needs from whatever starts and stops replicas.

:class:`~xds_control.actuators.local.LocalScaler` implements it with local
processes; a Kubernetes scaler can implement it with pods. The controller only
sees :class:`ReplicaInfo` snapshots (immutable values) and drives each replica
through its own endpoint lifecycle from them.

State machine of one replica as a scaler reports it::

    starting ──(health 200)──> ready ──(stop_replica)──> stopping ──> (gone from list())
        │                        │
        └──(exit / ready timeout)┴──(process exits on its own)──> failed ──(stop_replica)──> (gone)

A ``failed`` replica stays in :meth:`Scaler.list` until the controller calls
:meth:`Scaler.stop_replica` on it (acknowledging the failure), so a crash is never
missed between two ticks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable


class ReplicaState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass(frozen=True)
class ReplicaOptions:
    """Per-replica knobs passed to the replica (``None`` = the profile's default)."""

    #: Seconds of emulated model load before /health is 200.
    load_delay_s: float | None = None
    #: Multiplies every step time (a slower GPU).
    slow_factor: float | None = None
    #: Fraction of requests answered with HTTP 500.
    fail_rate: float | None = None
    max_num_seqs: int | None = None
    max_queue: int | None = None
    kv_capacity_tokens: int | None = None
    seed: int | None = None
    #: Further command-line arguments, appended verbatim.
    extra_args: tuple[str, ...] = ()

    def to_args(self) -> list[str]:
        out: list[str] = []
        for flag, v in (
            ("--load-delay", self.load_delay_s),
            ("--slow-factor", self.slow_factor),
            ("--fail-rate", self.fail_rate),
            ("--max-num-seqs", self.max_num_seqs),
            ("--max-queue", self.max_queue),
            ("--kv-capacity-tokens", self.kv_capacity_tokens),
            ("--seed", self.seed),
        ):
            if v is not None:
                out += [flag, str(v)]
        return out + list(self.extra_args)


@dataclass(frozen=True)
class ReplicaInfo:
    """A snapshot of one replica. Times are wall-clock seconds (``time.time()``)."""

    id: str
    pool: str
    profile: str
    address: str
    port: int
    pid: int | None
    state: ReplicaState
    started_at: float
    ready_at: float | None = None
    #: Exit status once the process ended (negative: killed by that signal).
    exit_code: int | None = None
    #: Why the replica failed (exit, ready timeout), with the tail of its log.
    reason: str = ""
    options: ReplicaOptions = field(default_factory=ReplicaOptions)
    #: Topology, when the scaler knows it (Kubernetes: the EndpointSlice's ``zone`` and ``nodeName``);
    #: the controller uses ``zone`` as the endpoint's Envoy locality zone when it is set.
    zone: str = ""
    node: str = ""

    @property
    def key(self) -> str:
        """``address:port`` — the same key as :attr:`xds_control.core.traffic.EndpointPlan.key`."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


class ReplicaFailed(Exception):
    """A replica failed while the caller waited for it to become ready."""

    def __init__(self, info: ReplicaInfo) -> None:
        super().__init__(f"replica {info.id} ({info.key}) failed: {info.reason}")
        self.info = info


@runtime_checkable
class Scaler(Protocol):
    """Starts and stops replicas of named pools. All methods are called from one event loop."""

    async def start_replica(
        self, pool: str, profile: str | None = None, options: ReplicaOptions | None = None
    ) -> ReplicaInfo:
        """Begin starting a replica; returns at once with ``state=starting`` and its address."""
        ...

    async def stop_replica(self, replica_id: str, timeout_s: float | None = None) -> None:
        """Stop a replica gracefully (SIGTERM, then SIGKILL after ``timeout_s``) and forget it.

        Also the way to acknowledge a ``failed`` replica. Unknown ids are ignored.
        """
        ...

    async def wait_ready(self, replica_id: str, timeout_s: float | None = None) -> ReplicaInfo:
        """Wait until the replica is ready; raises :class:`ReplicaFailed` or ``TimeoutError``."""
        ...

    def list(self) -> list[ReplicaInfo]:
        """Snapshots of every replica not yet stopped (including failed ones), oldest first."""
        ...

    async def close(self) -> None:
        """Stop every replica this scaler started. Idempotent."""
        ...
