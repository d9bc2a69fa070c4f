"""The signal-source port: read per-endpoint load samples from somewhere.

A source returns a :class:`SignalReport`: one :class:`EndpointReading` per
requested endpoint key (``address:port``, the same key as
:attr:`xds_control.core.traffic.EndpointPlan.key`). A reading that failed (no
answer, bad answer, target down) or is stale (older than the source's
``max_age_s``) says so — ``error`` / ``stale`` — and its
:meth:`SignalReport.samples` entry is ``None``; it is never turned into zeros.
:meth:`xds_control.core.model.SignalFrame.from_samples` turns ``None`` into an
all-NaN row, which the load index treats as stale (saturated): a failed read
never causes a scale-down or a zero weight.

Sample values follow :class:`xds_control.core.model.EndpointSample` units:
fractions in 0..1, latency in seconds, rates per second, ``taken_at`` on the
caller's clock (derived from the ``now`` passed to :meth:`SignalSource.read`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from xds_control.core.model import EndpointSample

__all__ = ["EndpointReading", "SignalReport", "SignalSource", "EndpointSample"]


@dataclass(frozen=True)
class EndpointReading:
    key: str
    #: The sample, or ``None`` when the read failed. A stale reading keeps its (old) sample.
    sample: EndpointSample | None
    #: Why the read failed (``None`` when it did not).
    error: str | None = None
    #: The newest data is older than the source's ``max_age_s``.
    stale: bool = False
    #: Age of the data in seconds at read time, when known.
    age_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.sample is not None and self.error is None and not self.stale


@dataclass(frozen=True)
class SignalReport:
    source: str
    #: The ``now`` the caller passed to ``read``.
    now: float
    readings: Mapping[str, EndpointReading]
    #: A failure of the whole source (e.g. Prometheus unreachable); every reading then carries it too.
    error: str | None = None
    #: Seconds the read took.
    elapsed_s: float = 0.0
    extra: Mapping[str, object] = field(default_factory=dict)

    def samples(self, include_stale: bool = False) -> dict[str, EndpointSample | None]:
        """Per key: the sample if the read is good, else ``None`` (ready for ``SignalFrame.from_samples``)."""
        out: dict[str, EndpointSample | None] = {}
        for k, r in self.readings.items():
            good = r.sample is not None and r.error is None and (include_stale or not r.stale)
            out[k] = r.sample if good else None
        return out

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(k for k, r in self.readings.items() if r.sample is None or r.error is not None)

    @property
    def stale(self) -> tuple[str, ...]:
        return tuple(k for k, r in self.readings.items() if r.stale)

    @property
    def ok(self) -> bool:
        return self.error is None and all(r.ok for r in self.readings.values())


@runtime_checkable
class SignalSource(Protocol):
    """Reads samples for a set of endpoints. Never raises for an endpoint's failure; reports it."""

    name: str

    async def read(self, endpoints: Sequence[str], now: float) -> SignalReport:
        """One sample per endpoint key (``address:port``); ``now`` is the caller's clock."""
        ...

    async def close(self) -> None: ...
