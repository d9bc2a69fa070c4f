"""The evaluation metrics, computed from one :class:`~xds_control.sim.engine.SimResult`.

Every key of the ``--json`` output is defined here (EVALUATION.md repeats these definitions):

``trigger_delay_s_mean`` / ``trigger_delay_s_max``
    Per *surge episode*: seconds from the moment the offered load first exceeds the ready capacity
    × the policy's ``target_util`` until the policy's first scale-up action. Offered load at a
    sample is the cost-model work (:func:`xds_control.fleet.costmodel.request_work_s`) of the requests
    that arrived in the preceding ``LOAD_WINDOW_S`` seconds, per second, in replica-equivalents.
    An episode is a run of samples above that line; runs closer than ``LOAD_WINDOW_S`` are merged
    and episodes shorter than ``MIN_EPISODE_S`` are ignored. A scale-up made up to one cold start
    *before* the episode began counts as delay 0 (the capacity was already on its way). An episode
    with no scale-up before it ends counts its whole length (censored; see
    ``untriggered_episodes``). 0 when the policy scaled up and no episode happened (it was never
    late); ``null`` for a fleet that cannot scale (``fixed``) or when there was neither an episode
    nor a scale-up.
``latency_p50_ms`` / ``latency_p99_ms``
    End-to-end latency (arrival → last token) over served requests; requests that timed out count
    as the timeout (the client waited that long). Rejected and failed requests are excluded (they
    are task loss).
``latency_peak_ms``
    The highest p99 latency of any ``LOAD_WINDOW_S`` window of arrivals.
``ttft_p99_ms``
    p99 time to first token over the same requests as the latency (timeouts count as the timeout).
``gpu_util_mean``
    Mean cost-model GPU utilisation of the ready replicas, averaged over replica-time.
``overload_time_frac``
    Fraction of ``LOAD_WINDOW_S`` windows of the run in which some arriving request was lost or
    their p99 *wait* exceeded the wait SLO (``wait_slo_ms``, 1 s). A request's wait is its TTFT
    minus its own prefill time (:func:`xds_control.fleet.costmodel.prefill_time_s`): the time it spent
    queued or stalled behind other prompts. (TTFT itself is not a usable SLO on traces whose
    prompts alone take more than a second to prefill.)
``hotspot_ratio_p99``
    At each sample, the busiest ready replica's active requests (running + waiting) over the
    mean across ready replicas, for samples where that mean is at least 1; the p99 over time.
    1.0 is perfect balance.
``recovery_s``
    After ``--failure-at``: seconds from the failure until the first sample at which the fleet has
    at least as many ready replicas as just before the failure (or as its current target, if the
    policy has since lowered it) *and* the requests arriving in the
    preceding ``LOAD_WINDOW_S`` had p99 wait within the wait SLO and no loss. ``null`` without failure;
    if never recovered, the time to the end of the run (``recovered`` is then false).
``task_loss_rate``
    Lost requests / all requests. Lost = rejected (queue full, no ready replica, cannot fit the KV
    cache), timed out, or failed while streaming on a replica that died.
``gpu_hours``
    GPU time of every replica from the moment it was started (cold start included) until it was
    gone (draining included), in hours.
``scaling_actions_per_min_max``
    Most changes of the replica target inside any 60 s window.
``replicas_max``
    Most replicas provisioned (starting + ready + draining) at any sample.


SLO metrics (the serving-systems field's: DistServe, Sarathi-Serve, Splitwise report these)
-----------------------------------------------------------------------------------------
Per request (:func:`request_slo`):

* **TTFT** = first token - arrival.
* **TPOT** (time per output token after the first) = (finish - first token) / (output_tokens - 1);
  undefined for a 1-token output, which then meets the TPOT bound.
* **met the SLO** = served (status ok) *and* TTFT <= its TTFT bound *and* TPOT <= the TPOT bound.
  The TTFT bound is, by default, the request's own uncached prefill time
  (:func:`xds_control.fleet.costmodel.prefill_time_s` of its prompt) + ``ttft_slack_s`` (1 s); with a fixed
  ``ttft_s`` it is that for every request. The TPOT bound is ``tpot_ms`` (100 ms). See :class:`Slo`
  (``evaluate --slo-ttft-s / --slo-ttft-slack-s / --slo-tpot-ms``). A lost request (rejected, timed out,
  failed) is a miss.

Per run:

``slo_attainment``
    Requests that met the SLO / all requests (lost ones count as misses).
``goodput_rps``
    Requests that met the SLO per second of the run (``end_t``: last arrival, rounded up to a sample).
``goodput_per_gpu_hour``
    Requests that met the SLO per GPU-hour (``gpu_hours``): goodput per GPU, the cost-efficiency figure.
``ttft_p50_ms`` / ``ttft_p90_ms``
    Percentiles of TTFT over the requests of ``ttft_p99_ms`` (served; timeouts count as the timeout).
``tpot_p50_ms`` / ``tpot_p99_ms``
    Percentiles of TPOT over served requests with at least 2 output tokens.

Extra keys: ``requests``, ``tasks_lost``, ``surge_episodes``, ``untriggered_episodes``,
``energy_kwh`` (cost-model power integrated over the run), ``wait_slo_ms``, ``wait_p99_ms``,
``recovered``,
``lb``, ``target_util``, ``shed_retries`` (requests a replica shed for its prefill backlog and Envoy retried
elsewhere), ``slo_met`` (requests that met the SLO), ``slo_ttft_s`` (the fixed TTFT bound,
``null`` = own prefill + slack), ``slo_ttft_slack_s``, ``slo_tpot_ms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from xds_control.fleet import costmodel as cm
from xds_control.sim.cache_metrics import compute_cache_metrics
from xds_control.sim.controller import WAIT_SLO_S
from xds_control.sim.engine import STATUS, SimResult

__all__ = [
    "LOAD_WINDOW_S",
    "MIN_EPISODE_S",
    "DEFAULT_SLO",
    "RequestSlo",
    "Slo",
    "compute_metrics",
    "offered_load_series",
    "request_slo",
    "windowed_p99",
]

LOAD_WINDOW_S = 10.0
MIN_EPISODE_S = 10.0

_OK = STATUS["ok"]
_TMO = STATUS["timeout"]
#: Slack of the SLO comparisons (simulated times are sums of floats).
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Slo:
    """The service-level objective a request must meet (see the module docstring)."""

    #: A fixed TTFT bound in seconds for every request; None = the request's own prefill time + ``ttft_slack_s``.
    ttft_s: float | None = None
    #: Seconds of queueing allowed on top of the request's own prefill time (when ``ttft_s`` is None).
    ttft_slack_s: float = 1.0
    #: Bound on the mean time per output token after the first, in milliseconds.
    tpot_ms: float = 100.0

    def __post_init__(self) -> None:
        if self.ttft_s is not None and not (math.isfinite(self.ttft_s) and self.ttft_s > 0):
            raise ValueError(f"Slo.ttft_s must be a number of seconds > 0, got {self.ttft_s!r}")
        if not (math.isfinite(self.ttft_slack_s) and self.ttft_slack_s >= 0):
            raise ValueError(f"Slo.ttft_slack_s must be a number of seconds >= 0, got {self.ttft_slack_s!r}")
        if not (math.isfinite(self.tpot_ms) and self.tpot_ms > 0):
            raise ValueError(f"Slo.tpot_ms must be a number of milliseconds > 0, got {self.tpot_ms!r}")

    def ttft_bound_s(self, profile: cm.ReplicaProfile, input_tokens: np.ndarray) -> np.ndarray:
        """Each request's TTFT bound in seconds."""
        if self.ttft_s is not None:
            return np.full(len(input_tokens), float(self.ttft_s))
        return np.asarray(cm.prefill_time_s(profile, input_tokens.astype(np.float64))) + self.ttft_slack_s

    def describe(self) -> str:
        if self.ttft_s is not None:
            ttft = f"TTFT <= {self.ttft_s:g} s"
        else:
            ttft = f"TTFT <= own prefill + {self.ttft_slack_s:g} s"
        return f"{ttft}, TPOT <= {self.tpot_ms:g} ms"


