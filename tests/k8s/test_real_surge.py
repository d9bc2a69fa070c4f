"""The end-to-end surge of tests/support/kube_surge.py on the real cluster: a real Envoy, xds-control with the
Kubernetes scaler and leader election, the real Deployment, ReplicaSet and EndpointSlice controllers, the scheduler
and kwok's kubelets (each pod Ready ``READY_DELAY_S`` after it starts), emulated replicas on the pods' own IPs.

The Deployment scales up for the crowd and back down after it, traffic ramps onto each new pod and drains off each
removed one, and no request fails. Its figures, beside the same surge on tests/fakekube, are in BENCHMARKS.md
(``bench/bench_kube_surge.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s.cluster import Cluster

from support.kube_surge import PROFILE, check, real_world, run_surge

pytestmark = pytest.mark.timeout(300)


async def test_a_surge_scales_the_deployment_up_and_down_with_zero_failures(
        cluster: Cluster, ns: str, kubeconfig: Path, pod_replicas) -> None:  # type: ignore[no-untyped-def]
    world = real_world(cluster, ns, kubeconfig)
    reps = pod_replicas(ns, "--profile", PROFILE)
    fig = await run_surge(world)
    print(f"kube_surge (real cluster): {fig}")
    check(fig, world)
    assert reps.errors == []
