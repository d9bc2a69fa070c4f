"""Config reload benchmark: config file written -> the last of N ADS streams holding the new version.

    .venv/bin/python bench/bench_config_reload.py [--endpoints 10000] [--pools 4] [--streams 1000]
        [--reloads 3] [--naive | --compare]

This process runs a real ``ControlPlane`` (static pools, ``--endpoints`` endpoints spread over
``--pools`` pools of one service, the config's default debounce of 100 ms, the default 0.25 s file
poll) with its file watcher; the streams (bench/fanout_clients.py's, started here with ``--clients``
in a separate process) subscribe CDS + one pool's EDS each, spread over the pools, and ACK every
response. Each reload rewrites the file (atomically: write a temporary file, rename) with one
endpoint weight changed in every pool, so every stream gets a new ClusterLoadAssignment.

Reported per mode, median and max over ``--reloads``:

* ``write_to_applied_s``: file written -> the new config is in force (``cp.config``);
* ``write_to_snapshot_s``: -> the snapshot with it is set (after the publisher's debounce);
* ``write_to_all_acked_s``: -> the last stream ACKed that version (goal <= 1.5 s for 10k x 1,000);
* ``stall_to_applied_ms``: the longest gap of a 10 ms ticker task on the server's event loop between the write and
  the new config in force (file read, parse, validation, apply);
* ``stall_to_snapshot_ms``: the longest gap of a 10 ms ticker task on the server's event loop between the write and
  the snapshot (also the publisher's snapshot build; everything else on the loop waits that long);
* ``stall_reload_ms``: the same from the write to the last ACK (includes the fan-out's own writes);
* ``stall_idle_ms``: the same over an idle second before the reloads (the floor on this machine).

``--naive`` reproduces the old watcher: read, pure-Python ``yaml.safe_load``, validation and plan building all on
the event loop. ``--compare`` runs both, naive first, each with a fresh control plane and client process, and prints
the ratios. ``--no-gc-pause`` keeps the cyclic garbage collector running during the parse (to see what pausing it
buys).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xds_control.config import parse_config, to_traffic_plan  # noqa: E402
from xds_control.runtime.app import ControlPlane  # noqa: E402


def make_config(n_endpoints: int, n_pools: int) -> dict[str, Any]:
    per = n_endpoints // n_pools
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
        "services": [{"name": "llm", "pools": [
            {"name": f"pool-{j}", "weight": 1, "endpoints": [
                {"address": f"10.{j}.{(i >> 8) & 255}.{i & 255}", "port": 8000, "zone": f"zone-{i % 3}",
                 "weight": 1 + i % 7}
                for i in range(per)]}
            for j in range(n_pools)]}],
        "admin": {"enabled": False},
    }


def changed(cfg: dict[str, Any], k: int) -> dict[str, Any]:
    """``cfg`` with the first endpoint's weight of every pool set to a value unique to reload ``k``."""
    out = copy.deepcopy(cfg)
    for pool in out["services"][0]["pools"]:
        pool["endpoints"][0]["weight"] = 100 + k
    return out


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class NaiveControlPlane(ControlPlane):
    """The watcher as it was: the file read, pure-Python YAML, validation and plan building on the event loop."""

    async def _check_config_file(self) -> bool | None:
        assert self.config_path is not None
        try:
            data = self.config_path.read_bytes()
        except OSError:
            return None
        digest = hashlib.sha256(data).digest()
        if digest == self._config_digest:
            return None
        self._config_digest = digest
        cfg = parse_config(yaml.load(data.decode(), Loader=yaml.SafeLoader), str(self.config_path))
        return self._apply_reload(cfg, to_traffic_plan(cfg), str(self.config_path))