#: TTFT <= own prefill + 1 s, TPOT <= 100 ms.
DEFAULT_SLO = Slo()


@dataclass(frozen=True, slots=True)
class RequestSlo:
    """Per-request SLO outcome, aligned with the trace (NaN where undefined)."""

    #: Seconds from arrival to the first token (NaN: no first token).
    ttft_s: np.ndarray
    #: Mean seconds per output token after the first (NaN: not served, or a 1-token output).
    tpot_s: np.ndarray
    #: The request's TTFT bound in seconds.
    ttft_bound_s: np.ndarray
    #: Whether the request met the SLO (lost requests: False).
    met: np.ndarray


def request_slo(res: SimResult, slo: Slo = DEFAULT_SLO) -> RequestSlo:
    """TTFT, TPOT and whether each request of ``res`` met ``slo`` (see the module docstring)."""
    ok = res.status == _OK
    ttft = res.ttft - res.arrival
    multi = ok & (res.output_tokens >= 2)
    tpot = np.full(len(res.arrival), np.nan)
    tpot[multi] = (res.finish[multi] - res.ttft[multi]) / (res.output_tokens[multi] - 1)
    bound = slo.ttft_bound_s(res.profile, res.input_tokens)
    with np.errstate(invalid="ignore"):
        ttft_ok = ttft <= bound + _EPS
        tpot_ok = ~multi | (tpot <= slo.tpot_ms / 1000.0 + _EPS)
    met = ok & ttft_ok & tpot_ok
    return RequestSlo(ttft_s=ttft, tpot_s=tpot, ttft_bound_s=bound, met=met)


