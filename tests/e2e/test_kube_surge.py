"""The end-to-end surge of tests/support/kube_surge.py on tests/fakekube: a real Envoy, the Kubernetes scaler, the
fake API server's simulated Deployment, emulated replicas (one process per pod the fake can create).

Beside the real cluster's run (tests/k8s/test_real_surge.py): the fake answers at once (no controllers, no kubelet),
so its figures are the control plane's own share of the real ones (bench/bench_kube_surge.py prints both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.kube_surge import fake_world, run_surge

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(240)]


async def test_a_surge_scales_the_deployment_up_and_down_with_zero_failures(tmp_path: Path) -> None:
    with fake_world(tmp_path) as world:
        fig = await run_surge(world)
        print(f"kube_surge (fakekube): {fig}")
        assert fig["failed"] == 0, fig
        assert fig["scale_ups"] >= 1 and fig["scale_downs"] >= 1, fig
        assert fig["pods_max"] >= 2 and fig["never_in_envoy"] == [] and fig["never_served"] == [], fig
        assert world.pod_count() == 1, fig  # back to min_replicas