class Ticker:
    """A task that sleeps 10 ms in a loop and records how late it wakes: the event loop's stalls."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []  # (woke at, late by)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bench-ticker")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.01)
            now = loop.time()
            self.gaps.append((now, now - t - 0.01))

    def max_between(self, t0: float, t1: float) -> float:
        return max((g for at, g in self.gaps if t0 <= at <= t1 + 0.02), default=0.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


async def run_mode(naive: bool, a: argparse.Namespace) -> dict[str, Any]:
    base = make_config(a.endpoints, a.pools)
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.dump(base, Dumper=yaml.CSafeDumper, sort_keys=False))
        # Made before the clock runs: the bench's own YAML writing must not load the measured loop.
        texts = [yaml.dump(changed(base, k), Dumper=yaml.CSafeDumper, sort_keys=False)
                 for k in range(1, a.reloads + 1)]
        cls = NaiveControlPlane if naive else ControlPlane
        cp = cls(parse_config(base), config_path=path, metrics_port=None)
        await cp.start()
        clients = subprocess.Popen(
            [sys.executable, __file__, "--clients", f"127.0.0.1:{cp.ports.xds}", str(a.streams),
             str(min(a.connections, a.streams)), *[f"pool-{j}" for j in range(a.pools)]],
            stdout=subprocess.PIPE, text=True,
        )
        ticker = Ticker()
        try:
            line = await asyncio.wait_for(asyncio.to_thread(clients.stdout.readline), 300)  # type: ignore[union-attr]
            assert line.strip() == "ready", line
            res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=120)  # type: ignore[union-attr]
            assert res.ok and len(res.acked) == a.streams, res
            loop = asyncio.get_running_loop()
            ticker.start()
            await asyncio.sleep(1.0)
            stall_idle = ticker.max_between(loop.time() - 0.9, loop.time())
            rows = []
            for k, text in enumerate(texts, 1):
                v0 = cp.cache.snapshot.version  # type: ignore[union-attr]
                await asyncio.sleep(0.5)
                t0 = loop.time()
                write_atomically(path, text)
                while cp.config.services[0].pools[0].endpoints[0].weight != 100 + k:
                    await asyncio.sleep(0.002)
                t_applied = loop.time()
                while (snap := cp.cache.snapshot) is None or snap.version == v0 or snap.plan is None \
                        or snap.plan.pools[0].endpoints[0].weight != 100 + k:
                    await asyncio.sleep(0.002)
                t_snap = loop.time()
                res = await cp.tracker.wait_acked(snap.version, timeout=120)
                t_acked = loop.time()
                assert res.ok and len(res.acked) == a.streams, res
                row = {"write_to_applied_s": t_applied - t0, "write_to_snapshot_s": t_snap - t0,
                       "write_to_all_acked_s": t_acked - t0,
                       "stall_to_applied_ms": 1000 * ticker.max_between(t0, t_applied),
                       "stall_to_snapshot_ms": 1000 * ticker.max_between(t0, t_snap),
                       "stall_reload_ms": 1000 * ticker.max_between(t0, t_acked)}
                rows.append(row)
                print(json.dumps({"mode": "naive" if naive else "now", "reload": k,
                                  **{key: round(v, 4) for key, v in row.items()}}), flush=True)
            out: dict[str, Any] = {"mode": "naive" if naive else "now", "endpoints": a.endpoints, "pools": a.pools,
                                   "streams": a.streams, "reloads": a.reloads,
                                   "stall_idle_ms": round(1000 * stall_idle, 1)}
            for key in rows[0]:
                vals = [r[key] for r in rows]
                digits = 1 if key.endswith("_ms") else 3
                out[key + "_median"] = round(statistics.median(vals), digits)
                out[key + "_max"] = round(max(vals), digits)
            assert cp.failure is None, cp.failure
            return out
        finally:
            await ticker.stop()
            clients.terminate()
            try:
                await asyncio.to_thread(clients.wait, 10)
            except subprocess.TimeoutExpired:
                clients.kill()
                clients.wait()
            for _ in range(500):  # let the server see the streams end before it stops (no cancelled handlers)
                if not cp.tracker.proxies():
                    break
                await asyncio.sleep(0.02)
            await cp.stop(grace=1)


async def clients_main(target: str, n: int, conns: int, clusters: list[str]) -> None:
    """The client process: bench/fanout_clients.py's streams, stream i on cluster i mod len(clusters)."""
    import grpc

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fanout_clients import stream

    opts = [("grpc.max_receive_message_length", 256 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=opts + [("grpc.channel_id", i)]) for i in range(conns)]
    first = asyncio.Event()
    versions: dict[int, dict[str, str]] = {}
    ready = [0]
    tasks = [asyncio.create_task(stream(channels[i % conns], i, clusters[i % len(clusters)], first, versions, ready,
                                        n)) for i in range(n)]
    await first.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--clients":
        try:
            asyncio.run(clients_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]))
        except KeyboardInterrupt:
            pass
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--pools", type=int, default=4)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--reloads", type=int, default=3)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--naive", action="store_true", help="only the old watcher (parse on the event loop)")
    mode.add_argument("--compare", action="store_true", help="the old watcher, then the current one")
    ap.add_argument("--no-gc-pause", action="store_true", help="do not pause the garbage collector during the parse")
    a = ap.parse_args()
    if a.endpoints < a.pools or a.pools < 1 or a.streams < 1 or a.reloads < 1:
        ap.error(f"need endpoints >= pools >= 1, streams >= 1, reloads >= 1 (got {a.endpoints}, {a.pools}, "
                 f"{a.streams}, {a.reloads})")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.no_gc_pause:
        import contextlib

        import xds_control.runtime.app as app

        app._gc_paused = contextlib.nullcontext  # type: ignore[assignment]
    modes = [True, False] if a.compare else [a.naive]
    results = [asyncio.run(run_mode(naive, a)) for naive in modes]
    for r in results:
        print(json.dumps(r), flush=True)
    if a.compare:
        old, new = results
        print(f"\n{'':28} {'naive':>9} {'now':>9} {'ratio':>7}")
        for key in ("write_to_applied_s", "write_to_snapshot_s", "write_to_all_acked_s", "stall_to_applied_ms",
                    "stall_to_snapshot_ms", "stall_reload_ms"):
            for stat in ("median", "max"):
                k = f"{key}_{stat}"
                ratio = old[k] / new[k] if new[k] else float("inf")
                print(f"{k:28} {old[k]:>9} {new[k]:>9} {ratio:>6.1f}x")
    print(f"(cpu count {os.cpu_count()}; python {sys.version.split()[0]}; "
          f"load average {os.getloadavg()[0]:.2f} at the end)")


if __name__ == "__main__":
    main()
