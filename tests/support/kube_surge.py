"""One surge, end to end, on a Kubernetes API server: a real Envoy, ``ControlPlane`` with the Kubernetes scaler and
leader election, emulated replicas on the pods, load through Envoy.

The scenario is a test on the real cluster (tests/k8s/test_real_surge.py, ``make test-k8s``);
``bench/bench_kube_surge.py`` runs it there and on tests/fakekube and prints both side by side. A :class:`World`
is what differs: where the Deployment lives and how its pods are observed.

What it measures (every 50 ms, independently of the control plane: the pods from the API server, the hosts from
Envoy's ``/clusters``):

* ``ready_to_envoy_s``: a new pod turns Ready → Envoy has its endpoint, healthy;
* ``decision_to_serving_s``: the controller's ``scale_up`` event → Envoy has answered a request from the new pod
  (its ``rq_success`` > 0);
* ``decision_to_ready_s``: the same event → the pod is Ready (the API server, the controllers, the kubelet's
  startup: here kwok's ``ready_delay`` or the fake's ``ready_after_s``);
* ``drain_to_removed_s``: a ``scale_down`` event (the drained pod is removable) → Envoy no longer has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from support.envoy import cluster_hosts
from support.ports import free_port

from xds_control.config import parse_config
from xds_control.envoy.process import EnvoyProcess
from xds_control.fleet.loadgen import run_load
from xds_control.fleet.trace import SurgeShape, generate_surge
from xds_control.runtime.app import ControlPlane

PORT = 8000
#: The emulated replicas' cost model (what ``make demo`` runs).
PROFILE = "llama3-8b-48gb"
#: Seconds a new pod stays Running but not Ready (a model server loading): kwok's ready delay, the fake's.
READY_DELAY_S = 2.0
#: The policy: the comprehensive preset with the demo's short windows, on one to three pods.
OVERRIDES: dict[str, Any] = {
    "min_replicas": 1, "max_replicas": 3, "startup_s": 5, "min_history_s": 10, "scale_down_window_s": 10,
    "stable_window_s": 8, "traffic": {"ramp_window_s": 6, "drain_timeout_s": 20, "warmup_s": 0},
}


class World(Protocol):
    """Where the Deployment ``llm`` (one pod at the start, its pods serving on ``PORT``) lives."""

    namespace: str
    kubeconfig: Path

    def ready_endpoints(self) -> set[str]:
        """``ip:port`` of the pods that are Ready and not terminating, read from the API server now."""

    def pod_count(self) -> int:
        """Pods of the Deployment, terminating ones included."""


def surge_trace(seconds: float, seed: int = 0) -> list[Any]:
    """Calm (1 req/s), a crowd (5 req/s) from a fifth of the run for two fifths, then calm again."""
    f = seconds / 60.0
    return generate_surge(SurgeShape(duration_s=seconds, base_rps=1.0, peak_rps=5.0, calm_s=12 * f, rise_s=2 * f,
                                     hold_s=22 * f, decay_tau_s=4 * f, input_tokens_median=600,
                                     output_tokens_median=48), seed=seed)


def config(world: World, listener_port: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener_port}],
        "services": [{"name": "llm", "timeout_s": 120,
                      "retry": {"num_retries": 2, "retry_on": "connect-failure,refused-stream,reset,503"},
                      "pools": [{"name": "llm", "lb_policy": "least_request",
                                 "autoscale": {"policy": "comprehensive", "overrides": OVERRIDES}}]}],
        "xds": {"debounce_ms": 20, "max_delay_ms": 200},
        "controller": {"tick_s": 1.0, "signals": {"timeout_s": 1.0}},
        "kubernetes": {
            "namespace": world.namespace, "kubeconfig": str(world.kubeconfig), "watch_timeout_s": 30,
            "pools": {"llm": {"deployment": "llm", "service": "llm", "port": PORT}},
            "leader_election": {"lease_duration_s": 6.0, "renew_deadline_s": 4.0, "retry_period_s": 0.5},
        },
    }


def envoy_hosts(envoy: EnvoyProcess) -> dict[str, tuple[bool, int]]:
    """Cluster ``llm``'s hosts in Envoy: ``ip:port`` -> (healthy, rq_success)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/clusters", timeout=2) as r:
        hosts = cluster_hosts(r.read().decode(), "llm")
    return {k: (h.get("health_flags") == "healthy", int(h.get("rq_success", "0"))) for k, h in hosts.items()}


