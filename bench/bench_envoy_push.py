"""Push to one real Envoy: time from snapshot set to Envoy's ACK, over N pushes, SotW and Delta.

    .venv/bin/python bench/bench_envoy_push.py [--pushes 200] [--endpoints 10]

Each push changes one endpoint weight (a new ClusterLoadAssignment version).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.envoy import Envoy  # noqa: E402
from support.ports import free_port  # noqa: E402

from xds_control.config import parse_config, to_traffic_plan  # noqa: E402
from xds_control.runtime.app import ControlPlane  # noqa: E402


def config(n: int, port: int) -> dict:
    return {
        "listeners": [{"name": "ingress", "port": port}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "endpoints": [
            {"address": "127.0.0.1", "port": 20000 + i} for i in range(n)]}]}],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }


async def run(delta: bool, pushes: int, n: int) -> dict[str, object]:
    cfg = parse_config(config(n, free_port()))
    cp = ControlPlane(cfg, xds_port=0, metrics_port=None)
    await cp.start()
    envoy = Envoy("bench", cp.ports.xds, delta=delta).start()
    try:
        res = None
        for _ in range(200):
            await asyncio.sleep(0.05)
            if cp.tracker.proxies() and len(cp.tracker.proxies()[0].types) == 4:
                res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=10)
                if res.ok:
                    break
        assert res is not None and res.ok, res
        base = to_traffic_plan(cfg)
        times = []
        for i in range(pushes):
            pool = base.pools[0]
            eps = list(pool.endpoints)
            eps[i % n] = dataclasses.replace(eps[i % n], weight=2 + i % 50)
            plan = dataclasses.replace(base, pools=(dataclasses.replace(pool, endpoints=tuple(eps)),))
            t0 = time.perf_counter()
            snap = cp.publisher.publish_now(plan, f"bench {i}")
            r = await cp.tracker.wait_acked(snap.version, timeout=10)
            times.append(time.perf_counter() - t0)
            assert r.ok, r
            await asyncio.sleep(0.005)
        times.sort()
        return {"protocol": "delta" if delta else "sotw", "pushes": pushes, "endpoints": n,
                "ack_ms_p50": round(statistics.median(times) * 1000, 2),
                "ack_ms_p99": round(times[int(0.99 * (len(times) - 1))] * 1000, 2),
                "ack_ms_max": round(times[-1] * 1000, 2)}
    finally:
        envoy.stop()
        await cp.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=200)
    ap.add_argument("--endpoints", type=int, default=10)
    a = ap.parse_args()
    for delta in (False, True):
        print(json.dumps(asyncio.run(run(delta, a.pushes, a.endpoints))), flush=True)


if __name__ == "__main__":
    main()
