"""xds-control (ControlPlane, the Kubernetes scaler and leader election) on a real cluster whose pods are emulated
replicas listening on the pods' own IPs (tests/k8s/cluster.py PodReplicas): the controller reads their load, decides,
drains, and the real ReplicaSet controller removes the pod it drained."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from k8s.cluster import Cluster, free_port, pod_ready

from xds_control.config import parse_config
from xds_control.runtime.app import ControlPlane
from xds_control.snapshot import types as T

pytestmark = pytest.mark.timeout(180)
PORT = 8000


def kube_config(ns: str, kubeconfig: Path, **autoscale: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": free_port()}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "autoscale": {
            "policy": "threshold", "overrides": {"min_replicas": 2, "max_replicas": 3, **autoscale}}}]}],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
        "controller": {"tick_s": 0.2, "signals": {"timeout_s": 1.0}},
        "kubernetes": {
            "namespace": ns, "kubeconfig": str(kubeconfig), "watch_timeout_s": 5,
            "pools": {"llm": {"deployment": "llm", "service": "llm", "port": PORT}},
            # generous lease timings: under load a 1 s renew deadline lapsed and leadership flapped mid-test
            "leader_election": {"lease_duration_s": 6.0, "renew_deadline_s": 4.0, "retry_period_s": 0.2},
        },
    }


def served(cp: ControlPlane) -> set[str]:
    snap = cp.cache.snapshot
    if snap is None or "llm" not in snap.of(T.ENDPOINT):
        return set()
    cla = endpoint_pb2.ClusterLoadAssignment.FromString(snap.of(T.ENDPOINT)["llm"].body)
    return {f"{e.endpoint.address.socket_address.address}:{e.endpoint.address.socket_address.port_value}"
            for lle in cla.endpoints for e in lle.lb_endpoints}


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def story(leader: ControlPlane, follower: ControlPlane) -> str:
    """Both instances' events and the leader's first ticks, for a failure message."""
    events = [(n, e["kind"], e.get("current"), e.get("target"), e.get("explanation", "")[:90])
              for n, cp in (("leader", leader), ("follower", follower)) for e in cp.controller.events]
    ticks = [(round(t.now, 2), t.current, t.target, [(e.key, e.state, e.phase) for e in t.endpoints])
             for t in list(leader.controller.history)[:12]]
    return f"events {events}; the leader's first ticks {ticks}"


def ready_pods(cluster: Cluster, ns: str) -> set[str]:
    return {f"{p['status']['podIP']}:{PORT}" for p in cluster.pods(ns, "llm")
            if pod_ready(p) and not p["metadata"].get("deletionTimestamp")}


async def test_only_the_leader_scales_and_both_serve_the_pods(cluster: Cluster, ns: str, kubeconfig: Path,
                                                              pod_replicas) -> None:  # type: ignore[no-untyped-def]
    cluster.deployment(ns, "llm", replicas=1, port=PORT)
    reps = pod_replicas(ns)
    # the Deployment's one pod exists before any control plane starts (a fast leader scales at once)
    await until(lambda: len(cluster.pods(ns, "llm")) == 1, 20, "the Deployment's first pod")
    before = len(cluster.pods(ns, "llm"))
    cps: list[ControlPlane] = []
    try:
        for _ in ("a", "b"):  # as the admin: the RBAC of istio/ is tested in test_real_rbac.py
            kc = kubeconfig
            cp = ControlPlane(parse_config(kube_config(ns, kc)), xds_port=0, metrics_port=None)
            await cp.start()
            cps.append(cp)
        a, b = cps
        await until(lambda: a.elector.is_leader() or b.elector.is_leader(), 10, "a leader")
        leader, follower = (a, b) if a.elector.is_leader() else (b, a)
        # The leader brings the Deployment up to min_replicas (2); the follower holds its decision.
        await until(lambda: cluster.replicas(ns, "llm") == 2, 20, "scale-up to min_replicas")
        managed = cluster.admin("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/llm/scale")
        assert managed["spec"]["replicas"] == 2 and before == 1, (managed["spec"], before, story(leader, follower))
        await until(lambda: len(follower.controller.history) > 0, 10, "a follower tick")
        rec = follower.controller.history[-1]
        assert rec.explanation.startswith("follower") and rec.target == rec.current
        # Both serve the same endpoints: the ready pods' own IPs, from the real EndpointSlices, zones from the nodes.
        try:
            await until(lambda: len(ready_pods(cluster, ns)) == 2
                        and served(a) == served(b) == ready_pods(cluster, ns), 30,
                        "both replicas serving the two ready pods")
        except AssertionError as e:
            raise AssertionError(f"{e}: ready pods {ready_pods(cluster, ns)}, leader serves {served(leader)}, "
                                 f"follower {served(follower)}; {story(leader, follower)}") from None
        assert {r.zone for r in leader.scaler.list()} == {"zone-a", "zone-b"}
        assert all(reps.serving(p["metadata"]["name"]) for p in cluster.pods(ns, "llm"))

        t0 = time.monotonic()
        await leader.stop(grace=0)
        cps.remove(leader)
        await until(follower.elector.is_leader, 10, "takeover")
        assert time.monotonic() - t0 < 3  # a clean stop released the Lease
        n0 = len(follower.controller.history)
        await until(lambda: len(follower.controller.history) > n0 + 2, 10, "ticks as leader")
        assert not follower.controller.history[-1].explanation.startswith("follower")
        assert reps.errors == []
    finally:
        for cp in cps:
            with contextlib.suppress(Exception):
                await cp.stop(grace=0)


async def test_scale_down_removes_exactly_the_drained_pod(cluster: Cluster, ns: str, kubeconfig: Path,
                                                          pod_replicas) -> None:  # type: ignore[no-untyped-def]
    """Idle emulated replicas on three pods: the leader decides to shrink, planning drains one endpoint, and once it
    is removable the scaler sets its deletion cost and patches the scale: the real ReplicaSet controller removes
    exactly that pod, and its replica keeps serving until kwok removes the pod at the end of its grace period."""
    cluster.deployment(ns, "llm", replicas=3, port=PORT, grace_s=2)
    reps = pod_replicas(ns)
    await until(lambda: len(ready_pods(cluster, ns)) == 3 and all(reps.serving(p["metadata"]["name"])
                                                                  for p in cluster.pods(ns, "llm")),
                30, "three ready pods with their replicas serving")
    ip_of = {f"{p['status']['podIP']}:{PORT}": p["metadata"]["name"] for p in cluster.pods(ns, "llm")}
    cfg = kube_config(ns, kubeconfig, min_replicas=1, max_replicas=3, down_sustain_s=0.5, cooldown_down_s=0.5,
                      max_actions_per_minute=60, gpu_mem_trigger=0.99)
    cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=None)
    await cp.start()
    try:
        await until(lambda: cluster.replicas(ns, "llm") == 1 and len(cluster.pods(ns, "llm")) == 1, 60,
                    "scale-down to min_replicas 1")
        downs = [e["endpoint"] for e in cp.controller.events if e["kind"] == "scale_down"]
        assert len(downs) == 2, cp.controller.events
        removed = [name for key, name in ip_of.items() if name not in {p["metadata"]["name"]
                                                                       for p in cluster.pods(ns, "llm")}]
        # each pod the ReplicaSet removed is one the controller had drained, and nothing else
        assert sorted(removed) == sorted(ip_of.get(d, d) for d in downs), (removed, downs)
        await until(lambda: set(reps.stopped) == set(removed), 10, "their replicas stopped with the pods")
        await until(lambda: served(cp) == ready_pods(cluster, ns), 10, "the survivor alone served")
        assert reps.errors == []
    finally:
        await cp.stop(grace=0)


async def test_a_reload_cannot_change_the_kubernetes_section(cluster: Cluster, ns: str, kubeconfig: Path) -> None:
    """A config reload may change policies but not what the scaler and the elector were built on: a reload that
    moves a pool to another Deployment is refused, and the running one is kept."""
    import copy

    import yaml

    cluster.deployment(ns, "llm", replicas=2, port=PORT)
    cfg = kube_config(ns, kubeconfig)
    cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=None)
    await cp.start()
    try:
        same = copy.deepcopy(cfg)
        same["services"][0]["pools"][0]["autoscale"]["overrides"]["max_replicas"] = 4
        assert cp.reload_text(yaml.safe_dump(same))
        moved = copy.deepcopy(cfg)
        moved["kubernetes"]["pools"]["llm"]["deployment"] = "llm-2"
        assert not cp.reload_text(yaml.safe_dump(moved))
        assert cp.config.kubernetes is not None and cp.config.kubernetes.pools["llm"].deployment == "llm"
    finally:
        await cp.stop(grace=0)