@dataclass
class Timeline:
    """What the watcher saw, as wall-clock times (``time.time()``, the controller's event clock)."""

    ready_at: dict[str, float] = field(default_factory=dict)  # endpoint first seen Ready
    in_envoy_at: dict[str, float] = field(default_factory=dict)  # first healthy in Envoy
    serving_at: dict[str, float] = field(default_factory=dict)  # first rq_success > 0
    gone_at: dict[str, float] = field(default_factory=dict)  # last left Envoy
    pods_max: int = 0
    envoy_min: int = 1_000
    samples: int = 0


async def watch(world: World, envoy: EnvoyProcess, tl: Timeline, stop: asyncio.Event) -> None:
    prev: set[str] = set()
    while not stop.is_set():
        ready = await asyncio.to_thread(world.ready_endpoints)
        hosts = await asyncio.to_thread(envoy_hosts, envoy)
        pods = await asyncio.to_thread(world.pod_count)
        now = time.time()
        tl.samples += 1
        tl.pods_max = max(tl.pods_max, pods)
        tl.envoy_min = min(tl.envoy_min, len(hosts))
        for k in ready:
            tl.ready_at.setdefault(k, now)
        for k, (healthy, ok) in hosts.items():
            if healthy:
                tl.in_envoy_at.setdefault(k, now)
            if ok > 0:
                tl.serving_at.setdefault(k, now)
        for k in prev - set(hosts):
            tl.gone_at[k] = now
        prev = set(hosts)
        await asyncio.sleep(0.05)


def _stats(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3),
            "n": len(xs)}


async def run_surge(world: World, seconds: float = 60.0, settle_s: float = 45.0, node: str = "surge") -> dict[str, Any]:
    """The scenario; returns its figures (and raises nothing itself: the callers assert)."""
    cp = ControlPlane(parse_config(config(world, free_port())), xds_port=0, metrics_port=None)
    envoy: EnvoyProcess | None = None
    tl = Timeline()
    stop = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        await cp.start()
        envoy = EnvoyProcess(node, cp.ports.xds).start()
        deadline = time.monotonic() + 30
        while not any(h for h, _ in envoy_hosts(envoy).values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"Envoy never had a healthy host; pods ready {world.ready_endpoints()}")
            await asyncio.sleep(0.1)
        first = await asyncio.to_thread(world.ready_endpoints)  # the Deployment's pod at the start
        watcher = asyncio.get_running_loop().create_task(watch(world, envoy, tl, stop), name="surge-watch")
        t0 = time.time()
        load = await run_load(f"http://127.0.0.1:{cp.config.listeners[0].port}", surge_trace(seconds), timeout_s=120)
        # calm: the fleet shrinks back (drains, then removes)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline and (await asyncio.to_thread(world.pod_count)) > OVERRIDES["min_replicas"]:
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        stop.set()
        await watcher
        events = [e for e in cp.controller.events if e["at"] >= t0 - 1]
    finally:
        stop.set()
        if watcher is not None:
            with contextlib.suppress(BaseException):
                await watcher
        if envoy is not None:
            envoy.stop()
        await cp.stop(grace=0)
    ups = [e for e in events if e["kind"] == "scale_up"]
    downs = [e for e in events if e["kind"] == "scale_down"]
    new = sorted((k for k in tl.ready_at if k not in first), key=lambda k: tl.ready_at[k])
    # the k-th new pod answers the k-th scale-up decision
    pairs = list(zip(ups, new, strict=False))
    return {
        "requests": load.summary.requests,
        "failed": load.summary.failed,
        "errors": [r.error or r.status for r in load.records if not r.ok][:5],
        "ttft_p99_ms": load.summary.ttft_p99_ms,
        "scale_ups": len(ups),
        "scale_downs": len(downs),
        "pods_max": tl.pods_max,
        "envoy_hosts_min": tl.envoy_min,
        "new_pods": new,
        "never_in_envoy": [k for k in new if k not in tl.in_envoy_at],
        "never_served": [k for k in new if k not in tl.serving_at],
        "ready_to_envoy_s": _stats([tl.in_envoy_at[k] - tl.ready_at[k] for k in new if k in tl.in_envoy_at]),
        "decision_to_ready_s": _stats([tl.ready_at[k] - e["at"] for e, k in pairs]),
        "decision_to_serving_s": _stats([tl.serving_at[k] - e["at"] for e, k in pairs if k in tl.serving_at]),
        "drain_to_removed_s": _stats([tl.gone_at[e["endpoint"]] - e["at"] for e in downs
                                      if e.get("endpoint") in tl.gone_at]),
        "watch_samples": tl.samples,
    }


