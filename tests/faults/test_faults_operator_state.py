"""Operator state survives a SIGKILL of the control plane.

A static pool of three real upstreams behind a real Envoy; an operator pins one endpoint's weight and drains
another through the admin API; ``serve`` is SIGKILLed under load and started again on the same xDS port.
Checked: the state file beside the config holds both; the restarted server's first (and only) snapshot already
carries the pin and the drain (the EDS it serves first); the admin API shows both; not one request reaches the
drained upstream from the drain to the end, and none fails.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from harness import Serve, eds_hosts, envoy_running, host_flags, pick, record, until
from support.admin import pb, pb_grpc
from support.ports import free_port
from support.traffic import Load
from support.upstream import Upstream

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(180)]


def served_eds(stub: pb_grpc.AdminStub, cluster: str) -> tuple[int, dict[str, tuple[int, str]]]:
    """(snapshot version, address -> (weight, health)) of ``cluster`` in the EDS the server serves."""
    dump = stub.GetConfigDump(pb.GetConfigDumpRequest(type="eds"), timeout=5)
    out = {}
    for tr in dump.types:
        for r in tr.resources:
            if r.name != cluster:
                continue
            cla = endpoint_pb2.ClusterLoadAssignment.FromString(r.resource.value)
            for loc in cla.endpoints:
                for lb in loc.lb_endpoints:
                    sa = lb.endpoint.address.socket_address
                    out[f"{sa.address}:{sa.port_value}"] = (lb.load_balancing_weight.value or 1,
                                                            health_check_pb2.HealthStatus.Name(lb.health_status))
    return dump.version, out


async def test_pin_and_drain_survive_a_sigkill(tmp_path: Path) -> None:
    ups = [Upstream(f"u{i}", 0).start() for i in (1, 2, 3)]
    keys = [f"127.0.0.1:{u.port}" for u in ups]
    pinned, drained = keys[0], keys[1]
    listener, xds_port = free_port(), free_port()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "listeners": [{"name": "ingress", "port": listener}],
        "services": [{"name": "llm", "retry": {}, "pools": [{
            "name": "llm", "endpoints": [{"address": "127.0.0.1", "port": u.port} for u in ups]}]}],
        "xds": {"debounce_ms": 50, "max_delay_ms": 200},
    }))
    state_path = tmp_path / "config.yaml.operator-state.json"
    log = tmp_path / "serve.log"
    serve = Serve(cfg_path, xds_port, log)
    channels: list[grpc.Channel] = []

    def admin(s: Serve) -> pb_grpc.AdminStub:
        ch = grpc.insecure_channel(f"127.0.0.1:{s.ports['admin_port']}")
        channels.append(ch)
        return pb_grpc.AdminStub(ch)

    try:
        with envoy_running("opstate", xds_port) as envoy:
            await until(lambda: set(eds_hosts(envoy, "llm")) == set(keys), 15, "the three hosts in Envoy")
            await until(lambda: envoy.listener_port("ingress") == listener, 15, "the listener")
            stub = admin(serve)
            stub.SetWeightOverride(pb.SetWeightOverrideRequest(service="llm", endpoint=pinned, weight=7), timeout=5)
            stub.DrainEndpoint(pb.EndpointRef(service="llm", endpoint=drained, reason="maintenance"), timeout=5)
            await until(lambda: eds_hosts(envoy, "llm").get(pinned) == 7
                        and "eds_status_draining" in host_flags(envoy, "llm").get(drained, ""), 10,
                        "the pin and the drain in Envoy")
            saved = json.loads(state_path.read_text())
            assert saved["weights"] == [{"pool": "llm", "endpoint": pinned, "weight": 7}], saved
            assert saved["drains"] == [{"pool": "llm", "endpoint": drained}], saved

            ups[1].hits = 0
            with Load(listener) as load:
                await asyncio.sleep(pick(0.5, 3.0))
                serve.kill()
                killed_at = time.monotonic()
                await asyncio.sleep(pick(0.3, 2.0))  # Envoy serves on from its last config meanwhile
                serve = Serve(cfg_path, xds_port, log)
                stub = admin(serve)
                restarted_at = time.monotonic()
                # The first snapshot of the restarted server already has both (no later publish added them).
                version, eds = served_eds(stub, "llm")
                assert version == 1, f"the restored state is in the first snapshot, got v{version}"
                assert eds[pinned] == (7, "HEALTHY") and eds[drained][1] == "DRAINING", eds
                synced_at = await until(
                    lambda: any(p["node"] == "opstate" and p["types"]
                                and all(t["state"] == "SYNCED" for t in p["types"].values())
                                for p in serve.syncz()), 15, "Envoy SYNCED on the restarted server")
                await asyncio.sleep(pick(1.0, 5.0))
            tally = load.tally
            eps = {e.address: e for e in stub.ListEndpoints(pb.ListEndpointsRequest(service="llm"),
                                                            timeout=5).endpoints}
            assert eps[pinned].weight_override == 7 and eps[pinned].weight == 7, eps[pinned]
            assert eps[drained].operator_drain and eps[drained].health == "DRAINING", eps[drained]
            assert eds_hosts(envoy, "llm").get(pinned) == 7
            assert "eds_status_draining" in host_flags(envoy, "llm").get(drained, "")
            row = record("cp_sigkill_operator_state", requests=tally.total, failed=len(tally.failures),
                         to_drained=ups[1].hits, restart_s=restarted_at - killed_at,
                         synced_after_restart_s=synced_at - restarted_at)
            assert tally.total > 50 and not tally.failures, (row, tally.failures[:5])
            assert ups[1].hits == 0, f"{ups[1].hits} requests reached the drained endpoint"
            assert tally.by_body["u1"] > 0 and tally.by_body["u3"] > 0, tally.by_body
    finally:
        for ch in channels:
            ch.close()
        serve.stop()
        for u in ups:
            u.stop()


def test_a_corrupt_state_file_is_ignored_with_the_reason(tmp_path: Path) -> None:
    """A torn or foreign state file never stops the control plane: it starts from the config and says why."""
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "listeners": [{"name": "ingress", "port": free_port()}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "endpoints": [{"address": "127.0.0.1",
                                                                              "port": 18101}]}]}],
    }))
    (tmp_path / "config.yaml.operator-state.json").write_text('{"format": 1, "drains": [')
    log = tmp_path / "serve.log"
    serve = Serve(cfg_path, free_port(), log)
    try:
        assert serve.snapshot()["version"] == 1
    finally:
        serve.stop()
    text = log.read_text()
    assert "operator state" in text and "ignored" in text and "not JSON" in text, text