def offered_load_series(res: SimResult, window_s: float = LOAD_WINDOW_S) -> np.ndarray:
    """Offered load (replica-equivalents) at each sample time, over the preceding ``window_s``."""
    cum = np.concatenate(([0.0], np.cumsum(res.work)))
    hi = np.searchsorted(res.arrival, res.ts_t, side="right")
    lo = np.searchsorted(res.arrival, res.ts_t - window_s, side="right")
    return (cum[hi] - cum[lo]) / window_s


def windowed_p99(keys: np.ndarray, values: np.ndarray, n_bins: int) -> np.ndarray:
    """Nearest-rank p99 of ``values`` grouped by integer ``keys`` in [0, n_bins); NaN for empty bins."""
    outp = np.full(n_bins, np.nan)
    if len(values) == 0:
        return outp
    order = np.lexsort((values, keys))
    k = keys[order]
    v = values[order]
    counts = np.bincount(k, minlength=n_bins)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    nz = counts > 0
    idx = starts[nz] + np.maximum(np.ceil(0.99 * counts[nz]).astype(np.int64) - 1, 0)
    outp[nz] = v[idx]
    return outp


def _pct(x: np.ndarray, q: float) -> float | None:
    if len(x) == 0:
        return None
    return float(np.percentile(x, q))


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 3)


def _surge_episodes(res: SimResult, load: np.ndarray) -> list[tuple[float, float]]:
    cap = res.ts_ready * res.target_util
    over = load > cap + 1e-12
    eps: list[list[float]] = []
    dt = res.sample_s
    for t, o in zip(res.ts_t.tolist(), over.tolist(), strict=True):
        if not o:
            continue
        if eps and t - eps[-1][1] <= LOAD_WINDOW_S + 1e-9:
            eps[-1][1] = t
        else:
            eps.append([t, t])
    return [(s - dt, e) for s, e in eps if e - (s - dt) >= MIN_EPISODE_S - 1e-9]


