"""Soak: 1,000 ADS streams held for N minutes with a push every second; then every client disconnects.

    .venv/bin/python bench/bench_soak.py [--minutes 10] [--streams 1000] [--endpoints 100] [--json]

The server is a whole ``ControlPlane`` in this process (ADS server, tracker, publisher and its debounce
loop, metrics); the clients are ``bench/fanout_clients.py`` in one separate process (1,000 streams over
50 gRPC connections, subscribing CDS + EDS and ACKing every response like Envoy). Every second the plan
changes (every endpoint weight), so every stream gets and ACKs a new ClusterLoadAssignment.

Checked (exit status 1 if any fails), the failure go-control-plane#597 is the example of:

* RSS at the end of the soak is at most 10 % above RSS after the warm-up (the first ``--warmup-s``);
* after the clients disconnect, the asyncio tasks, open file descriptors and per-proxy state (tracked
  proxies, ACK waiters, open streams, snapshot subscribers) are back to what they were before any client
  connected — and stay there after a second connect/disconnect cycle;
* every push was ACKed by every stream (push time = snapshot set -> all ACKed, p50/p99/max reported).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xds_control.config import parse_config, to_traffic_plan  # noqa: E402
from xds_control.runtime.app import ControlPlane  # noqa: E402


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def config(endpoints: int, seed: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "port": 10000}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "endpoints": [
            {"address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", "port": 8000, "zone": f"zone-{i % 3}",
             "weight": 1 + (i + seed) % 7} for i in range(endpoints)]}]}],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }


def state(cp: ControlPlane) -> dict[str, int]:
    """What must not grow: process resources and every per-proxy structure."""
    gc.collect()
    return {
        "rss_kb": rss_kb(),
        "tasks": len(asyncio.all_tasks()),
        "fds": len(os.listdir("/proc/self/fd")),
        "proxies": len(cp.tracker.proxies()),
        "ack_waiters": len(cp.tracker._waiters),
        "streams": len(cp.ads._streams),
        "subscribers": len(cp.cache._subscribers),
        "set_at": len(cp.cache.set_at),
        "shared_bodies": len(cp.ads._bodies),
    }


class Clients:
    def __init__(self, xds_port: int, streams: int, connections: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fanout_clients.py")), f"127.0.0.1:{xds_port}",
             str(streams), str(min(connections, streams)), "llm"], stdout=subprocess.PIPE, text=True)

    async def ready(self) -> None:
        line = await asyncio.to_thread(self.proc.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == "ready", f"clients did not start: {line!r}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # the bench's own pipe: not the server's fd to count


async def pushes(cp: ControlPlane, plans: list[Any], seconds: float, times: list[float], late: list[int],
                 samples: list[dict[str, Any]] | None = None, sample_every_s: float = 10.0) -> None:
    """One push per second for ``seconds``; records push time (set -> every stream ACKed)."""
    loop = asyncio.get_running_loop()
    t_start = loop.time()
    next_sample = t_start
    i = 0
    while loop.time() - t_start < seconds:
        tick = loop.time()
        snap = cp.publisher.publish_now(plans[i % len(plans)], reason="soak")
        i += 1
        res = await cp.tracker.wait_acked(snap.version, timeout=10)
        if res.ok:
            times.append(loop.time() - tick)
        else:
            late.append(snap.version)
        if samples is not None and loop.time() >= next_sample:
            samples.append({"t_s": round(loop.time() - t_start, 1), **state(cp)})
            next_sample += sample_every_s
        await asyncio.sleep(max(0.0, tick + 1.0 - loop.time()))


async def until_no_proxies(cp: ControlPlane, timeout: float = 60) -> float:
    t0 = time.monotonic()
    while cp.tracker.proxies() or cp.ads._streams:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{len(cp.tracker.proxies())} proxies still tracked {timeout} s after disconnect")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def run(a: argparse.Namespace) -> dict[str, Any]:
    plans = [to_traffic_plan(parse_config(config(a.endpoints, s))) for s in range(7)]
    cp = ControlPlane(parse_config(config(a.endpoints, 0)), xds_port=0, metrics_port=None)
    await cp.start()
    try:
        await asyncio.sleep(1.0)
        idle = state(cp)
        times: list[float] = []
        late: list[int] = []
        c0 = time.process_time()
        clients = Clients(cp.ports.xds, a.streams, a.connections)
        try:
            await clients.ready()
            await pushes(cp, plans, a.warmup_s, [], [])
            warm = state(cp)
            samples: list[dict[str, Any]] = []
            t0 = time.monotonic()
            await pushes(cp, plans, a.minutes * 60, times, late, samples)
            soak_wall = time.monotonic() - t0
            end = state(cp)
        finally:
            clients.stop()
        cpu = time.process_time() - c0
        gone_s = await until_no_proxies(cp)
        await asyncio.sleep(3.0)
        after1 = state(cp)
        # A second cycle: connect and disconnect again; nothing may be left over from either.
        clients = Clients(cp.ports.xds, a.streams, a.connections)
        try:
            await clients.ready()
            await pushes(cp, plans, 20, [], late)
        finally:
            clients.stop()
        await until_no_proxies(cp)
        await asyncio.sleep(3.0)
        after2 = state(cp)
    finally:
        await cp.stop(grace=0)
    n = len(times)
    growth = 100.0 * (end["rss_kb"] - warm["rss_kb"]) / warm["rss_kb"]
    slope = 0.0
    if len(samples) >= 2:
        xs = [s["t_s"] / 60 for s in samples]
        ys = [s["rss_kb"] for s in samples]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0
    per_proxy = ("tasks", "fds", "proxies", "ack_waiters", "streams", "subscribers")
    checks = {
        "rss_growth_le_10pct": growth <= 10.0,
        "every_push_acked": not late,
        "state_back_after_disconnect": all(after1[k] <= idle[k] for k in per_proxy),
        "state_back_after_second_cycle": all(after2[k] <= idle[k] for k in per_proxy),
    }
    return {
        "streams": a.streams, "endpoints": a.endpoints, "minutes": a.minutes, "pushes": n + len(late),
        "pushes_not_acked_in_10s": len(late), "soak_wall_s": round(soak_wall, 1),
        "push_p50_s": round(statistics.median(times), 4) if times else None,
        "push_p99_s": round(sorted(times)[min(n - 1, int(0.99 * n))], 4) if times else None,
        "push_max_s": round(max(times), 4) if times else None,
        "server_cpu_s_per_push": round(cpu / max(1, n), 4),
        "rss_mb_idle": round(idle["rss_kb"] / 1024, 1), "rss_mb_after_warmup": round(warm["rss_kb"] / 1024, 1),
        "rss_mb_end": round(end["rss_kb"] / 1024, 1),
        "rss_mb_max": round(max(s["rss_kb"] for s in samples) / 1024, 1) if samples else None,
        "rss_growth_pct": round(growth, 2), "rss_slope_kb_per_min": round(slope, 1),
        "disconnect_cleanup_s": round(gone_s, 2),
        "idle": idle, "connected_end": end, "after_disconnect": after1, "after_second_cycle": after2,
        "samples": samples, "checks": checks, "ok": all(checks.values()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--endpoints", type=int, default=100)
    ap.add_argument("--warmup-s", type=float, default=30.0)
    ap.add_argument("--json", action="store_true", help="print the whole result (with samples) as JSON")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    r = asyncio.run(run(a))
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        for k, v in r.items():
            if k not in ("samples", "idle", "connected_end", "after_disconnect", "after_second_cycle"):
                print(f"{k:>28}: {v}")
        print(f"{'state':>28}: " + "  ".join(f"{k}" for k in r["idle"]))
        for name in ("idle", "connected_end", "after_disconnect", "after_second_cycle"):
            print(f"{name:>28}: " + "  ".join(f"{v}" for v in r[name].values()))
    print(f"(cpu count {os.cpu_count()}; python {sys.version.split()[0]})", file=sys.stderr if a.json else sys.stdout)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
