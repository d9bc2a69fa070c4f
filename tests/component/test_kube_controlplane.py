"""Two control-plane replicas on one (fake) cluster: both serve the same endpoints, only the leader scales.

The real ``kubernetes`` client talks to the in-process fake apiserver (tests/fakekube), which stands in
for a cluster here. Each ControlPlane has its own kubeconfig and bearer token, so the fake can tell
whose requests were whose.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from fakekube import FakeKube
from support.ports import free_port

from xds_control.config import parse_config
from xds_control.runtime.app import ControlPlane
from xds_control.snapshot import types as T

pytestmark = pytest.mark.timeout(90)


def kube_config(kubeconfig: Path, listener_port: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener_port}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "autoscale": {
            "policy": "threshold", "overrides": {"min_replicas": 2, "max_replicas": 3}}}]}],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
        "controller": {"tick_s": 0.2, "signals": {"timeout_s": 0.2}},
        "kubernetes": {
            "namespace": "default", "kubeconfig": str(kubeconfig), "watch_timeout_s": 5,
            "pools": {"llm": {"deployment": "llm", "service": "llm", "port": 8000}},
            "leader_election": {"lease_duration_s": 1.5, "renew_deadline_s": 1.0, "retry_period_s": 0.1},
        },
    }


def served_endpoints(cp: ControlPlane) -> set[str]:
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


async def start_instance(kube: FakeKube, tmp_path: Path, name: str, cps: list[ControlPlane]) -> ControlPlane:
    """A control plane on ``kube`` with its own token (``token-<name>``), appended to ``cps`` once started."""
    kc = kube.kubeconfig(tmp_path / f"kc-{name}", token=f"token-{name}")
    cp = ControlPlane(parse_config(kube_config(kc, free_port())), xds_port=0, metrics_port=None)
    await cp.start()
    cps.append(cp)
    return cp


async def test_only_the_leader_scales_and_every_replica_serves_the_same_endpoints(tmp_path: Path) -> None:
    with FakeKube(bookmark_interval_s=0.5) as kube:
        kube.add_deployment("llm", service="llm", replicas=1, port=8000, ready_after_s=0.1, termination_s=0.3)
        cps: list[ControlPlane] = []
        try:
            a = await start_instance(kube, tmp_path, "a", cps)
            b = await start_instance(kube, tmp_path, "b", cps)
            await until(lambda: a.elector.is_leader() or b.elector.is_leader(), 5, "a leader")
            leader, follower = (a, b) if a.elector.is_leader() else (b, a)
            leader_token = "token-a" if leader is a else "token-b"
            follower_token = "token-b" if leader is a else "token-a"

            # The leader brings the Deployment up to min_replicas; the follower writes nothing but the Lease
            # (contending) and its own entry on the peer board (a ConfigMap).
            await until(lambda: kube.replicas("llm") >= 2, 10, "scale-up to min_replicas")
            writes = [(v, r, t) for v, r, t in kube.requests_by if v in ("patch", "update", "create")
                      and r not in ("leases", "configmaps")]
            assert writes and all(t == leader_token for _, _, t in writes), writes
            assert not [w for w in kube.requests_by if w[2] == follower_token and w[1] not in ("leases", "configmaps")
                        and w[0] not in ("get", "list", "watch")]
            await until(lambda: len(follower.controller.history) > 0, 5, "a follower tick")
            rec = follower.controller.history[-1]
            assert rec.explanation.startswith("follower") and rec.target == rec.current

            # Both serve the same endpoints: the ready pods, from the same EndpointSlices.
            def pods() -> set[str]:
                return {f"{p.ip}:{p.port}" for p in kube.pods_of("llm") if p.ready}

            await until(lambda: len(pods()) >= 2 and served_endpoints(a) == served_endpoints(b) == pods(), 15,
                        "both replicas serving the ready pods")
            zones = {r.zone for r in leader.scaler.list()}
            assert zones <= {"zone-a", "zone-b"} and zones

            # The leader goes away (clean stop releases the Lease): the follower takes over and decides.
            t0 = time.monotonic()
            await leader.stop(grace=0)
            cps.remove(leader)
            await until(follower.elector.is_leader, 5, "takeover")
            # Requirement (README "Leader election": "a clean stop releases the Lease, and a follower takes
            # over within retry_period_s", 0.1 s here); 3 s leaves room for the stop itself on a loaded machine.
            assert time.monotonic() - t0 < 3
            n0 = len(follower.controller.history)
            await until(lambda: len(follower.controller.history) > n0 + 2, 5, "ticks as leader")
            assert not follower.controller.history[-1].explanation.startswith("follower")
        finally:
            for cp in cps:
                with contextlib.suppress(Exception):
                    await cp.stop(grace=0)


async def test_scale_down_drains_then_removes_exactly_the_drained_pod(tmp_path: Path, start_replica) -> None:  # type: ignore[no-untyped-def]
    """Idle emulated vLLM replicas are the pods: the leader decides to shrink, planning drains one endpoint, and
    only once it is removable the scaler sets its deletion cost and patches the scale: the ReplicaSet (simulated
    by the fake) removes exactly that pod."""
    reps = [start_replica() for _ in range(3)]
    with FakeKube(bookmark_interval_s=0.5) as kube:
        kube.add_deployment("llm", service="llm", replicas=3, ready_after_s=0.0, termination_s=0.3,
                            address=lambda i: ("127.0.0.1", reps[i].port) if i < 3 else (None, 0))  # type: ignore[arg-type,return-value]
        cfg = kube_config(kube.kubeconfig(tmp_path / "kc"), free_port())
        cfg["services"][0]["pools"][0]["autoscale"]["overrides"] = {
            "min_replicas": 1, "max_replicas": 3, "down_sustain_s": 0.5, "cooldown_down_s": 0.5,
            "max_actions_per_minute": 60, "gpu_mem_trigger": 0.99}
        cfg["controller"]["signals"]["timeout_s"] = 1.0
        cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=None)
        await cp.start()
        try:
            await until(lambda: kube.replicas("llm") == 1 and len(kube.pods_of("llm")) == 1, 20,
                        "scale-down to min_replicas 1")
            downs = [e["endpoint"] for e in cp.controller.events if e["kind"] == "scale_down"]
            # Each pod the ReplicaSet removed is one the controller had drained, in that order, and nothing else.
            assert kube.terminated == downs and len(downs) == 2, (kube.terminated, downs)
            assert all(p.deletion_cost == 0 for p in kube.pods_of("llm"))  # the survivor was never marked
            await until(lambda: served_endpoints(cp) == {f"{p.ip}:{p.port}" for p in kube.pods_of("llm")}, 5,
                        "the survivor alone served")
        finally:
            await cp.stop(grace=0)


async def test_a_reload_cannot_change_the_kubernetes_section(tmp_path: Path) -> None:
    import yaml

    with FakeKube() as kube:
        kube.add_deployment("llm", service="llm", replicas=1, ready_after_s=0.0)
        cfg = kube_config(kube.kubeconfig(tmp_path / "kc"), free_port())
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
