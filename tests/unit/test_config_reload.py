"""Config reloads: what applies live, what needs a restart (rejected, key named), and the libyaml loader.

The control planes here are the real ``ControlPlane``; the ones that run bind free loopback ports.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cp import config_dict
from xds_control.config import load as config_load
from xds_control.config import parse_config, parse_text
from xds_control.core.errors import ConfigError
from xds_control.runtime.app import RESTART_ONLY_KEYS, ControlPlane
from xds_control.snapshot import types as T

APP_LOG = "xds_control.runtime.app"


def reloads(cp: ControlPlane, result: str) -> float:
    return cp.metrics.registry.get_sample_value("xds_control_config_reloads_total", {"result": result}) or 0.0


def tls_files(tmp_path: Path) -> dict[str, str]:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not read before the server starts\n")
    return {"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")}


def _set(cfg: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


# (changes to make, keys the log must name) -- every key a running control plane reads only at start.
RESTART_CASES = [
    ({"xds.debounce_ms": 50, "xds.max_delay_ms": 500}, ["xds.debounce_ms (0.0 -> 50.0)", "xds.max_delay_ms"]),
    ({"xds.max_concurrent_pushes": 7}, ["xds.max_concurrent_pushes (100 -> 7)"]),
    ({"xds.ack_timeout_s": 9}, ["xds.ack_timeout_s (2.0 -> 9.0)"]),
    ({"xds.removal_timeout_s": 3}, ["xds.removal_timeout_s"]),
    ({"xds.rollback_on_nack": False}, ["xds.rollback_on_nack (True -> False)"]),
    ({"controller.signals.timeout_s": 3}, ["controller.signals.timeout_s"]),
    ({"controller.signals.source": "prometheus", "controller.signals.prometheus_url": "http://127.0.0.1:9090"},
     ["controller.signals.source ('scrape' -> 'prometheus')", "controller.signals.prometheus_url"]),
    ({"controller.signals.queries": {"running": "sum(x)"}}, ["controller.signals.queries.running (added)"]),
    ({"admin.port": 18555}, ["admin.port (18001 -> 18555)"]),
    ({"admin.address": "127.0.0.2"}, ["admin.address"]),
    ({"admin.enabled": False}, ["admin.enabled"]),
    ({"admin.tls": "TLS"}, ["admin.tls"]),
    ({"admin.xds_tls": "TLS"}, ["admin.xds_tls"]),
]


@pytest.mark.parametrize(("changes", "named"), RESTART_CASES, ids=[",".join(c) for c, _ in RESTART_CASES])
def test_a_change_read_only_at_start_is_rejected_and_named(
    changes: dict[str, Any], named: list[str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    base = config_dict()
    cp = ControlPlane(parse_config(base), metrics_port=None)
    old = cp.config
    new = copy.deepcopy(base)
    new["services"][0]["pools"][0]["weight"] = 7  # a live change riding along is not applied either
    for path, value in changes.items():
        _set(new, path, tls_files(tmp_path) if value == "TLS" else value)
    with caplog.at_level(logging.ERROR, logger=APP_LOG):
        assert cp.reload_text(yaml.safe_dump(new), "cfg.yaml") is False
    assert cp.config is old
    assert cp.publisher._pending is None  # nothing was queued for a push
    assert reloads(cp, "needs_restart") == 1 and reloads(cp, "ok") == 0
    msg = "\n".join(r.getMessage() for r in caplog.records if r.name == APP_LOG)
    assert "read only at start" in msg and "last good config stays" in msg
    for key in named:
        assert key in msg, (key, msg)


def test_every_restart_only_section_is_covered_by_a_case() -> None:
    covered = {path for changes, _ in RESTART_CASES for path in changes}
    for key in RESTART_ONLY_KEYS:
        if key == "kubernetes":
            continue  # tests/k8s/test_real_controlplane.py (it needs autoscaled Kubernetes pools)
        assert any(p == key or p.startswith(key + ".") for p in covered), key


async def test_a_weight_change_applies_live_and_reaches_the_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    base = config_dict(weights={"p1": 3, "p2": 1})
    cp = ControlPlane(parse_config(base), metrics_port=None)
    await cp.start()
    try:
        v0 = cp.cache.snapshot.version  # type: ignore[union-attr]
        new = copy.deepcopy(base)
        new["services"][0]["pools"][1]["weight"] = 9
        new["admin"] = {"tokens": []}  # the token list is read per request: live
        with caplog.at_level(logging.ERROR, logger=APP_LOG):
            assert await cp.reload_text_async(yaml.safe_dump(new), "cfg.yaml") is True
        assert not [r for r in caplog.records if r.name == APP_LOG and r.levelno >= logging.WARNING]
        assert cp.config.services[0].pools[1].weight == 9 and reloads(cp, "ok") == 1
        for _ in range(100):
            snap = cp.cache.snapshot
            if snap is not None and snap.version > v0:
                break
            await asyncio.sleep(0.02)
        assert snap is not None and snap.plan is not None and snap.version > v0
        assert snap.plan.services[0].pools == (("p1", 3), ("p2", 9))
        # The synchronous variant applies the same way.
        new["services"][0]["pools"][0]["weight"] = 4
        assert cp.reload_text(yaml.safe_dump(new)) is True
        assert cp.config.services[0].pools[0].weight == 4 and reloads(cp, "ok") == 2
    finally:
        await cp.stop(grace=0)


def replace_file(path: Path, text: str) -> None:
    """Write ``path`` whole at once (a new file renamed over it, as a ConfigMap update or an editor's save does):
    the watcher polls every 20 ms and could otherwise read a half-written file, which is still valid YAML when the
    cut falls between two top-level keys (then ``xds`` is missing and reads as a restart-only change)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_the_file_watcher_applies_a_change_and_rejects_a_restart_only_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = config_dict()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(base))
    cp = ControlPlane(parse_config(base), config_path=path, metrics_port=None, watch_interval_s=0.02)
    await cp.start()
    try:
        live = copy.deepcopy(base)
        live["services"][0]["pools"][0]["endpoints"][0]["weight"] = 5
        replace_file(path, yaml.safe_dump(live))
        await _until(lambda: reloads(cp, "ok") == 1)
        assert cp.config.services[0].pools[0].endpoints[0].weight == 5
        await _until(lambda: cp.cache.snapshot is not None and cp.cache.snapshot.plan is not None
                     and cp.cache.snapshot.plan.pool("p1").endpoints[0].weight == 5)  # type: ignore[union-attr]
        eds = cp.cache.snapshot.of(T.ENDPOINT)  # type: ignore[union-attr]
        assert "p1" in eds
        restart = copy.deepcopy(live)
        restart["xds"]["max_concurrent_pushes"] = 3
        with caplog.at_level(logging.ERROR, logger=APP_LOG):
            replace_file(path, yaml.safe_dump(restart))
            await _until(lambda: reloads(cp, "needs_restart") == 1)
        assert "xds.max_concurrent_pushes (100 -> 3)" in caplog.text
        assert cp.config.xds.max_concurrent_pushes == 100
        replace_file(path, "listeners: [\n")
        with caplog.at_level(logging.ERROR, logger=APP_LOG):
            await _until(lambda: reloads(cp, "invalid") == 1)
        assert "line 2, column 1" in caplog.text and cp.config.services[0].pools[0].endpoints[0].weight == 5
        assert cp.failure is None
    finally:
        await cp.stop(grace=0)


