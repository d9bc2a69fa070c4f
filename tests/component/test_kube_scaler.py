"""The Kubernetes scaler's watch faults that a real API server does not produce on demand, on tests/fakekube.

Everything else the scaler does is tested against the real cluster (tests/k8s/test_real_scaler.py, ``make
test-k8s``). Kept here: a watch answered ``410 Gone`` because the history it resumes from was compacted at a
chosen moment (a change made in the gap must still arrive, by a relist), and the periodic resync (a relist even
when the watch says nothing: the guard against a missed event, which a real server never drops on purpose).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fakekube import FakeKube

from xds_control.actuators.kubernetes import DELETION_COST, KubePool, KubernetesScaler, make_api_client

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


def test_deletion_cost_annotation_name() -> None:
    # The annotation the ReplicaSet controller reads (Kubernetes >= 1.22, beta, on by default).
    assert DELETION_COST == "controller.kubernetes.io/pod-deletion-cost"


async def test_periodic_resync_relists(kube: FakeKube, scaler) -> None:  # type: ignore[no-untyped-def]
    kube.add_deployment("llm", service="llm-svc", replicas=1)
    s = scaler(resync_s=0.5)
    await s.start()
    await until(lambda: s.relists >= 3, timeout=5, what="two resyncs")
    assert kube.requests.count(("list", "endpointslices")) >= 3
