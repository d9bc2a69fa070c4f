"""Admin API under load: event watchers and admin calls against a scaling fleet, and xDS push time beside them.

    .venv/bin/python bench/bench_admin_load.py [--minutes 5] [--watchers 200] [--rate 50] [--json]

The server is a whole ``ControlPlane`` in this process (ADS, admin API, the controller and an autoscaled pool of
local replicas, emulated vLLM processes). Every ``--bounds-every-s`` (20 s) the pool's replica bounds change
through the admin API (1 -> 2 -> 3 -> 2 -> 1 ...), so the fleet scales up and down (replicas start, drain and stop)
throughout; twice a second a weight override on a serving replica is set or cleared (admin API), so a new snapshot
is published about once a second. Four ADS test clients (``tests/support/adsclient.py``, SotW, CDS + EDS, ACKing
every response like Envoy) are connected all along; push time is snapshot set -> all four ACKed.

The run has two halves. First half: no admin load. Second half: a separate process (this file with ``--clients``)
holds ``--watchers`` ``WatchEvents(follow=True)`` streams (grpc.aio, over 10 channels) and makes ``--rate`` calls/s
(GetStatus, ListEndpoints, GetPlan in turn, open loop). Checked (exit status 1 if any fails):

* no event dropped without a ``gap`` marker: each watcher sees every sequence number in order (a watcher token
  sees every tenant, so the feed has no holes of its own); a gap marker accounts for the events it names. At the
  end every watcher must reach the newest sequence number;
* server RSS bounded: RSS at the end of the loaded half is at most 15 % (and 30 MB) above RSS once the load is warm
  (a quarter into the loaded half);
* push time unchanged within noise: the loaded half's median at most 1.5 x the unloaded half's + 5 ms;
* every push ACKed, every admin call answered.

A JSON summary is printed (``--json``: only the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402

from xds_control.admin.proto import load  # noqa: E402

pb, pb_grpc = load()

VIEWER = "bench-viewer-token-0123456789"
OPERATOR = "bench-operator-token-0123456789"
BOUNDS_CYCLE = (1, 2, 3, 2)


def rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "p50_ms": round(pct(xs, 0.5) * 1000, 2), "p99_ms": round(pct(xs, 0.99) * 1000, 2),
            "max_ms": round(max(xs) * 1000, 2) if xs else None}


def config(listener_port: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener_port}],
        "services": [{"name": "llm", "tenant": "team-a", "pools": [{
            "name": "gpu",
            "autoscale": {
                "policy": "threshold", "initial_replicas": 1,
                "overrides": {"min_replicas": 1, "max_replicas": 1, "gpu_mem_trigger": 0.99,
                              "traffic": {"warmup_s": 0, "ramp_window_s": 0, "drain_timeout_s": 5}},
                "replica": {"profile": "tiny", "load_delay_s": 0},
            },
        }]}],
        "controller": {"tick_s": 0.5},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 5},
        "admin": {"port": 0, "tokens": [
            {"name": "bench-viewer", "token": VIEWER, "tenant": "*", "role": "viewer"},
            {"name": "bench-operator", "token": OPERATOR, "tenant": "*", "role": "operator"},
        ]},
    }


# -- the client process: watchers + admin calls -------------------------------------------------------------------
class Watcher:
    def __init__(self) -> None:
        self.last = 0
        self.events = 0
        self.gaps = 0
        self.gapped = 0        # events a gap marker accounted for
        self.dropped = 0       # events missing with no gap marker
        self.out_of_order = 0
        self.error = ""

    async def run(self, stub: Any) -> None:
        md = [("authorization", f"Bearer {VIEWER}")]
        try:
            async for ev in stub.WatchEvents(pb.WatchEventsRequest(after_seq=0, follow=True), metadata=md):
                if ev.kind == "gap":
                    if ev.seq < self.last:
                        self.out_of_order += 1
                    self.gaps += 1
                    self.gapped += max(0, ev.seq - self.last)
                    self.last = max(self.last, ev.seq)
                    continue
                self.events += 1
                if ev.seq != self.last + 1:  # from after_seq=0: the first one is seq 1 or follows a gap
                    if ev.seq <= self.last:
                        self.out_of_order += 1
                    else:
                        self.dropped += ev.seq - self.last - 1
                self.last = max(self.last, ev.seq)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:
            self.error = f"{e.code().name}: {e.details()}"


async def caller(stub: Any, rate: float, stop: asyncio.Event, lat: list[float], errors: list[str]) -> None:
    md = [("authorization", f"Bearer {VIEWER}")]
    calls = ((stub.GetStatus, pb.GetStatusRequest()), (stub.ListEndpoints, pb.ListEndpointsRequest()),
             (stub.GetPlan, pb.GetPlanRequest()))
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        fn, req = calls[i % len(calls)]
        t0 = loop.time()
        try:
            await fn(req, metadata=md, timeout=10)
            lat.append(loop.time() - t0)
        except grpc.aio.AioRpcError as e:
            errors.append(f"{e.code().name}: {e.details()}")

    t_start, i = loop.time(), 0
    while not stop.is_set():
        t = asyncio.create_task(one(i))
        pending.add(t)
        t.add_done_callback(pending.discard)
        i += 1
        await asyncio.sleep(max(0.0, t_start + i / rate - loop.time()))
    if pending:
        await asyncio.wait(pending, timeout=15)


async def clients_main(address: str, watchers: int, rate: float) -> None:
    """Reads "go" (start), then "stop SEQ" (stop calling; wait for every watcher to reach SEQ) on stdin."""
    loop = asyncio.get_running_loop()
    stdin = sys.stdin

    async def line() -> str:
        return (await loop.run_in_executor(None, stdin.readline)).strip()

    channels = [grpc.aio.insecure_channel(address, options=[("grpc.channel_id", i)]) for i in range(11)]
    stubs = [pb_grpc.AdminStub(c) for c in channels]
    print("ready", flush=True)
    assert await line() == "go"
    ws = [Watcher() for _ in range(watchers)]
    tasks = [asyncio.create_task(w.run(stubs[i % 10])) for i, w in enumerate(ws)]
    stop = asyncio.Event()
    lat: list[float] = []
    errors: list[str] = []
    t0 = loop.time()
    call_task = asyncio.create_task(caller(stubs[10], rate, stop, lat, errors))
    cmd = await line()
    calling_s = loop.time() - t0
    stop.set()
    await call_task
    final = int(cmd.split()[1])
    deadline = loop.time() + 60
    while loop.time() < deadline and any(w.last < final and not w.error for w in ws):
        await asyncio.sleep(0.2)
    catch_up_s = loop.time() - t0 - calling_s
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()
    print(json.dumps({
        "watchers": watchers, "final_seq": final,
        "events_per_watcher_min": min(w.events for w in ws), "events_per_watcher_max": max(w.events for w in ws),
        "events_total": sum(w.events for w in ws),
        "gap_markers": sum(w.gaps for w in ws), "events_in_gaps": sum(w.gapped for w in ws),
        "dropped_without_gap": sum(w.dropped for w in ws), "out_of_order": sum(w.out_of_order for w in ws),
        "behind_at_end": sum(1 for w in ws if w.last < final), "watch_errors": sorted({w.error for w in ws if w.error}),
        "catch_up_s": round(catch_up_s, 2),
        "calls": len(lat) + len(errors), "calls_per_s": round((len(lat) + len(errors)) / max(calling_s, 1e-9), 1),
        "call_errors": len(errors), "call_error_samples": sorted(set(errors))[:5], "call_latency": ms(lat),
    }), flush=True)


# -- the server side ------------------------------------------------------------------------------------------------
class Probes:
    """ADS test clients (SotW, CDS + EDS) that ACK everything, like Envoy."""

    def __init__(self, target: str, n: int) -> None:
        self.target, self.n = target, n
        self.ids = [f"bench-probe-{i}" for i in range(n)]
        self.tasks: list[asyncio.Task[None]] = []
        self.clients: list[Any] = []
        self.errors: list[str] = []

    async def start(self) -> None:
        from support.adsclient import SotwClient

        from xds_control.snapshot import types as T

        for node in self.ids:
            c = await SotwClient(self.target, node).start()
            self.clients.append(c)
            c.request(T.CLUSTER)
            self.tasks.append(asyncio.create_task(self._run(c, T)))

    async def _run(self, c: Any, T: Any) -> None:
        from support.adsclient import names

        eds: list[str] = []
        try:
            while True:
                resp = await c.recv(timeout=3600)
                if resp.type_url == T.CLUSTER:
                    c.ack(resp)
                    new = names(resp)
                    if new != eds:
                        eds = new
                        c.request(T.ENDPOINT, eds)
                else:
                    c.ack(resp, eds)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded and reported: a probe that stopped is a failed check
            self.errors.append(repr(e))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.clients:
            await c.close()


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from support.ports import free_port

    from xds_control.config import parse_config
    from xds_control.runtime.app import ControlPlane

    total_s = args.minutes * 60.0
    half = total_s / 2
    cp = ControlPlane(parse_config(config(free_port())), xds_port=0, metrics_port=None, admin_port=0)
    await cp.start()
    assert cp.admin is not None
    address = f"127.0.0.1:{cp.ports.admin}"
    loop = asyncio.get_running_loop()
    probes = Probes(f"127.0.0.1:{cp.ports.xds}", 4)
    clients: subprocess.Popen[str] | None = None
    channel = grpc.aio.insecure_channel(address)
    stub = pb_grpc.AdminStub(channel)
    op = [("authorization", f"Bearer {OPERATOR}")]
    phase = ["warmup"]
    push: dict[str, list[float]] = {"unloaded": [], "loaded": []}
    late: dict[str, int] = {"unloaded": 0, "loaded": 0}
    waits: set[asyncio.Task[None]] = set()
    rss: list[dict[str, Any]] = []
    driver = {"bounds_changes": 0, "overrides": 0, "driver_errors": 0, "replica_counts": set()}

    async def measure(version: int, ph: str) -> None:
        at = cp.cache.set_at.get(version)
        res = await cp.tracker.wait_acked(version, nodes=probes.ids, timeout=10)
        if at is None or ph not in push:
            return
        if res.ok:
            push[ph].append(time.monotonic() - at)
        else:
            late[ph] += 1

    def on_snapshot(snap: Any) -> None:
        t = loop.create_task(measure(snap.version, phase[0]))
        waits.add(t)
        t.add_done_callback(waits.discard)

    unsubscribe = cp.cache.subscribe(on_snapshot)

    async def drive(stop: asyncio.Event) -> None:
        """Replica bounds every --bounds-every-s; a weight override set/cleared every 0.5 s (a push each time)."""
        i, pinned = 0, ""
        next_bounds = loop.time()
        while not stop.is_set():
            try:
                if loop.time() >= next_bounds:
                    n = BOUNDS_CYCLE[i % len(BOUNDS_CYCLE)]
                    i += 1
                    await stub.SetReplicaBounds(pb.SetReplicaBoundsRequest(
                        service="llm", pool="gpu", min_replicas=n, max_replicas=n, reason="bench"), metadata=op)
                    driver["bounds_changes"] += 1
                    next_bounds += args.bounds_every_s
                if pinned:
                    await stub.ClearWeightOverride(pb.EndpointRef(service="llm", endpoint=pinned), metadata=op)
                    pinned = ""
                else:
                    eps = (await stub.ListEndpoints(pb.ListEndpointsRequest(service="llm"), metadata=op)).endpoints
                    driver["replica_counts"].add(len(eps))  # type: ignore[attr-defined]
                    serving = [e.address for e in eps if e.phase == "serving" and e.weight > 0]
                    if serving:
                        await stub.SetWeightOverride(pb.SetWeightOverrideRequest(
                            service="llm", endpoint=serving[0], weight=7 + driver["overrides"] % 5, reason="bench"),
                            metadata=op)
                        pinned = serving[0]
                driver["overrides"] += 1
            except grpc.aio.AioRpcError:
                driver["driver_errors"] += 1  # e.g. the pinned replica drained away meanwhile
                pinned = ""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def sample(stop: asyncio.Event) -> None:
        t0 = loop.time()
        while not stop.is_set():
            rss.append({"t_s": round(loop.time() - t0, 1), "phase": phase[0], "rss_kb": rss_kb()})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)

    stop = asyncio.Event()
    bg: list[asyncio.Task[None]] = []
    client_out: dict[str, Any] = {}
    t_start = loop.time()
    try:
        await probes.start()
        t_ready = loop.time() + 30
        while len(cp.tracker.proxies()) < probes.n and loop.time() < t_ready:
            await asyncio.sleep(0.05)
        bg = [asyncio.create_task(drive(stop)), asyncio.create_task(sample(stop))]
        clients = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--clients", address, "--watchers", str(args.watchers),
             "--rate", str(args.rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert clients.stdin is not None and clients.stdout is not None
        ready = await asyncio.to_thread(clients.stdout.readline)
        assert ready.strip() == "ready", f"the client process did not start: {ready!r}"
        await asyncio.sleep(min(5.0, half / 6))     # the first replica up, the first bounds change made
        phase[0] = "unloaded"
        t_unloaded = loop.time()
        await asyncio.sleep(max(0.0, half - (t_unloaded - t_start)))
        phase[0] = "loaded"
        t_loaded = loop.time()
        clients.stdin.write("go\n")
        clients.stdin.flush()
        await asyncio.sleep(max(0.0, total_s - (t_loaded - t_start)))
        phase[0] = "done"
        stop.set()
        await asyncio.gather(*bg)
        clients.stdin.write(f"stop {cp.admin.events.seq}\n")
        clients.stdin.flush()
        out = await asyncio.to_thread(clients.stdout.readline)
        client_out = json.loads(out) if out.strip() else {"error": "the client process printed nothing"}
        if waits:
            await asyncio.wait(set(waits), timeout=15)
        loaded_s = loop.time() - t_loaded
    finally:
        stop.set()
        for t in bg:
            t.cancel()
        if clients is not None:
            if clients.poll() is None:
                clients.terminate()
                try:
                    clients.wait(20)
                except subprocess.TimeoutExpired:
                    clients.kill()
                    clients.wait(5)
            for f in (clients.stdin, clients.stdout):
                if f is not None:
                    with contextlib.suppress(BrokenPipeError):
                        f.close()
        unsubscribe()
        await probes.close()
        await channel.close()
        await cp.stop(grace=0)

    loaded = [r["rss_kb"] for r in rss if r["phase"] == "loaded"]
    warm = [r for r in rss if r["phase"] == "loaded"]
    warm_kb = warm[len(warm) // 4]["rss_kb"] if warm else 0
    end_kb = loaded[-1] if loaded else 0
    base, under = push["unloaded"], push["loaded"]
    checks = {
        "no_event_dropped_without_gap": client_out.get("dropped_without_gap") == 0
        and client_out.get("out_of_order") == 0,
        "every_watcher_caught_up": client_out.get("behind_at_end") == 0 and not client_out.get("watch_errors"),
        "rss_bounded": bool(warm_kb) and end_kb <= max(warm_kb * 1.15, warm_kb + 30_000),
        "push_time_within_noise": bool(base and under) and pct(under, 0.5) <= 1.5 * pct(base, 0.5) + 0.005,
        "every_push_acked": not late["unloaded"] and not late["loaded"] and not probes.errors,
        "every_admin_call_answered": client_out.get("call_errors") == 0 and bool(client_out.get("calls")),
        "fleet_scaled": len(driver["replica_counts"]) >= 2,  # type: ignore[arg-type]
    }
    return {
        "minutes": args.minutes, "watchers": args.watchers, "calls_per_s_target": args.rate,
        "loaded_s": round(loaded_s, 1), "events_seq_end": client_out.get("final_seq"),
        "push_unloaded": ms(base), "push_loaded": ms(under),
        "push_p50_ratio": round(pct(under, 0.5) / pct(base, 0.5), 2) if base and under else None,
        "pushes_not_acked": late, "probe_errors": probes.errors,
        "rss_mb": {"start": round(rss[0]["rss_kb"] / 1024, 1) if rss else None,
                   "unloaded_max": round(max((r["rss_kb"] for r in rss if r["phase"] == "unloaded"), default=0) / 1024,
                                         1),
                   "loaded_warm": round(warm_kb / 1024, 1), "loaded_max": round(max(loaded, default=0) / 1024, 1),
                   "loaded_end": round(end_kb / 1024, 1)},
        "fleet": {"bounds_changes": driver["bounds_changes"], "weight_overrides": driver["overrides"],
                  "driver_errors": driver["driver_errors"],
                  "replica_counts_seen": sorted(driver["replica_counts"])},  # type: ignore[call-overload]
        "admin_load": client_out,
        "checks": checks, "ok": all(checks.values()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--watchers", type=int, default=200)
    ap.add_argument("--rate", type=float, default=50.0, help="admin calls per second in the loaded half")
    ap.add_argument("--bounds-every-s", type=float, default=20.0)
    ap.add_argument("--json", action="store_true", help="print only the JSON summary")
    ap.add_argument("--clients", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name in ("minutes", "rate", "bounds_every_s"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')}: must be > 0, got {getattr(args, name)}")
    if args.watchers < 1:
        ap.error(f"--watchers: must be >= 1, got {args.watchers}")
    if args.clients:
        asyncio.run(clients_main(args.clients, args.watchers, args.rate))
        return 0
    if not args.json:
        print(f"admin load: {args.minutes} min (half without, half with {args.watchers} watchers + "
              f"{args.rate:g} calls/s), pid {os.getpid()}", file=sys.stderr)
    out = asyncio.run(bench(args))
    print(json.dumps(out, indent=None if args.json else 2))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
