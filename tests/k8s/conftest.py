"""The real cluster (tests/k8s/cluster.py) for the session: started once, stopped at the end.

When it cannot run here the tests that need it are skipped with the exact reason (``make test`` lists it), unless
``XDS_K8S_REQUIRED=1`` (``make test-k8s`` sets it): then that reason fails them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from k8s.cluster import Cluster, PodReplicas, unavailable


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    why = unavailable()
    if why is not None:
        if os.environ.get("XDS_K8S_REQUIRED") == "1":
            pytest.fail(f"the real-cluster tests cannot run: {why}")
        pytest.skip(f"real Kubernetes control plane not available: {why}")
    with Cluster(tmp_path_factory.mktemp("cluster")) as c:
        print(f"\nreal cluster: kube-apiserver {c.version} at {c.url}")
        yield c


@pytest.fixture
def ns(cluster: Cluster) -> str:
    """A fresh namespace per test (the cluster is shared by the session)."""
    return cluster.namespace()


@pytest.fixture
def pod_replicas(cluster: Cluster) -> Iterator[Callable[..., PodReplicas]]:
    made: list[PodReplicas] = []

    def make(namespace: str, *args: str) -> PodReplicas:
        r = PodReplicas(cluster, namespace, *args)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def kubeconfig(cluster: Cluster, tmp_path: Path) -> Path:
    """The admin's kubeconfig (group system:masters)."""
    return cluster.kubeconfig(tmp_path / "admin.kubeconfig", cluster.admin_token)
