"""Kubernetes figures against the in-process fake apiserver (tests/fakekube; it stands in for a cluster here).

    .venv/bin/python bench/bench_kube.py [--runs 5]

* leader handover with client-go-style timings scaled down (lease 2 s, renew deadline 1.5 s, retry 0.2 s):
  after a clean stop (the leader releases the Lease) and after the leader is cut off from the apiserver
  (its requests get 503): when the old leader stops deciding and when the follower leads;
* EndpointSlice change -> the scaler's ``list()`` (watch event latency through the real client).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakekube import FakeKube  # noqa: E402

from xds_control.actuators.kubernetes import KubePool, KubernetesScaler, make_api_client  # noqa: E402
from xds_control.actuators.leader import LeaseElector  # noqa: E402

TIMINGS = {"lease_duration_s": 2.0, "renew_deadline_s": 1.5, "retry_period_s": 0.2}


async def handover(kube: FakeKube, tmp: Path, cut: bool) -> tuple[float, float]:
    a = LeaseElector(make_api_client(str(kube.kubeconfig(tmp / "a", token="ta"))), "l", "default", "a", **TIMINGS)
    b = LeaseElector(make_api_client(str(kube.kubeconfig(tmp / "b", token="tb"))), "l", "default", "b", **TIMINGS)
    ta = asyncio.create_task(a.run())
    await a.wait_leader(5)
    tb = asyncio.create_task(b.run())
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    if cut:
        kube.blocked_tokens.add("ta")
    else:
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
    a_stopped = 0.0 if not a.is_leader() else None
    while not b.is_leader():
        if a_stopped is None and not a.is_leader():
            a_stopped = time.monotonic() - t0
        await asyncio.sleep(0.002)
    b_leads = time.monotonic() - t0
    for t in (ta, tb):
        t.cancel()
    await asyncio.gather(ta, tb, return_exceptions=True)
    a.api.api_client.close()
    b.api.api_client.close()
    kube.blocked_tokens.clear()
    kube.leases.clear()
    return a_stopped or 0.0, b_leads


async def watch_latency(kube: FakeKube, tmp: Path, n: int = 50) -> list[float]:
    kube.add_deployment("llm", replicas=1)
    s = KubernetesScaler(make_api_client(str(kube.kubeconfig(tmp / "s"))), "default", [KubePool("llm", "llm", "llm")],
                         watch_timeout_s=60, owns_client=True)
    await s.start()
    out = []
    for _ in range(n):
        p = kube.pods_of("llm")[0]
        want = not p.ready
        t0 = time.monotonic()
        kube.set_ready(p.name, want)
        while (s.list()[0].state.value == "ready") != want:
            await asyncio.sleep(0.0002)
        out.append((time.monotonic() - t0) * 1000)
    await s.close()
    return out


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.2f}, min {min(xs):.2f}, max {max(xs):.2f}"


async def main(runs: int) -> None:
    logging.disable(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-kube-"))
    with FakeKube() as kube:
        clean = [await handover(kube, tmp, False) for _ in range(runs)]
        cut = [await handover(kube, tmp, True) for _ in range(runs)]
        lat = await watch_latency(kube, tmp)
    print(f"timings: {TIMINGS}, {runs} runs each")
    print(f"clean stop (Lease released): follower leads after {fmt([b for _, b in clean])} s")
    print(f"leader cut off: it stops deciding after {fmt([a for a, _ in cut])} s; "
          f"follower leads after {fmt([b for _, b in cut])} s")
    print(f"EndpointSlice change -> scaler.list(): {fmt(lat)} ms ({len(lat)} changes)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    asyncio.run(main(ap.parse_args().runs))