async def test_a_running_controller_rejects_signals_but_takes_tick_and_policy_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 0}],
        "services": [{"name": "llm", "pools": [{"name": "gpu", "autoscale": {
            "policy": "threshold", "initial_replicas": 0,
            "overrides": {"min_replicas": 0, "max_replicas": 2},
            "replica": {"profile": "tiny", "load_delay_s": 0}}}]}],
        "controller": {"tick_s": 0.2},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }
    cp = ControlPlane(parse_config(base), metrics_port=None)
    await cp.start()
    try:
        assert cp.controller is not None
        new = copy.deepcopy(base)
        new["controller"]["signals"] = {"timeout_s": 4}
        new["controller"]["tick_s"] = 0.3  # live on its own, but the whole change is rejected
        with caplog.at_level(logging.ERROR, logger=APP_LOG):
            assert cp.reload_text(yaml.safe_dump(new)) is False
        assert "controller.signals.timeout_s (1.0 -> 4.0)" in caplog.text and "tick_s" not in caplog.text
        assert cp.config.controller.tick_s == 0.2 and reloads(cp, "needs_restart") == 1
        new = copy.deepcopy(base)
        new["services"][0]["pools"][0]["autoscale"]["overrides"]["max_replicas"] = 5
        new["controller"]["tick_s"] = 0.3  # Controller.run re-reads it every tick
        assert await cp.reload_text_async(yaml.safe_dump(new)) is True
        assert cp.controller.config.controller.tick_s == 0.3
        assert cp.controller.runtimes["gpu"].spec.max_replicas == 5
        static = copy.deepcopy(base)
        static["services"][0]["pools"][0] = {"name": "gpu", "endpoints": [{"address": "127.0.0.1", "port": 18101}]}
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger=APP_LOG):
            assert cp.reload_text(yaml.safe_dump(static)) is False
        assert "removes autoscaling" in caplog.text and reloads(cp, "needs_restart") == 2
    finally:
        await cp.stop(grace=0)