def check(fig: dict[str, Any], world: World) -> None:
    """What every run must show: no failed request, the Deployment scaled up and back down to one pod, and every new
    pod reached Envoy and answered through it."""
    assert fig["failed"] == 0, fig
    assert fig["scale_ups"] >= 1 and fig["scale_downs"] >= 1, fig
    assert fig["pods_max"] >= 2 and fig["never_in_envoy"] == [] and fig["never_served"] == [], fig
    assert world.pod_count() == 1, fig  # back to min_replicas


# -- the two worlds ---------------------------------------------------------------------------------------------
@dataclass
class FakeWorld:
    """tests/fakekube's simulated Deployment (no controllers, no kubelet: the fake answers at once)."""

    kube: Any
    namespace: str
    kubeconfig: Path

    def ready_endpoints(self) -> set[str]:
        return {f"{p.ip}:{p.port}" for p in self.kube.pods_of("llm", self.namespace) if p.ready and not p.terminating}

    def pod_count(self) -> int:
        return len(self.kube.pods_of("llm", self.namespace))


@contextlib.contextmanager
def fake_world(tmp: Path, slots: int = 8) -> Iterator[FakeWorld]:
    """FakeKube with the Deployment ``llm`` (one pod), each pod Ready ``READY_DELAY_S`` after it is created and
    answered by an emulated replica started in advance (``slots`` of them: the fake's pod i is replica i)."""
    from component.livehelpers import ReplicaProc

    from fakekube import FakeKube

    reps: list[Any] = []
    kube = None
    try:
        reps = [ReplicaProc("--profile", PROFILE, "--load-delay", "0") for _ in range(slots)]
        for r in reps:
            r.wait_ready()
        kube = FakeKube(bookmark_interval_s=0.5).start()
        kube.add_deployment("llm", service="llm", replicas=1, port=PORT, ready_after_s=READY_DELAY_S,
                            termination_s=2.0, address=lambda i: ("127.0.0.1", reps[i].port))
        tmp.mkdir(parents=True, exist_ok=True)
        yield FakeWorld(kube, "default", kube.kubeconfig(tmp / "kc"))
    finally:
        if kube is not None:
            kube.stop()
        for r in reps:
            r.stop()


@dataclass
class RealWorld:
    """The real cluster of tests/k8s/cluster.py: a namespace with the Deployment ``llm``."""

    cluster: Any
    namespace: str
    kubeconfig: Path

    def ready_endpoints(self) -> set[str]:
        from k8s.cluster import pod_ready

        return {f"{p['status']['podIP']}:{PORT}" for p in self.cluster.pods(self.namespace, "llm")
                if pod_ready(p) and not p["metadata"].get("deletionTimestamp")}

    def pod_count(self) -> int:
        return len(self.cluster.pods(self.namespace, "llm"))


def real_world(cluster: Any, ns: str, kubeconfig: Path) -> RealWorld:
    """The Deployment ``llm`` with one pod in ``ns``; kwok keeps each new pod not Ready for ``READY_DELAY_S``.
    The caller runs the emulated replicas on the pods (``PodReplicas(cluster, ns, "--profile", PROFILE)``)."""
    cluster.deployment(ns, "llm", replicas=1, port=PORT, grace_s=2, ready_delay=f"{READY_DELAY_S:g}s")
    return RealWorld(cluster, ns, kubeconfig)
