"""Two control-plane instances drain together (the reliability issue's HA drain), on a real cluster.

Two ``ControlPlane`` s with leader election and the Kubernetes scaler, a real Envoy on each, load through both,
then a scale-down the leader decides: the follower drains the same endpoint (the leader shares it on the peer
board, a ConfigMap), the leader removes the pod only once the follower's proxies ACKed the drain and the
replica's own in-flight count is 0. Without the board the follower's Envoy kept sending to the endpoint being
drained and the leader waited out ``drain_timeout_s`` (300 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from pathlib import Path

import pytest
from k8s.cluster import Cluster, pod_ready
from k8s.test_real_controlplane import PORT, kube_config, until

from xds_control.config import parse_config
from xds_control.envoy.process import EnvoyProcess
from xds_control.fleet.loadgen import run_load
from xds_control.fleet.trace import SurgeShape, generate_surge
from xds_control.runtime.app import ControlPlane

pytestmark = pytest.mark.timeout(240)


def running(key: str) -> float | None:
    """The emulated replica's own in-flight count (``vllm:num_requests_running``), None when unreachable."""
    try:
        with urllib.request.urlopen(f"http://{key}/metrics", timeout=0.5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("vllm:num_requests_running"):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return None


def healthy_hosts(envoy: EnvoyProcess) -> int:
    return int(envoy.stats().get("cluster.llm.membership_healthy", "0"))


def phase_of(cp: ControlPlane, key: str) -> str | None:
    hist = cp.controller.history
    if not hist:
        return None
    return next((e.phase for e in hist[-1].endpoints if e.key == key), None)


def phase_of_any(cp: ControlPlane, phase: str) -> bool:
    hist = cp.controller.history
    return bool(hist) and any(e.phase == phase for e in hist[-1].endpoints)


async def test_a_follower_drains_with_the_leader_and_nothing_is_lost(
        cluster: Cluster, ns: str, kubeconfig: Path, pod_replicas) -> None:  # type: ignore[no-untyped-def]
    cluster.deployment(ns, "llm", replicas=3, port=PORT, grace_s=2)
    reps = pod_replicas(ns)
    await until(lambda: len([p for p in cluster.pods(ns, "llm") if pod_ready(p)]) == 3
                and all(reps.serving(p["metadata"]["name"]) for p in cluster.pods(ns, "llm")),
                40, "three ready pods with their replicas serving")
    # scale down on anything but saturation, once the floor allows it (the load keeps every replica busy)
    over = dict(min_replicas=3, max_replicas=3, down_sustain_s=0.5, cooldown_down_s=0.5,
                max_actions_per_minute=60, gpu_mem_trigger=0.99, latency_trigger_s=None, l_low=0.95, l_high=0.99)
    cps: list[ControlPlane] = []
    envoys: list[EnvoyProcess] = []
    leaders_at_once: list[int] = []
    samples: list[tuple[float, str, float | None]] = []
    stop = asyncio.Event()
    try:
        for _ in ("a", "b"):
            cp = ControlPlane(parse_config(kube_config(ns, kubeconfig, **over)), xds_port=0, metrics_port=None)
            await cp.start()
            cps.append(cp)
        a, b = cps
        await until(lambda: a.elector.is_leader() or b.elector.is_leader(), 15, "a leader")
        leader, follower = (a, b) if a.elector.is_leader() else (b, a)
        for i, cp in enumerate((leader, follower)):
            envoys.append(EnvoyProcess(f"ha-{i}", cp.ports.xds).start())
        await until(lambda: all(healthy_hosts(e) == 3 for e in envoys), 30, "3 healthy hosts in both Envoys")
        await until(lambda: follower.peer_board.live_peers() != [] and leader.peer_board.live_peers() != [], 15,
                    "each instance sees the other on the peer board")

        async def watch() -> None:
            keys = [f"{p['status']['podIP']}:{PORT}" for p in cluster.pods(ns, "llm")]
            while not stop.is_set():
                leaders_at_once.append(int(a.elector.is_leader()) + int(b.elector.is_leader()))
                t = time.monotonic()
                for k in keys:
                    samples.append((t, k, await asyncio.to_thread(running, k)))
                await asyncio.sleep(0.05)

        watcher = asyncio.get_running_loop().create_task(watch())
        trace = generate_surge(SurgeShape(duration_s=24, base_rps=2, peak_rps=2, calm_s=24, rise_s=1, hold_s=1,
                                          decay_tau_s=1, input_tokens_median=200, output_tokens_median=32), seed=3)
        urls = [f"http://127.0.0.1:{cp.config.listeners[0].port}" for cp in (leader, follower)]
        loads = [asyncio.get_running_loop().create_task(run_load(u, trace, timeout_s=60)) for u in urls]
        await asyncio.sleep(4.0)
        # the operator lowers the floor on the leader: it decides 3 -> 2 and drains one endpoint
        spec = leader.controller.runtimes["llm"].spec
        leader.controller.set_spec("llm", spec.model_copy(update={"min_replicas": 2}))
        t_set = time.monotonic()
        try:
            await until(lambda: phase_of_any(leader, "draining"), 15, "the leader draining an endpoint")
        except AssertionError as e:
            raise AssertionError(f"{e}: last tick {leader.controller.history[-1]}") from None
        t_drain = time.monotonic()
        victim = next(e.key for e in leader.controller.history[-1].endpoints if e.phase == "draining")
        await until(lambda: phase_of(follower, victim) in ("draining", "removable"), 5,
                    "the follower draining the same endpoint")
        t_follow = time.monotonic()
        await until(lambda: any(e["kind"] == "scale_down" for e in leader.controller.events), 30,
                    "the leader removing the drained replica")
        t_down = time.monotonic()
        results = await asyncio.gather(*loads)
        stop.set()
        await watcher
        # the follower's drain never made it pick its own victim; nobody else was drained
        downs = [e["endpoint"] for e in leader.controller.events if e["kind"] == "scale_down"]
        assert downs == [victim], (victim, [(e["kind"], e.get("endpoint") or e.get("explanation"), e.get("current"),
                                             e.get("target")) for e in leader.controller.events])
        assert not any(e["kind"] == "scale_down" for e in follower.controller.events)
        for res in results:
            assert res.summary.failed == 0, [r.error for r in res.records if not r.ok][:5]
        assert max(leaders_at_once) == 1, "two leaders at once"
        # the drained replica's own in-flight count reaches 0 within a few seconds of the drain
        zero = next((t for t, k, v in samples if k == victim and t >= t_drain and v == 0.0), None)
        assert zero is not None and zero - t_drain <= 5.0, (zero, t_drain, [s for s in samples if s[1] == victim])
        figures = {"drain_after_set_s": round(t_drain - t_set, 2),
                   "follower_drained_after_s": round(t_follow - t_drain, 2),
                   "in_flight_zero_after_s": round(zero - t_drain, 2), "removed_after_s": round(t_down - t_drain, 2),
                   "requests": sum(r.summary.requests for r in results)}
        print(f"ha_drain: {figures}")
        assert t_down - t_drain <= 15.0, figures
        # the operator's change (a policy set on the leader) is shared state too: the follower adopted it from the
        # operator-state ConfigMap, and would keep it as leader
        await until(lambda: follower.controller.runtimes["llm"].spec.min_replicas == 2, 5,
                    "the follower adopting the operator's policy")
        assert reps.errors == []
    finally:
        stop.set()
        for e in envoys:
            e.stop()
        for cp in cps:
            with contextlib.suppress(Exception):
                await cp.stop(grace=0)
