"""A real Envoy 1.40 shaped like an Istio sidecar, patched by `xds-control istio render`, takes its
endpoints from a running xds-control -- which takes them from the real cluster's EndpointSlices.

The chain: pods (real HTTP upstreams on the pods' own IPs) -> EndpointSlices made by the real EndpointSlice
controller -> KubernetesScaler watch -> controller plan -> EDS (a non-aggregated EndpointDiscoveryService stream,
as the patched cluster asks) -> the sidecar's ``outbound|8000||HOST`` cluster -> requests through the sidecar's
listener. A deleted pod (an eviction) is replaced by the ReplicaSet, and the sidecar follows.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from k8s.cluster import Cluster

from support.envoy import cluster_hosts
from support.istio_sidecar import apply_cluster_patches, istio_sidecar_bootstrap
from support.ports import free_port
from support.traffic import send
from support.upstream import Upstream

from xds_control.config import parse_config
from xds_control.envoy.check import envoy_binary
from xds_control.istio import render_envoyfilters
from xds_control.runtime.app import ControlPlane

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

SVC = "llm-v1"


class SidecarEnvoy:
    """Envoy run from a given bootstrap (the Istio-shaped sidecar), admin on a port it picks."""

    def __init__(self, bootstrap: dict[str, Any], workdir: Path) -> None:
        self.dir = workdir
        (workdir / "sidecar.json").write_text(json.dumps(bootstrap))
        self.addr_file = workdir / "admin.addr"
        self.log = open(workdir / "envoy.log", "wb")
        binary = envoy_binary()
        assert binary
        self.proc = subprocess.Popen(
            [binary, "-c", str(workdir / "sidecar.json"), "--disable-hot-restart", "--concurrency", "1",
             "-l", "warning", "--admin-address-path", str(self.addr_file), "--drain-time-s", "1"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (self.addr_file.exists() and self.addr_file.read_text().strip()):
            assert self.proc.poll() is None, (workdir / "envoy.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "envoy did not start"
            time.sleep(0.05)
        self.admin_port = int(self.addr_file.read_text().strip().rsplit(":", 1)[1])

    def admin(self, path: str) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode()

    def endpoints(self, cluster: str) -> set[str]:
        return {k for k, h in cluster_hosts(self.admin("/clusters"), cluster).items()
                if h.get("health_flags") == "healthy"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def config(ns: str, kubeconfig: Path) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": free_port()}],
        "services": [{"name": "llm", "pools": [{"name": "llm-v1", "lb_policy": "least_request",
                                                "outlier_detection": {"consecutive_5xx": 3},
                                                "autoscale": {"policy": "threshold", "overrides": {
                                                    "min_replicas": 2, "max_replicas": 2}}}]}],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
        "controller": {"tick_s": 0.2, "signals": {"timeout_s": 0.2}},
        "kubernetes": {"namespace": ns, "kubeconfig": str(kubeconfig), "watch_timeout_s": 5,
                       "pools": {"llm-v1": {"deployment": "llm-v1", "service": "llm-v1", "port": 8000}},
                       "leader_election": {"enabled": False}},
    }


async def wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception as e:  # noqa: BLE001 - admin not ready yet
            last = e
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def running_pods(cluster: Cluster, ns: str) -> dict[str, str]:
    """Pod name -> IP of the Deployment's Running pods that are not terminating."""
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in cluster.pods(ns, SVC)
            if (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP")
            and not p["metadata"].get("deletionTimestamp")}


async def test_istio_sidecar_takes_endpoints_from_xds_control(cluster: Cluster, ns: str, kubeconfig: Path,
                                                              tmp_path: Path) -> None:
    host = f"{SVC}.{ns}.svc.cluster.local"
    cluster.deployment(ns, SVC, replicas=2, port=8000, grace_s=1)
    ups: dict[str, Upstream] = {}  # pod name -> its upstream, answering with the pod's name

    def serve_pods() -> dict[str, str]:
        pods = running_pods(cluster, ns)
        for name, ip in pods.items():
            if name not in ups:
                ups[name] = Upstream(name, 8000, host=ip).start()
        return pods

    envoy: SidecarEnvoy | None = None
    cp: ControlPlane | None = None
    try:
        await wait_for(lambda: len(serve_pods()) == 2, 30, "two Running pods")
        first = running_pods(cluster, ns)
        cfg = parse_config(config(ns, kubeconfig))
        cp = ControlPlane(cfg, xds_port=0, metrics_port=None)
        await cp.start()

        filters = render_envoyfilters(cfg, ns, xds_address=("127.0.0.1", cp.ports.xds))
        listener = free_port()
        boot = apply_cluster_patches(
            istio_sidecar_bootstrap([(host, 8000, SVC, ns)], listener, istiod_port=free_port(),
                                    with_istiod_cds=False), filters)
        envoy = SidecarEnvoy(boot, tmp_path)
        cluster_name = f"outbound|8000||{host}"
        want = {f"{ip}:8000" for ip in first.values()}
        await wait_for(lambda: envoy.endpoints(cluster_name) == want, 30, f"the sidecar to get {want} over EDS")

        tally = await asyncio.to_thread(send, listener, 60)
        assert not tally.failures, tally.failures[:5]
        assert set(tally.by_body) == set(first)

        # Kubernetes replaces a pod (eviction): the new pod's endpoint reaches the sidecar, the old one leaves.
        victim = sorted(first)[0]
        cluster.admin("DELETE", f"/api/v1/namespaces/{ns}/pods/{victim}")
        await wait_for(lambda: len(serve_pods()) == 2 and victim not in running_pods(cluster, ns), 30,
                       "the replacement pod Running")
        now = running_pods(cluster, ns)
        want = {f"{ip}:8000" for ip in now.values()}
        await wait_for(lambda: envoy.endpoints(cluster_name) == want, 30, f"the sidecar to move to {want}")
        tally = await asyncio.to_thread(send, listener, 60)
        assert not tally.failures, tally.failures[:5]
        assert set(tally.by_body) == set(now) and victim not in tally.by_body

        dump = json.loads(envoy.admin("/config_dump"))
        static = [c["cluster"] for cfgs in dump["configs"] if "static_clusters" in cfgs
                  for c in cfgs["static_clusters"]]
        patched = next(c for c in static if c["name"] == cluster_name)
        assert patched["eds_cluster_config"]["service_name"] == SVC
        assert patched["lb_policy"] == "LEAST_REQUEST" and patched["outlier_detection"]["consecutive_5xx"] == 3
        sidecar = [p for p in cp.status()["proxies"] if p["node"].startswith("sidecar~")]  # type: ignore[union-attr]
        assert sidecar and set(sidecar[0]["types"]) == {"EDS"}, sidecar  # endpoints only: the rest is istiod's
    finally:
        if envoy is not None:
            envoy.stop()
        if cp is not None:
            await cp.stop(grace=0)
        for u in ups.values():
            u.stop()
