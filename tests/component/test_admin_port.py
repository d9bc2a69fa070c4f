"""The runtime's side of the admin port (``RuntimeAdminPort``) on a real control plane.

It has every member of ``ControlPlanePort`` with the same parameters; what it hands out are frozen views
taken when asked (a later command does not change a view already held); commands reach the published plan
(static pools) or the live controller (autoscaled pools); event subscriptions replay the buffered
controller events, then deliver new ones, pushes included, until unsubscribed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from typing import Any

import pytest

from support.cp import config_dict, running
from support.ports import free_port

from xds_control.admin.port import ControlPlanePort
from xds_control.config.policy import resolve_policy
from xds_control.core.traffic import HealthStatus
from xds_control.runtime.admin_port import RuntimeAdminPort


def test_the_runtime_port_has_every_member_of_the_protocol() -> None:
    members = [n for n in vars(ControlPlanePort) if not n.startswith("_")]
    assert {"config", "snapshot", "pool_view", "subscribe_events", "set_policy", "publish_static"} <= set(members)
    for name in members:
        want, got = getattr(ControlPlanePort, name), getattr(RuntimeAdminPort, name, None)
        assert got is not None, f"RuntimeAdminPort lacks {name}"
        if isinstance(want, property):
            assert isinstance(got, property), name
        else:
            assert list(inspect.signature(got).parameters) == list(inspect.signature(want).parameters), name


async def _until(pred: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _endpoint(cp: Any, pool: str, key: str) -> Any:
    snap = cp.cache.snapshot
    return next(e for e in snap.plan.pool(pool).endpoints if e.key == key)


async def test_static_pools_views_are_frozen_and_commands_publish() -> None:
    async with running(config_dict(listener_port=free_port())) as cp:
        port = RuntimeAdminPort(cp)
        assert port.config is cp.config and port.is_leader() and port.instance()
        assert port.pool_view("p1") is None and port.decisions() == ()
        st = port.xds_status()
        assert st.version == port.snapshot().version == 1 and st.proxies == () and st.rejections == ()
        with pytest.raises(dataclasses.FrozenInstanceError):
            st.version = 9  # type: ignore[misc]

        got: list[dict[str, Any]] = []
        unsubscribe = port.subscribe_events(got.append)
        before = port.overrides()
        key = "127.0.0.1:18101"
        port.set_weight_override("p1", key, 7)
        port.publish_static("pin p1 weight")
        await _until(lambda: _endpoint(cp, "p1", key).weight == 7, "the pinned weight published")
        assert before.weights == {} and port.overrides().weights == {("p1", key): 7}
        with pytest.raises(TypeError):
            port.overrides().weights[("p1", key)] = 1  # type: ignore[index]
        await _until(lambda: [e for e in got if e["kind"] == "push"], "a push event")
        push = next(e for e in got if e["kind"] == "push")
        assert push["reason"] == "pin p1 weight" and push["version"] == port.snapshot().version

        port.drain("p1", key)
        port.publish_static("drain")
        await _until(lambda: _endpoint(cp, "p1", key).health is HealthStatus.DRAINING, "the drain published")
        assert port.overrides().drains == frozenset({("p1", key)})
        port.undrain("p1", key)
        port.clear_weight_override("p1", key)
        unsubscribe()
        seen = len(got)
        port.publish_static("cleared")
        await _until(lambda: _endpoint(cp, "p1", key).health is HealthStatus.HEALTHY, "the undrain published")
        assert port.overrides().weights == {} and port.overrides().drains == frozenset()
        assert len(got) == seen, "events arrived after unsubscribing"


def _autoscaled() -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": free_port()}],
        "services": [{"name": "llm", "pools": [{
            "name": "gpu",
            "autoscale": {
                "policy": "threshold", "initial_replicas": 1,
                "overrides": {"min_replicas": 1, "max_replicas": 3,
                              "traffic": {"warmup_s": 0, "ramp_window_s": 0, "drain_timeout_s": 5}},
                "replica": {"profile": "tiny", "load_delay_s": 0},
            },
        }]}],
        "controller": {"tick_s": 0.2},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
    }


async def test_autoscaled_pools_are_commanded_through_the_controller() -> None:
    async with running(_autoscaled()) as cp:
        port = RuntimeAdminPort(cp)
        got: list[dict[str, Any]] = []
        unsubscribe = port.subscribe_events(got.append)
        assert got and got[0]["kind"] == "scale_up", "the buffered start-up event is replayed"

        view = port.pool_view("gpu")
        assert view is not None and (view.service, view.pool, view.paused) == ("llm", "gpu", False)
        with pytest.raises(dataclasses.FrozenInstanceError):
            view.paused = True  # type: ignore[misc]
        port.pause("gpu")
        assert port.pool_view("gpu").paused and not view.paused and cp.controller.runtimes["gpu"].paused
        port.resume("gpu")
        assert not port.pool_view("gpu").paused

        spec = resolve_policy("threshold", {"min_replicas": 1, "max_replicas": 2})
        port.set_policy("gpu", spec)
        assert port.pool_view("gpu").spec == spec and view.spec.max_replicas == 3
        cp.controller.set_config(cp.config)  # a reload keeps the operator's spec
        assert cp.controller.runtimes["gpu"].spec == spec

        tick = (await _until(lambda: (v := port.pool_view("gpu")) is not None and v.last_tick, "a tick")).endpoints
        assert tick[0].key.startswith("127.0.0.1:")
        with pytest.raises(dataclasses.FrozenInstanceError):
            tick[0].weight = 0  # type: ignore[misc]
        with pytest.raises(TypeError):
            port.pool_view("gpu").phases["x"] = "serving"  # type: ignore[index]
        ds = port.decisions()
        assert ds and ds[-1].pool == "gpu" and abs(ds[-1].at - time.time()) < 60

        cp.controller.event("probe", pool="gpu")
        assert got[-1]["kind"] == "probe"
        got[-1]["kind"] = "changed"  # the listener owns its copy
        assert cp.controller.events[-1]["kind"] == "probe"
        unsubscribe()
        cp.controller.event("probe", pool="gpu")
        assert got[-1]["kind"] == "changed"
