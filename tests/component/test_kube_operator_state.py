"""Operator state on Kubernetes (actuators/kube_state.py): one ConfigMap shared by the control-plane instances.
A pin and a drain set on one instance hold on the other within a second or two, and a new instance (a restart)
restores them before its first publish. Against tests/fakekube's ConfigMaps (the real server: tests/k8s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_kube_controlplane import start_instance, until

from fakekube import FakeKube

from xds_control.actuators.kube_state import STATE_KEY
from xds_control.runtime.app import ControlPlane

pytestmark = pytest.mark.timeout(90)


async def test_pins_and_drains_are_shared_by_instances_and_survive_a_restart(tmp_path: Path) -> None:
    with FakeKube(bookmark_interval_s=0.5) as kube:
        kube.add_deployment("llm", service="llm", replicas=2, port=8000, ready_after_s=0.1, termination_s=0.3)
        cps: list[ControlPlane] = []
        try:
            a = await start_instance(kube, tmp_path, "a", cps)
            b = await start_instance(kube, tmp_path, "b", cps)
            await until(lambda: len([r for r in a.scaler.list() if r.state.value == "ready"]) == 2, 10, "2 pods")
            k1, k2 = sorted(r.key for r in a.scaler.list())
            a.operator.pin("llm", k1, 7)
            a.operator.drain("llm", k2)
            cm = kube.configmaps[("default", "xds-control-operator")]
            stored = json.loads(cm["data"][STATE_KEY])
            assert stored  # written on the change, by the instance that took it
            await until(lambda: b.operator.weights.get(("llm", k1)) == 7 and ("llm", k2) in b.operator.drains, 5,
                        "the other instance holding the pin and the drain")
            # b's plan carries them too: the pin on k1, k2 draining
            await until(lambda: any(e.key == k1 and e.weight == 7 for p in b.cache.snapshot.plan.pools
                                    for e in p.endpoints), 5, "the pin in b's plan")
            # undone on b: a follows
            b.operator.unpin("llm", k1)
            await until(lambda: ("llm", k1) not in a.operator.weights, 5, "the unpin on a")
            # a new instance restores what is in force before its first publish
            c = await start_instance(kube, tmp_path, "c", cps)
            assert ("llm", k2) in c.operator.drains and ("llm", k1) not in c.operator.weights
        finally:
            for cp in cps:
                await cp.stop(grace=0)
