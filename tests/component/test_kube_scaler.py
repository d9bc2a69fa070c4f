"""The Kubernetes scaler: the real ``kubernetes`` client against the in-process fake apiserver.

The fake (tests/fakekube) stands in for a cluster: it serves exactly the REST paths the scaler uses and
simulates the Deployment -> pods -> EndpointSlice chain (see its docstring).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fakekube import FakeKube

from xds_control.actuators.base import ReplicaState
from xds_control.actuators.kubernetes import DELETION_COST, KubePool, KubernetesScaler, NotLeader, make_api_client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(bookmark_interval_s=0.2) as k:
        yield k


@pytest.fixture
async def scaler(kube: FakeKube, tmp_path: Path) -> AsyncIterator[Callable[..., KubernetesScaler]]:
    made: list[KubernetesScaler] = []

    def make(**kw: object) -> KubernetesScaler:
        client = make_api_client(str(kube.kubeconfig(tmp_path / "kubeconfig")))
        s = KubernetesScaler(client, "default", [KubePool("llm", "llm", "llm-svc", "http")],
                             owns_client=True, watch_timeout_s=2, **kw)  # type: ignore[arg-type]
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def states(s: KubernetesScaler) -> dict[str, str]:
    return {r.id: r.state.value for r in s.list()}


async def test_discovery_maps_endpointslices_to_replicas(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=2, port=8000, zones=("zone-a", "zone-b"),
                        nodes=("node-1", "node-2"))
    p1, p2 = kube.pods_of("llm")
    kube.set_ready(p1.name)
    s = scaler()
    await s.start()
    infos = {r.id: r for r in s.list()}
    assert set(infos) == {p1.name, p2.name}
    a, b = infos[p1.name], infos[p2.name]
    assert (a.state, a.zone, a.node, a.address, a.port, a.pool) == (ReplicaState.READY, "zone-a", "node-1", p1.ip,
                                                                   8000, "llm")
    assert (b.state, b.zone, b.node) == (ReplicaState.STARTING, "zone-b", "node-2")
    assert a.key == f"{p1.ip}:8000"

    # The watch delivers changes: readiness, then an eviction (terminating -> draining, replaced by a new pod).
    kube.set_ready(p2.name)
    await until(lambda: states(s).get(p2.name) == "ready", what="p2 ready")
    kube.terminate(p1.name)
    await until(lambda: states(s).get(p1.name) == "stopping", what="p1 draining")
    await until(lambda: p1.name not in states(s) and len(states(s)) == 2, what="p1 gone and replaced")
    assert s.watch_events > 0 and s.relists == 1
    assert ("watch", "endpointslices") in kube.requests


async def test_watch_resumes_after_410_gone_with_a_relist(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=1)
    s = scaler()
    await s.start()
    await until(lambda: s.watch_events > 0, what="a first bookmark")
    kube.compact()  # history gone and the watch ended: resuming from the old resourceVersion is 410 Gone
    kube.set_scale("llm", 3)  # a change the watch never streams (it happens in the gap)
    await until(lambda: len(s.list()) == 3, what="relist after 410")
    assert s.relists >= 2
    assert kube.requests.count(("list", "endpointslices")) >= 2


async def test_scale_up_is_a_conflict_safe_read_modify_write(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=1)
    s = scaler()
    await s.start()
    info = await s.start_replica("llm")
    assert info.state == ReplicaState.STARTING and info.address == ""
    assert kube.replicas("llm") == 2
    # Another writer scales between our read and our patch: 409 Conflict, then a retry on fresh data.
    fired = []

    def other_writer(_path: str) -> None:
        if not fired:
            fired.append(1)
            kube.set_scale("llm", 5)

    kube.on_scale_read = other_writer
    await s.start_replica("llm")
    kube.on_scale_read = None
    assert kube.conflicts == 1
    assert kube.replicas("llm") == 6  # 5 from the other writer, + 1 from us: nothing lost
    await until(lambda: len(s.list()) == 6, what="six pods")


async def test_pending_counts_pods_without_an_address(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=1,
                        address=lambda i: ("127.0.1.9", 8000) if i == 0 else (None, 8000))  # type: ignore[arg-type,return-value]
    s = scaler()
    await s.start()
    assert s.pending("llm") == 0
    await s.start_replica("llm")  # unschedulable: no IP, so no endpoint
    await asyncio.sleep(0.3)
    assert len(s.list()) == 1 and s.pending("llm") == 1


async def test_stop_replica_removes_exactly_that_pod(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=3, ready_after_s=0.0, termination_s=0.5)
    s = scaler()
    await s.start()
    await until(lambda: list(states(s).values()) == ["ready"] * 3, what="three ready")
    victim = kube.pods_of("llm")[1]  # neither the oldest nor the newest: the ReplicaSet would not pick it
    await s.stop_replica(victim.name)
    assert kube.replicas("llm") == 2
    assert victim.deletion_cost == -(2**31)
    assert states(s)[victim.name] == "stopping"  # at once, before the slice says so: never decremented twice
    await s.stop_replica(victim.name)
    assert kube.replicas("llm") == 2
    await until(lambda: victim.name not in states(s), what="victim gone")
    assert [p.name for p in kube.pods_of("llm") if not p.terminating] == \
        [p.name for p in kube.pods_of("llm") if p.name != victim.name]
    assert ("patch", "pods") in kube.requests


async def test_stop_is_deferred_while_another_pod_is_not_ready(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=2)
    a, b = kube.pods_of("llm")
    kube.set_ready(a.name)
    s = scaler()
    await s.start()
    await s.stop_replica(a.name)  # b is not ready: the ReplicaSet would remove b, not a
    assert kube.replicas("llm") == 2 and a.deletion_cost == 0
    kube.set_ready(b.name)
    await until(lambda: states(s).get(b.name) == "ready")
    await s.stop_replica(a.name)
    assert kube.replicas("llm") == 1
    await until(lambda: set(states(s)) == {b.name}, what="only b left")


async def test_a_follower_never_writes(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=1, ready_after_s=0.0)
    s = scaler(is_leader=lambda: False)
    await s.start()
    await until(lambda: list(states(s).values()) == ["ready"])
    with pytest.raises(NotLeader):
        await s.start_replica("llm")
    await s.stop_replica(kube.pods_of("llm")[0].name)
    assert kube.replicas("llm") == 1
    assert not [r for r in kube.requests if r[0] in ("patch", "update", "create")]


def test_deletion_cost_annotation_name() -> None:
    # The annotation the ReplicaSet controller reads (Kubernetes >= 1.22, beta, on by default).
    assert DELETION_COST == "controller.kubernetes.io/pod-deletion-cost"


async def test_in_cluster_service_account_over_https(tmp_path: Path) -> None:
    """In a pod: KUBERNETES_SERVICE_HOST/PORT, and the mounted token, CA and namespace (here a temp directory)."""
    from fakekube import make_tls

    from xds_control.actuators.kubernetes import default_namespace, in_cluster

    ca, crt, key = make_tls(tmp_path)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("sa-token")
    (sa / "ca.crt").write_bytes(ca.read_bytes())
    (sa / "namespace").write_text("inference\n")
    with FakeKube(token="sa-token", tls=(crt, key)) as kube:
        kube.add_deployment("llm", namespace="inference", service="llm-svc", replicas=2, ready_after_s=0.0)
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube.port)}
        assert in_cluster(env, str(sa)) and not in_cluster({}, str(sa))
        ns = default_namespace(environ=env, sa_dir=str(sa))
        assert ns == "inference"
        client = make_api_client(environ=env, sa_dir=str(sa))
        assert client.configuration.host == f"https://127.0.0.1:{kube.port}"
        s = KubernetesScaler(client, ns, [KubePool("llm", "llm", "llm-svc")], owns_client=True, watch_timeout_s=2)
        try:
            await s.start()
            await until(lambda: list(states(s).values()) == ["ready", "ready"], what="two ready pods over HTTPS")
            await s.start_replica("llm")
            assert kube.replicas("llm", "inference") == 3
        finally:
            await s.close()


async def test_periodic_resync_relists(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=1)
    s = scaler(resync_s=0.5)
    await s.start()
    await until(lambda: s.relists >= 3, timeout=5, what="two resyncs")
    assert kube.requests.count(("list", "endpointslices")) >= 3