def compute_metrics(res: SimResult, slo: Slo = DEFAULT_SLO) -> dict[str, Any]:
    """All metrics of one run as a JSON-ready dict (see the module docstring); ``slo`` is the request SLO."""
    p = res.profile
    timeout = p.request_timeout_s
    n = len(res.arrival)
    st = res.status
    wait_slo = WAIT_SLO_S

    served = (st == _OK) | (st == _TMO)
    lat = np.where(st == _TMO, timeout, res.finish - res.arrival)[served]
    ttft_all = res.ttft - res.arrival
    ttft = np.where((st == _TMO) | np.isnan(ttft_all), timeout, ttft_all)[served]
    ttft = np.minimum(ttft, timeout)
    prefill = np.asarray(cm.prefill_time_s(p, res.input_tokens.astype(np.float64)))
    wait_all = ttft_all - prefill  # NaN where no first token
    wait = np.maximum(ttft - prefill[served], 0.0)

    # windowed latency / ttft by arrival window
    n_win = max(1, int(math.ceil(res.end_t / LOAD_WINDOW_S)))
    win = np.minimum((res.arrival // LOAD_WINDOW_S).astype(np.int64), n_win - 1)
    lat_w = windowed_p99(win[served], lat, n_win)
    wait_w = windowed_p99(win[served], wait, n_win)
    lost = (st != _OK) & (st != STATUS["pending"])
    lost_w = np.bincount(win[lost], minlength=n_win) > 0
    overload = lost_w | (np.nan_to_num(wait_w, nan=0.0) > wait_slo)

    # trigger delay
    load = offered_load_series(res)
    episodes = _surge_episodes(res, load)
    ups = [t for t, old, new in res.actions if new > old]
    delays: list[float] = []
    untriggered = 0
    for s, e in episodes:
        pre = [u for u in ups if s - p.cold_start_s <= u <= s]
        if pre:
            delays.append(0.0)
            continue
        after = [u for u in ups if s <= u <= e]
        if after:
            delays.append(after[0] - s)
        else:
            delays.append(e - s)
            untriggered += 1
    if not res.scales:
        td_mean = td_max = None  # the fixed fleet never triggers
    elif not delays:
        # offered load never outran capacity x target: never late (null if it never had to scale)
        td_mean = td_max = 0.0 if ups else None
    else:
        td_mean = round(float(np.mean(delays)), 3)
        td_max = round(float(np.max(delays)), 3)

    # hotspot
    m = res.ts_active_mean >= 1.0
    hot = res.ts_active_max[m] / res.ts_active_mean[m]
    hotspot = round(float(np.percentile(hot, 99)), 3) if len(hot) else 1.0

    # recovery
    recovery: float | None = None
    recovered: bool | None = None
    if res.failure_at is not None:
        recovered = False
        f = res.failure_at
        k0 = int(np.searchsorted(res.ts_t, f, side="left"))
        for k in range(k0, len(res.ts_t)):
            t = res.ts_t[k]
            if res.ts_ready[k] < min(res.pre_failure_ready, res.ts_target[k]):
                continue
            lo = int(np.searchsorted(res.arrival, t - LOAD_WINDOW_S, side="right"))
            hi = int(np.searchsorted(res.arrival, t, side="right"))
            seg_st = st[lo:hi]
            if np.any((seg_st != _OK) & (seg_st != STATUS["pending"])):
                continue
            seg_wait = wait_all[lo:hi]
            seg_wait = seg_wait[~np.isnan(seg_wait)]
            if len(seg_wait) and float(np.percentile(seg_wait, 99)) > wait_slo:
                continue
            recovery = float(t - f)
            recovered = True
            break
        if recovery is None:
            recovery = float(res.end_t - f)
        recovery = round(recovery, 3)

    # scaling actions per minute
    at = np.array([a[0] for a in res.actions])
    apm = int(np.max(np.searchsorted(at, at + 60.0, side="left") - np.arange(len(at)))) if len(at) else 0

    nlost = int(np.count_nonzero(lost))
    util_w = float(np.sum(res.ts_ready))

    # SLO attainment and goodput
    rs = request_slo(res, slo)
    nmet = int(np.count_nonzero(rs.met))
    gpu_h = res.gpu_seconds / 3600.0
    tpot = rs.tpot_s[~np.isnan(rs.tpot_s)]
    out: dict[str, Any] = {
        "trigger_delay_s_mean": td_mean,
        "trigger_delay_s_max": td_max,
        "latency_p50_ms": _ms(_pct(lat, 50)),
        "latency_p99_ms": _ms(_pct(lat, 99)),
        "latency_peak_ms": _ms(float(np.nanmax(lat_w)) if np.any(~np.isnan(lat_w)) else None),
        "ttft_p99_ms": _ms(_pct(ttft, 99)),
        "gpu_util_mean": round(float(np.sum(res.ts_util * res.ts_ready)) / util_w, 4) if util_w else 0.0,
        "overload_time_frac": round(float(np.mean(overload)), 4),
        "hotspot_ratio_p99": hotspot,
        "recovery_s": recovery,
        "task_loss_rate": round(nlost / n, 6) if n else 0.0,
        "gpu_hours": round(res.gpu_seconds / 3600.0, 4),
        "scaling_actions_per_min_max": apm,
        "replicas_max": int(res.ts_provisioned.max()) if len(res.ts_provisioned) else 0,
        # extras
        "requests": int(n),
        "tasks_lost": nlost,
        "surge_episodes": len(episodes),
        "untriggered_episodes": untriggered,
        "energy_kwh": round(res.energy_j / 3.6e6, 4),
        "wait_p99_ms": _ms(_pct(wait, 99)),
        "wait_slo_ms": _ms(wait_slo),
        "recovered": recovered,
        "lb": res.lb,
        "target_util": res.target_util,
        "shed_retries": int(res.shed_retries),
        # SLO
        "slo_attainment": round(nmet / n, 6) if n else 1.0,
        "goodput_rps": round(nmet / res.end_t, 6) if res.end_t > 0 else 0.0,
        "goodput_per_gpu_hour": round(nmet / gpu_h, 3) if gpu_h > 0 else 0.0,
        "ttft_p50_ms": _ms(_pct(ttft, 50)),
        "ttft_p90_ms": _ms(_pct(ttft, 90)),
        "tpot_p50_ms": _ms(_pct(tpot, 50)),
        "tpot_p99_ms": _ms(_pct(tpot, 99)),
        "slo_met": nmet,
        "slo_ttft_s": slo.ttft_s,
        "slo_ttft_slack_s": slo.ttft_slack_s,
        "slo_tpot_ms": slo.tpot_ms,
    }
    out.update(compute_cache_metrics(res))  # prefix-cache keys, all null when the trace has no hash_ids
    return out
