"""A route Envoy rejects on an autoscaled service: rejected once, rolled back once, and the fleet keeps scaling.

The controller publishes a new plan whenever the fleet changes; every one of them is built from the config,
which still carries the bad route. The publisher keeps the rejected route out of all of them (the last good
route content) while the endpoint changes go through: a real Envoy 1.40 NACKs exactly once, the control plane
rolls back exactly once, and the replicas started afterwards reach Envoy.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from support.envoy import Envoy
from support.ports import free_port

from xds_control.config import load_config
from xds_control.config.policy import resolve_policy
from xds_control.runtime.admin_port import RuntimeAdminPort
from xds_control.runtime.app import ControlPlane

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

BAD = "^/(?=v1).*"  # RE2 has no look-ahead: Envoy rejects the route configuration


def config(listener: int, regex: str | None = None) -> dict[str, Any]:
    svc: dict[str, Any] = {"name": "llm", "pools": [{
        "name": "gpu",
        "autoscale": {
            "policy": "threshold", "initial_replicas": 1,
            "overrides": {"min_replicas": 1, "max_replicas": 4,
                          "traffic": {"warmup_s": 0, "ramp_window_s": 0, "drain_timeout_s": 5}},
            "replica": {"profile": "tiny", "load_delay_s": 0},
        },
    }]}
    if regex is not None:
        svc["regex"] = regex
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener}],
        "services": [svc],
        "controller": {"tick_s": 0.2},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
    }


def eds_count(envoy: Envoy, cluster: str) -> int:
    n = 0
    for c in envoy.config_dump(include_eds=True)["configs"]:
        for d in c.get("dynamic_endpoint_configs", []):
            cla = d["endpoint_config"]
            if cla.get("cluster_name") == cluster:
                n += sum(len(loc.get("lb_endpoints", [])) for loc in cla.get("endpoints", []))
    return n


def route_text(envoy: Envoy) -> str:
    return json.dumps([c for c in envoy.config_dump()["configs"] if c["@type"].endswith("RoutesConfigDump")])


async def until(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_rejected_route_on_an_autoscaled_service_is_rolled_back_once(tmp_path: Path, delta: bool) -> None:
    listener = free_port()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(json.dumps(config(listener)))
    cp = ControlPlane(load_config(cfg_path), config_path=cfg_path, xds_port=0, metrics_port=None,
                      watch_interval_s=0.1)
    await cp.start()
    envoy = Envoy("autoscaled-rollback", cp.ports.xds, delta=delta).start()
    try:
        await until(lambda: eds_count(envoy, "gpu") == 1, 30, "the first replica in Envoy")
        await until(lambda: envoy.listener_port("ingress") == listener, 15, "the listener")

        # The bad route arrives with a config reload; the controller's next plan carries it.
        cfg_path.write_text(json.dumps(config(listener, regex=BAD)))
        await until(lambda: len(cp.publisher.rejections) >= 1, 15, "the NACK")
        await until(lambda: cp.publisher.metrics.rollbacks._value.get() >= 1, 5, "the rollback")

        # The fleet scales underneath (an operator raises the floor): 1 -> 3 -> 4 replicas, each a new plan.
        RuntimeAdminPort(cp).set_policy("gpu", resolve_policy("threshold", {
            "min_replicas": 3, "max_replicas": 4, "traffic": {"warmup_s": 0, "ramp_window_s": 0}}))
        v_before_scale = cp.cache.snapshot.version
        await until(lambda: eds_count(envoy, "gpu") == 3, 60, "three replicas in Envoy")
        RuntimeAdminPort(cp).set_policy("gpu", resolve_policy("threshold", {
            "min_replicas": 4, "max_replicas": 4, "traffic": {"warmup_s": 0, "ramp_window_s": 0}}))
        await until(lambda: eds_count(envoy, "gpu") == 4, 60, "four replicas in Envoy")
        res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=10)
        assert res.ok, res
        await asyncio.sleep(1.0)  # a few more ticks: nothing else is rejected

        nacks = len(cp.publisher.rejections)
        rollbacks = int(cp.publisher.metrics.rollbacks._value.get())
        stats = envoy.stats()
        rejected = int(stats["http.ingress.rds.ingress.update_rejected"])
        published_after = cp.cache.snapshot.version - v_before_scale
        print(f"\n[autoscaled-rollback {'delta' if delta else 'sotw'}] nacks={nacks} rollbacks={rollbacks} "
              f"envoy_rds_rejected={rejected} snapshots_while_scaling={published_after}")
        assert (nacks, rollbacks, rejected) == (1, 1, 1), (list(cp.publisher.rejections), rollbacks, rejected)
        assert published_after >= 2, "the scale-up went through in new snapshots"
        rej = cp.publisher.rejections[0]
        assert (rej.type, rej.resources, rej.services) == ("RDS", ("ingress",), ("llm",))
        # Envoy holds the last good route (no regex) and the served route never had it after the rollback.
        assert "(?=" not in route_text(envoy)
        assert cp.cache.snapshot.plan.services[0].regex is None
        assert cp.config.services[0].regex == BAD, "the bad route is still in the config"
        # Fixing the config publishes the fixed route as usual.
        cfg_path.write_text(json.dumps(config(listener, regex="^/v1/.*")))
        await until(lambda: "^/v1/.*" in route_text(envoy), 15, "the fixed route in Envoy")
        assert len(cp.publisher.rejections) == 1
    finally:
        envoy.stop()
        await cp.stop(grace=0)
