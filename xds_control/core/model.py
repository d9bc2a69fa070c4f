"""Signal, sample and decision value types shared by the decision core.

Contract:

* Everything here is an immutable value. Numpy arrays held by these types are
  private read-only copies (``flags.writeable == False``); building a value never
  mutates, and never aliases a writable array of, the caller.
* Units: utilizations and fractions are in ``[0, 1]`` (not percent), latencies in
  seconds, rates per second, times are float seconds on the caller's clock (the
  same clock as the ``now`` passed to policies; simulated time in the simulator,
  monotonic or wall time in the controller). Nothing here reads a clock.
* A missing measurement is ``None`` on :class:`EndpointSample` and ``NaN`` in the
  columnar :class:`SignalFrame`.

The hot path (10,000 endpoints in a few milliseconds) works on the columnar
:class:`SignalFrame`. :meth:`SignalFrame.from_samples` converts a list of
:class:`EndpointSample` for callers that scrape per endpoint; the simulator can
build a frame directly from numpy arrays with :meth:`SignalFrame.from_arrays`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

#: The numeric sample columns, in a fixed order (also the order of :class:`SignalFrame` columns).
SAMPLE_FIELDS: tuple[str, ...] = (
    "gpu_util",
    "gpu_mem",
    "cpu_util",
    "latency_s",
    "running",
    "waiting",
    "kv_cache",
    "rps",
    "taken_at",
)

#: ``sample -> tuple of its SAMPLE_FIELDS values`` (one C call instead of a getattr per field).
_SAMPLE_VALUES = operator.attrgetter(*SAMPLE_FIELDS)


@dataclass(frozen=True, slots=True)
class EndpointSample:
    """One scrape of one endpoint (an inference replica). Every field may be missing (``None``)."""

    #: GPU (SM) utilization, fraction 0..1. Known to be a weak signal for LLM serving
    #: (a single request can peg it, dcgm-exporter#301), so it is one term among several.
    gpu_util: float | None = None
    #: GPU memory in use, fraction 0..1 (the seed's 85-90 % trigger).
    gpu_mem: float | None = None
    #: CPU utilization of the replica, fraction 0..1 (the seed's 75-80 % trigger).
    cpu_util: float | None = None
    #: Request latency or time-to-first-token, seconds (the seed's 200 ms trigger).
    latency_s: float | None = None
    #: Requests being processed right now (vLLM ``num_requests_running``).
    running: float | None = None
    #: Requests queued at the engine (vLLM ``num_requests_waiting``).
    waiting: float | None = None
    #: KV-cache use, fraction 0..1 (vLLM ``kv_cache_usage_perc`` / 100 if scraped in percent).
    kv_cache: float | None = None
    #: Requests per second completed or admitted by this replica.
    rps: float | None = None
    #: When the sample was taken, seconds on the caller's clock. ``None`` means "untimed"
    #: and is treated as fresh (the caller vouches for it).
    taken_at: float | None = None


def _ro(a: Any, dtype: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=dtype)
    if arr.ndim == 0:
        arr = np.full(n, arr, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"column {name!r} has shape {arr.shape}, expected ({n},)")
    if arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False, slots=True)
class SignalFrame:
    """Columnar samples for the endpoints of one service: one row per endpoint, NaN = missing.

    ``ready`` says whether the endpoint passes its readiness check (only ready
    endpoints can serve or receive weight). ``locality`` indexes ``localities``
    (keys in :attr:`xds_control.core.traffic.Locality.key` form).
    """

    keys: tuple[str, ...]
    gpu_util: np.ndarray
    gpu_mem: np.ndarray
    cpu_util: np.ndarray
    latency_s: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    kv_cache: np.ndarray
    rps: np.ndarray
    taken_at: np.ndarray
    ready: np.ndarray
    locality: np.ndarray
    localities: tuple[str, ...] = ("",)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def in_flight(self) -> np.ndarray:
        """running + waiting per endpoint (NaN when both are missing; a missing half counts 0)."""
        both_missing = np.isnan(self.running) & np.isnan(self.waiting)
        with np.errstate(over="ignore"):  # two huge counts sum to inf, which is what they mean
            r, w = self.running, self.waiting  # NaN counts 0 (np.where: nan_to_num is slow per call)
            out: np.ndarray = np.where(np.isnan(r), 0.0, r) + np.where(np.isnan(w), 0.0, w)
        out[both_missing] = np.nan
        return out

    @classmethod
    def from_arrays(
        cls,
        keys: Sequence[str],
        *,
        ready: Any = True,
        locality: Any = 0,
        localities: Sequence[str] = ("",),
        **columns: Any,
    ) -> SignalFrame:
        """Build a frame from numpy-like columns named as in :data:`SAMPLE_FIELDS`; absent columns are all-NaN.

        Scalars broadcast. Arrays are copied only when writable, so the frame never aliases caller state.
        """
        keys = tuple(keys)
        n = len(keys)
        unknown = set(columns) - set(SAMPLE_FIELDS)
        if unknown:
            raise ValueError(f"unknown sample columns {sorted(unknown)}; allowed: {list(SAMPLE_FIELDS)}")
        cols = {
            name: _ro(columns.get(name, np.nan), np.float64, n, name) for name in SAMPLE_FIELDS
        }
        loc = _ro(locality, np.int32, n, "locality")
        localities = tuple(localities) or ("",)
        if n and (loc.min() < 0 or loc.max() >= len(localities)):
            raise ValueError(f"locality index out of range 0..{len(localities) - 1}")
        return cls(
            keys=keys,
            ready=_ro(ready, np.bool_, n, "ready"),
            locality=loc,
            localities=localities,
            **cols,
        )

    def take(self, index: Sequence[int]) -> SignalFrame:
        """The rows ``index`` of this frame, in that order (the same localities)."""
        idx = np.asarray(index, dtype=np.intp)
        cols = {f: getattr(self, f)[idx] for f in SAMPLE_FIELDS}
        return SignalFrame.from_arrays([self.keys[i] for i in idx.tolist()], ready=self.ready[idx],
                                       locality=self.locality[idx], localities=self.localities, **cols)

    @classmethod
    def from_samples(
        cls,
        samples: Mapping[str, EndpointSample | None] | Iterable[tuple[str, EndpointSample | None]],
        *,
        ready: Mapping[str, bool] | None = None,
        locality: Mapping[str, str] | None = None,
    ) -> SignalFrame:
        """Build a frame from per-endpoint samples keyed by endpoint key (``address:port``).

        A ``None`` sample means "no sample at all" (every column NaN, which the load index
        treats as stale, i.e. saturated). ``ready`` defaults to True, ``locality`` to ``""``.
        """
        items = list(samples.items()) if isinstance(samples, Mapping) else list(samples)
        keys = [k for k, _ in items]
        nan = np.nan
        empty = (nan,) * len(SAMPLE_FIELDS)
        rows = [empty if s is None else tuple(nan if v is None else v for v in _SAMPLE_VALUES(s)) for _, s in items]
        mat = np.array(rows, dtype=np.float64).reshape(len(items), len(SAMPLE_FIELDS))
        locs: dict[str, int] = {}
        loc_idx = []
        for k in keys:
            lk = (locality or {}).get(k, "")
            loc_idx.append(locs.setdefault(lk, len(locs)))
        return cls.from_arrays(
            keys,
            ready=[(ready or {}).get(k, True) for k in keys],
            locality=np.array(loc_idx, dtype=np.int32),
            localities=tuple(locs) or ("",),
            **{f: mat[:, i] for i, f in enumerate(SAMPLE_FIELDS)},
        )


@dataclass(frozen=True, eq=False, slots=True)
class ServiceSignals:
    """Everything a policy sees about one service at one instant."""

    service: str
    frame: SignalFrame
    #: Replicas the scaler currently asks for (Deployment ``spec.replicas``): ready + starting.
    current_replicas: int
    #: Replicas requested but not ready yet (starting, loading the model). ``None`` derives it as
    #: ``max(0, current_replicas - ready endpoints)``.
    pending_replicas: int | None = None
    #: Service-level request rate seen at the gateway, requests/s (optional; used for scale-from-zero
    #: and by policies configured on ``rps``).
    request_rate: float | None = None

    @property
    def ready_count(self) -> int:
        return int(np.count_nonzero(self.frame.ready))

    @property
    def pending(self) -> int:
        if self.pending_replicas is not None:
            return max(0, int(self.pending_replicas))
        return max(0, int(self.current_replicas) - self.ready_count)


@dataclass(frozen=True, slots=True)
class Reason:
    """One structured reason behind a decision (machine-readable twin of the explanation)."""

    #: Short stable code, e.g. ``load_above_high``, ``cooldown``, ``stale_as_saturated``, ``panic``.
    code: str
    #: Human sentence fragment.
    message: str
    #: Signal name the reason is about (``load``, ``cpu_util``, ``forecast`` ...), if any.
    signal: str | None = None
    value: float | None = None
    threshold: float | None = None


@dataclass(frozen=True, eq=False, slots=True)
class Decision:
    """What a policy decided for one service at ``now``."""

    policy: str
    service: str
    now: float
    current_replicas: int
    #: Replicas the service should have (already clamped to the spec's min/max and rate limits).
    target_replicas: int
    #: One or two short sentences: which signal, which threshold or forecast, why this count.
    explanation: str
    reasons: tuple[Reason, ...] = ()
    #: ``stable`` | ``panic`` | ``hold`` (policy-specific operating mode).
    mode: str = "stable"
    #: Service load index after smoothing, if the policy uses it.
    load_index: float | None = None
    #: Forecast demand peak (replica-equivalents) over the horizon, predictive policies only.
    forecast: float | None = None
    #: Ready endpoints whose samples were stale or absent (counted as saturated, or as missing for HPA/KPA),
    #: at most 100 keys.
    stale: tuple[str, ...] = ()
    #: The :class:`xds_control.loadindex.LoadReport` used, for planning (per-endpoint load). Typed
    #: loosely because ``core`` may not import ``loadindex``.
    load: Any = field(default=None, repr=False)

    @property
    def delta(self) -> int:
        return self.target_replicas - self.current_replicas

    @property
    def direction(self) -> str:
        return "up" if self.delta > 0 else "down" if self.delta < 0 else "hold"


class EndpointPhase(IntEnum):
    """Coordination phase of one endpoint (see :mod:`xds_control.planning.coordination`)."""

    #: Created, not ready (model loading). Not in EDS.
    PENDING = 0
    #: Ready, waiting out the warm-up period. Not in EDS.
    WARMING = 1
    #: In EDS, weight growing over the ramp window (clock starts when Envoy ACKs it).
    RAMPING = 2
    #: In EDS at full weight.
    SERVING = 3
    #: In EDS as DRAINING (no new requests); waiting for ACK and in-flight == 0.
    DRAINING = 4
    #: Drained; the scaler may delete it. Terminal.
    REMOVABLE = 5
