"""Fan-out benchmark: time from snapshot set to every stream ACKed, server CPU and memory per stream.

    .venv/bin/python bench/bench_fanout.py [--streams 1,100,1000] [--endpoints 100,10000] [--pushes 5]

The server (this process: cache, tracker, ADS server, publisher) and the clients
(bench/fanout_clients.py, one process, 1,000 streams over 50 connections) share
this 2-core machine. Each push changes every endpoint's weight, so the whole
ClusterLoadAssignment is new; the clients ACK each response. Reported per case:
median and max push time (snapshot set -> all ACKed), server CPU seconds per push,
server RSS growth per stream, and bytes per push.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xds_control.core.traffic import EndpointPlan, ListenerPlan, Locality, PoolPlan, ServicePlan, TrafficPlan  # noqa: E402
from xds_control.xds.cache import SnapshotCache  # noqa: E402
from xds_control.xds.metrics import XdsMetrics  # noqa: E402
from xds_control.xds.publisher import Publisher  # noqa: E402
from xds_control.xds.server import AdsServer  # noqa: E402
from xds_control.xds.status import SyncTracker  # noqa: E402


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_plan(n_endpoints: int, weight_seed: int) -> TrafficPlan:
    eps = tuple(
        EndpointPlan(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 8000,
                     Locality(zone=f"zone-{i % 3}"), weight=1 + (i + weight_seed) % 7)
        for i in range(n_endpoints)
    )
    return TrafficPlan(
        listeners=(ListenerPlan("ingress", "127.0.0.1", 10000, ("llm",)),),
        services=(ServicePlan("llm", (("llm", 1),)),),
        pools=(PoolPlan("llm", eps),),
    )


async def run_case(n_streams: int, n_endpoints: int, pushes: int, conns: int) -> dict[str, object]:
    metrics = XdsMetrics()
    tracker = SyncTracker()
    cache = SnapshotCache()
    pub = Publisher(cache, tracker, metrics, debounce_s=0, max_delay_s=0)
    ads = AdsServer(cache, tracker, metrics, max_concurrent_pushes=100)
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 256 * 1024 * 1024)])
    ads.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    plans = [make_plan(n_endpoints, s) for s in range(pushes + 1)]
    pub.publish_now(plans[0], "initial")
    rss0 = rss_kb()
    client = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fanout_clients.py")), f"127.0.0.1:{port}", str(n_streams),
         str(min(conns, n_streams)), "llm"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = await asyncio.to_thread(client.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == "ready", line
        res = await tracker.wait_acked(cache.snapshot.version, timeout=60)  # type: ignore[union-attr]
        assert res.ok, res
        times, cpus, sizes = [], [], []
        for i in range(1, pushes + 1):
            await asyncio.sleep(0.2)
            bytes_before = total_push_bytes(metrics)
            c0 = time.process_time()
            t0 = time.perf_counter()
            pub.publish_now(plans[i], f"push {i}")
            res = await tracker.wait_acked(cache.snapshot.version, timeout=120)  # type: ignore[union-attr]
            t1 = time.perf_counter()
            c1 = time.process_time()
            assert res.ok, res
            times.append(t1 - t0)
            cpus.append(c1 - c0)
            sizes.append(total_push_bytes(metrics) - bytes_before)
        rss1 = rss_kb()
        return {
            "streams": n_streams,
            "endpoints": n_endpoints,
            "push_s_median": round(statistics.median(times), 4),
            "push_s_max": round(max(times), 4),
            "server_cpu_s_per_push": round(statistics.median(cpus), 4),
            "bytes_per_push": int(statistics.median(sizes)),
            "rss_kb_per_stream": round((rss1 - rss0) / n_streams, 1),
        }
    finally:
        client.terminate()
        client.wait(10)
        await server.stop(0)


def total_push_bytes(metrics: XdsMetrics) -> float:
    return sum(s.value for m in metrics.push_bytes.collect() for s in m.samples if s.name.endswith("_total"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,100,1000")
    ap.add_argument("--endpoints", default="100,10000")
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    for e in (int(x) for x in a.endpoints.split(",")):
        for n in (int(x) for x in a.streams.split(",")):
            row = asyncio.run(run_case(n, e, a.pushes, a.connections))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if not a.json:
        print(f"\n{'streams':>8} {'endpoints':>9} {'push p50 s':>10} {'push max s':>10} {'cpu s/push':>10} "
              f"{'MB/push':>8} {'KB/stream':>9}")
        for r in rows:
            print(f"{r['streams']:>8} {r['endpoints']:>9} {r['push_s_median']:>10} {r['push_s_max']:>10} "
                  f"{r['server_cpu_s_per_push']:>10} {r['bytes_per_push'] / 1e6:>8.2f} {r['rss_kb_per_stream']:>9}")
    print(f"(cpu count {os.cpu_count()}; python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
