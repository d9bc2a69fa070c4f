"""The Kubernetes scaler against a real cluster: the real Deployment, ReplicaSet and EndpointSlice controllers,
the real scheduler spreading pods over two zones, and kwok's fake kubelets (tests/k8s/cluster.py).

Kept on tests/fakekube (tests/component/test_kube_scaler.py) only what a real server does not do on demand: a watch
answered ``410 Gone`` after a compaction at a chosen moment, and a relist while the watch is silent (the periodic
resync). A write landing between our read and our patch at a chosen moment is produced here by a second real writer
hooked after our read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from k8s.cluster import Cluster

from xds_control.actuators.base import ReplicaState
from xds_control.actuators.kubernetes import DELETION_COST, KubePool, KubernetesScaler, NotLeader, make_api_client

pytestmark = pytest.mark.timeout(120)
PORT = 8000


@pytest.fixture
async def scaler(kubeconfig: Path, ns: str) -> AsyncIterator[Callable[..., KubernetesScaler]]:
    made: list[KubernetesScaler] = []

    def make(**kw: Any) -> KubernetesScaler:
        s = KubernetesScaler(make_api_client(str(kubeconfig)), ns, [KubePool("llm", "llm", "llm-svc", "http")],
                             owns_client=True, watch_timeout_s=5, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


async def until(pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def states(s: KubernetesScaler) -> dict[str, str]:
    return {r.id: r.state.value for r in s.list()}


def endpoint(cluster: Cluster, ns: str, pod: str) -> dict[str, Any]:
    for sl in cluster.slices(ns, "llm-svc"):
        for ep in sl.get("endpoints") or []:
            if (ep.get("targetRef") or {}).get("name") == pod:
                return dict(ep)
    return {}


async def test_discovery_from_real_endpointslices(cluster: Cluster, ns: str, scaler) -> None:  # type: ignore[no-untyped-def]
    cluster.deployment(ns, "llm", service="llm-svc", replicas=2, port=PORT, grace_s=4)
    s = scaler()
    await s.start()
    await until(lambda: list(states(s).values()) == ["ready", "ready"], what="two ready pods")
    pods = {p["metadata"]["name"]: p for p in cluster.pods(ns, "llm")}
    infos = {r.id: r for r in s.list()}
    assert set(infos) == set(pods)
    zones = {}
    for name, info in infos.items():
        pod = pods[name]
        node = cluster.admin("GET", f"/api/v1/nodes/{pod['spec']['nodeName']}")
        assert (info.address, info.port, info.pool) == (pod["status"]["podIP"], PORT, "llm")
        assert info.node == pod["spec"]["nodeName"]
        assert info.zone == node["metadata"]["labels"]["topology.kubernetes.io/zone"]  # the node's topology label
        zones[info.zone] = name
    assert set(zones) == {"zone-a", "zone-b"}  # the scheduler spread them

    # A deleted pod: the EndpointSlice controller marks it terminating (serving while its grace period runs), the
    # scaler reports it stopping at once, the ReplicaSet replaces it, and it leaves once kwok removes it.
    victim = zones["zone-a"]
    cluster.admin("DELETE", f"/api/v1/namespaces/{ns}/pods/{victim}")
    await until(lambda: states(s).get(victim) == "stopping", what="the deleted pod draining")
    ep = endpoint(cluster, ns, victim)
    assert ep["conditions"] == {"ready": False, "serving": True, "terminating": True}, ep
    await until(lambda: victim not in states(s) and list(states(s).values()) == ["ready", "ready"],
                what="the victim gone and replaced")
    assert s.watch_events > 0 and s.relists == 1


async def test_a_pod_not_ready_yet_is_starting(cluster: Cluster, ns: str, scaler) -> None:  # type: ignore[no-untyped-def]
    cluster.deployment(ns, "llm", service="llm-svc", replicas=1, port=PORT, ready_delay="3s")
    s = scaler()
    await s.start()
    await until(lambda: list(states(s).values()) == ["starting"], what="a Running, not ready pod")
    (name,) = states(s)
    assert endpoint(cluster, ns, name)["conditions"] == {"ready": False, "serving": False, "terminating": False}
    await until(lambda: states(s) == {name: "ready"}, what="ready after kwok's delay")


async def test_scale_up_retries_a_real_409_conflict(cluster: Cluster, ns: str, scaler) -> None:  # type: ignore[no-untyped-def]
    cluster.deployment(ns, "llm", service="llm-svc", replicas=1, port=PORT)
    s = scaler()
    await s.start()
    info = await s.start_replica("llm")
    assert info.state == ReplicaState.STARTING and info.address == ""
    assert cluster.replicas(ns, "llm") == 2

    # Another writer scales between our read of the scale and our patch: the real server refuses our patch (its
    # resourceVersion precondition no longer holds) with 409 Conflict, and the scaler re-reads and retries.
    real_read = s.apps.read_namespaced_deployment_scale
    reads: list[str] = []
    conflicts: list[int] = []

    def read_then_other_writer(*a: Any, **kw: Any) -> Any:
        out = real_read(*a, **kw)
        reads.append(out.metadata.resource_version)
        if len(reads) == 1:
            cluster.set_scale(ns, "llm", 5)
        return out

    real_patch = s.apps.patch_namespaced_deployment_scale

    def patch(*a: Any, **kw: Any) -> Any:
        from kubernetes.client.rest import ApiException
        try:
            return real_patch(*a, **kw)
        except ApiException as e:
            conflicts.append(e.status)
            raise

    s.apps.read_namespaced_deployment_scale = read_then_other_writer  # type: ignore[method-assign]
    s.apps.patch_namespaced_deployment_scale = patch  # type: ignore[method-assign]
    await s.start_replica("llm")
    # (the Deployment controller's own status writes move the resourceVersion too, so a retry may conflict again)
    assert conflicts and set(conflicts) == {409} and len(reads) == len(conflicts) + 1 and reads[0] != reads[1]
    assert cluster.replicas(ns, "llm") == 6  # 5 from the other writer, + 1 from us: nothing lost
    await until(lambda: len(states(s)) == 6, what="six pods in the slices")


async def test_pending_counts_pods_that_cannot_be_scheduled(cluster: Cluster, ns: str, scaler) -> None:  # type: ignore[no-untyped-def]
    # No node has this label: the scheduler leaves the pods Pending, without an IP, so in no EndpointSlice.
    cluster.deployment(ns, "llm", service="llm-svc", replicas=0, port=PORT, node_selector={"gpu": "none-such"})
    s = scaler()
    await s.start()
    assert s.pending("llm") == 0
    await s.start_replica("llm")
    await until(lambda: len(cluster.pods(ns, "llm")) == 1, what="the pod created")
    await asyncio.sleep(1.0)
    (pod,) = cluster.pods(ns, "llm")
    assert pod["status"]["phase"] == "Pending" and not pod["status"].get("podIP")
    assert s.list() == [] and s.pending("llm") == 1


async def test_the_real_replicaset_removes_exactly_the_chosen_pod(cluster: Cluster, ns: str, scaler) -> None:  # type: ignore[no-untyped-def]
    cluster.deployment(ns, "llm", service="llm-svc", replicas=3, port=PORT, grace_s=2)
    s = scaler()
    await s.start()
    await until(lambda: list(states(s).values()) == ["ready"] * 3, what="three ready")
    pods = [p["metadata"]["name"] for p in cluster.pods(ns, "llm")]
    # Neither the oldest nor the newest (the ReplicaSet's own tie-breaks would not pick it on its own).
    victim = pods[1]
    await s.stop_replica(victim)
    assert cluster.replicas(ns, "llm") == 2
    assert states(s)[victim] == "stopping"  # at once, before the slice says so: never decremented twice
    await s.stop_replica(victim)
    assert cluster.replicas(ns, "llm") == 2
    await until(lambda: victim not in states(s) and len(cluster.pods(ns, "llm")) == 2, what="victim gone")
    left = [p["metadata"]["name"] for p in cluster.pods(ns, "llm")]
    assert left == [pods[0], pods[2]]  # the ReplicaSet controller chose the pod with the lowest deletion cost
    assert all(DELETION_COST not in (p["metadata"].get("annotations") or {}) for p in cluster.pods(ns, "llm"))


async def test_stop_is_deferred_while_another_pod_is_not_ready(cluster: Cluster, ns: str, scaler) -> None:  # type: ignore[no-untyped-def]
    cluster.deployment(ns, "llm", service="llm-svc", replicas=1, port=PORT, ready_delay="4s")
    s = scaler()
    await s.start()
    await until(lambda: list(states(s).values()) == ["ready"], what="a ready")
    (a,) = states(s)
    # b takes 4 s to become ready: the ReplicaSet would remove b (not ready ranks first), not a, so the scaler waits.
    cluster.set_scale(ns, "llm", 2)
    await until(lambda: "starting" in states(s).values(), what="b starting")
    await s.stop_replica(a)
    assert cluster.replicas(ns, "llm") == 2
    assert DELETION_COST not in (cluster.admin("GET", f"/api/v1/namespaces/{ns}/pods/{a}")["metadata"]
                                 .get("annotations") or {})
    await until(lambda: list(states(s).values()) == ["ready", "ready"], what="b ready")
    (b,) = set(states(s)) - {a}
    await s.stop_replica(a)
    assert cluster.replicas(ns, "llm") == 1
    await until(lambda: set(states(s)) == {b} and len(cluster.pods(ns, "llm")) == 1, what="only b left")
    assert cluster.pods(ns, "llm")[0]["metadata"]["name"] == b


async def test_a_follower_never_writes(cluster: Cluster, ns: str, scaler) -> None:  # type: ignore[no-untyped-def]
    cluster.deployment(ns, "llm", service="llm-svc", replicas=1, port=PORT)
    s = scaler(is_leader=lambda: False)
    await s.start()
    await until(lambda: list(states(s).values()) == ["ready"], what="a ready")
    before = cluster.admin("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/llm")["metadata"]["resourceVersion"]
    with pytest.raises(NotLeader):
        await s.start_replica("llm")
    (pod,) = states(s)
    await s.stop_replica(pod)
    assert cluster.replicas(ns, "llm") == 1
    assert cluster.admin("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/llm")["metadata"]["resourceVersion"] \
        == before
    assert DELETION_COST not in (cluster.admin("GET", f"/api/v1/namespaces/{ns}/pods/{pod}")["metadata"]
                                 .get("annotations") or {})


async def test_in_cluster_config_over_https(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    """In a pod: KUBERNETES_SERVICE_HOST/PORT and the mounted token, CA and namespace (here a temp directory): the
    scaler finds the API server, verifies its certificate with the mounted CA and works in the mounted namespace."""
    from xds_control.actuators.kubernetes import default_namespace, in_cluster

    cluster.deployment(ns, "llm", service="llm-svc", replicas=2, port=PORT)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(cluster.admin_token)
    (sa / "ca.crt").write_bytes(Path(cluster.files["ca"]).read_bytes())
    (sa / "namespace").write_text(f"{ns}\n")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(cluster.port)}
    assert in_cluster(env, str(sa)) and not in_cluster({}, str(sa))
    assert default_namespace(environ=env, sa_dir=str(sa)) == ns
    client = make_api_client(environ=env, sa_dir=str(sa))
    assert client.configuration.host == f"https://127.0.0.1:{cluster.port}"
    s = KubernetesScaler(client, ns, [KubePool("llm", "llm", "llm-svc", "http")], owns_client=True, watch_timeout_s=5)
    try:
        await s.start()
        await until(lambda: list(states(s).values()) == ["ready", "ready"], what="two ready pods over HTTPS")
        await s.start_replica("llm")
        assert cluster.replicas(ns, "llm") == 3
    finally:
        await s.close()
