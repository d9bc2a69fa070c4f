"""Operator state (pins, drains, pauses, policies) is written on every change and restored on the next start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.ports import free_port

from xds_control.config import parse_config
from xds_control.config.policy import resolve_policy
from xds_control.control.operator import OperatorState, dump_state, load_state
from xds_control.runtime.admin_port import RuntimeAdminPort
from xds_control.runtime.app import ControlPlane


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


async def test_pause_and_policy_survive_a_restart(tmp_path: Path) -> None:
    cfg = _autoscaled()
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(json.dumps(cfg))
    spec = resolve_policy("threshold", {"min_replicas": 1, "max_replicas": 2})

    cp = ControlPlane(parse_config(cfg), config_path=cfg_path, xds_port=0, metrics_port=None)
    await cp.start()
    try:
        port = RuntimeAdminPort(cp)
        port.pause("gpu")
        port.set_policy("gpu", spec)
    finally:
        await cp.stop(grace=0)
    saved = json.loads((tmp_path / "c.yaml.operator-state.json").read_text())
    assert saved["paused"] == ["gpu"] and saved["specs"]["gpu"]["max_replicas"] == 2, saved

    cp = ControlPlane(parse_config(cfg), config_path=cfg_path, xds_port=0, metrics_port=None)
    await cp.start()
    try:
        view = RuntimeAdminPort(cp).pool_view("gpu")
        assert view is not None and view.paused and view.spec == spec
        obs, _ = await cp.controller.observe(cp.controller.clock())
        assert obs.paused == frozenset({"gpu"}), "the step sees the restored pause"
        RuntimeAdminPort(cp).resume("gpu")
        assert json.loads((tmp_path / "c.yaml.operator-state.json").read_text())["paused"] == []
    finally:
        await cp.stop(grace=0)


def test_load_state_drops_unknown_pools_and_invalid_entries() -> None:
    st = OperatorState()
    st.pin("web", "127.0.0.1:1", 5)
    st.pin("gone", "127.0.0.1:2", 5)
    st.drain("web", "127.0.0.1:3")
    st.set_paused("gpu", True)
    st.set_paused("web", True)  # a static pool: not pausable, dropped on load
    st.set_spec("gpu", resolve_policy("threshold", {"max_replicas": 4}))
    data = dump_state(st)
    data["specs"]["old"] = {"policy": "threshold"}
    data["specs"]["gpu2"] = {"policy": "threshold", "max_replicas": -1}
    got, dropped = load_state(data, {"web": False, "gpu": True, "gpu2": True})
    assert got.weights == {("web", "127.0.0.1:1"): 5} and got.drains == {("web", "127.0.0.1:3")}
    assert got.paused == {"gpu"} and set(got.specs) == {"gpu"} and got.specs["gpu"].max_replicas == 4
    assert any("'gone'" in d for d in dropped) and any("'old'" in d for d in dropped)
    assert any(d.startswith("specs.gpu2:") and "max_replicas" in d for d in dropped), dropped
    assert any("paused: pool 'web'" in d for d in dropped)
    with pytest.raises(ValueError, match="format"):
        load_state({"weights": []}, {})
    with pytest.raises(ValueError, match="drains: expected a list"):
        load_state({"format": 1, "drains": {}}, {})


def test_every_change_is_reported_once() -> None:
    calls: list[int] = []
    st = OperatorState(on_change=lambda: calls.append(1))
    st.pin("p", "k:1", 3)
    st.pin("p", "k:1", 3)  # no change
    st.drain("p", "k:2")
    st.prune([("p", "k:1"), ("p", "k:2")])  # nothing gone
    st.prune([("p", "k:1")])  # the drained endpoint is gone
    assert len(calls) == 3 and st.drains == set()