def test_controller_ack_timeout_is_no_longer_a_key() -> None:
    cfg = config_dict()
    cfg["controller"] = {"ack_timeout_s": 10}
    with pytest.raises(ConfigError) as e:
        parse_config(cfg, "old.yaml")
    assert "controller.ack_timeout_s: unknown key" in str(e.value)


def test_yaml_is_read_with_libyaml_and_errors_keep_line_column_and_snippet() -> None:
    assert config_load._LOADER is yaml.CSafeLoader
    with pytest.raises(ConfigError) as e:
        parse_text("listeners:\n  - name: a\n    port: [1, 2\n  - name: b\n", "cfg.yaml")
    msg = str(e.value)
    assert msg.startswith("cfg.yaml: not valid YAML: while parsing a flow sequence")
    assert 'in "cfg.yaml", line 3, column 11:\n        port: [1, 2\n              ^' in msg
    assert 'in "cfg.yaml", line 4, column 9:\n      - name: b\n            ^' in msg
    with pytest.raises(ConfigError) as e:
        parse_text("é: 1\nb: ééé: 2\n", "u.yaml")
    assert 'line 2, column 7:\n    b: ééé: 2\n          ^' in str(e.value)
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        parse_text("a: !!python/object/apply:os.system [echo]\n", "evil.yaml")


def test_libyaml_and_the_pure_python_loader_agree_on_a_config() -> None:
    text = yaml.safe_dump(config_dict(weights={"p1": 2}, timeout_s=1.5, regex="^/v[0-9]+/.*"))
    assert yaml.load(text, Loader=yaml.CSafeLoader) == yaml.load(text, Loader=yaml.SafeLoader)
    assert parse_text(text) == parse_config(yaml.load(text, Loader=yaml.SafeLoader))


async def _until(pred: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_the_collector_pause_around_a_parse_is_undone_also_when_it_fails() -> None:
    import gc

    cp = ControlPlane(parse_config(config_dict()), metrics_port=None)
    assert gc.isenabled()
    assert cp.reload_text("listeners: [\n") is False
    assert gc.isenabled()
    assert cp.reload_text(yaml.safe_dump(config_dict(weights={"p1": 2}))) is True
    assert gc.isenabled()
    gc.disable()
    try:
        assert cp.reload_text(yaml.safe_dump(config_dict(weights={"p1": 3}))) is True
        assert not gc.isenabled()  # a collector someone else turned off stays off
    finally:
        gc.enable()
