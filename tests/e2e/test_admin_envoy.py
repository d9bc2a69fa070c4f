"""Operator actions through the CLI reach a real Envoy 1.40: a pinned weight and a drain show in Envoy's
config dump (with EDS) and in where requests go; every CLI command works against the running server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from support.admin import ROOT, TOKENS, Served, cli, token_config
from support.envoy import Envoy
from support.ports import free_port
from support.traffic import send
from support.upstream import Upstream

pytestmark = pytest.mark.envoy


def eds_hosts(envoy: Envoy, cluster: str) -> dict[str, dict]:
    """address:port -> {weight, health} of ``cluster`` in Envoy's config dump with EDS."""
    out = {}
    for c in envoy.config_dump(include_eds=True)["configs"]:
        if not c["@type"].endswith("EndpointsConfigDump"):
            continue
        for d in c.get("dynamic_endpoint_configs", []):
            cla = d["endpoint_config"]
            if cla.get("cluster_name") != cluster:
                continue
            for loc in cla.get("endpoints", []):
                for lb in loc.get("lb_endpoints", []):
                    sa = lb["endpoint"]["address"]["socket_address"]
                    out[f"{sa['address']}:{sa['port_value']}"] = {
                        "weight": lb.get("load_balancing_weight", 1), "health": lb.get("health_status", "UNKNOWN")}
    return out


def test_cli_override_and_drain_reach_envoy() -> None:
    ups = [Upstream(f"u{i}", 0).start() for i in (1, 2, 3)]
    listener = free_port()
    cfg = {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener}],
        "services": [{"name": "llm", "tenant": "team-a", "pools": [
            {"name": "p1", "weight": 1, "endpoints": [{"address": "127.0.0.1", "port": u.port} for u in ups[:2]]},
            {"name": "p2", "weight": 0, "endpoints": [{"address": "127.0.0.1", "port": ups[2].port}]},
        ]}],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
        "admin": {"port": 0, "tokens": token_config()},
    }
    u1, u2 = (f"127.0.0.1:{u.port}" for u in ups[:2])
    sv = Served(cfg)
    envoy = Envoy("admin-e2e", sv.cp.ports.xds)
    try:
        envoy.start()
        envoy.wait_for(lambda: set(eds_hosts(envoy, "p1")) == {u1, u2}, what="EDS for p1")
        envoy.wait_for(lambda: envoy.listener_port("ingress") == listener, what="the listener")
        a = sv.address

        # pin u1's weight from the CLI: Envoy's EDS carries it
        r = cli("weight", "set", "llm", u1, "40", "--reason", "canary", token="a-operator", address=a)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"weight of {u1} (llm/p1) pinned to 40 (event ")
        envoy.wait_for(lambda: eds_hosts(envoy, "p1")[u1]["weight"] == 40, what="weight 40 in Envoy")

        # drain u2 from the CLI: DRAINING in Envoy, and no new request reaches it
        r = cli("drain", "llm", u2, "--json", token="a-operator", address=a)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["event_seq"] > 0
        # Envoy's EDS dump shows the drained host out of rotation; its /clusters view names the EDS drain
        envoy.wait_for(lambda: eds_hosts(envoy, "p1")[u2]["health"] in ("DRAINING", "UNHEALTHY")
                       and f"p1::{u2}::health_flags::/eds_status_draining" in envoy.admin("/clusters"),
                       what="u2 draining in Envoy")
        tally = send(listener, 60)
        assert not tally.failures and tally.by_body["u2"] == 0 and tally.by_body["u1"] == 60, tally

        eps = json.loads(cli("endpoints", "llm", "--json", token="a-viewer", address=a).stdout)
        by = {e["address"]: e for e in eps}
        assert by[u1]["weight_override"] == 40 and by[u1]["weight"] == 40 and by[u2]["operator_drain"]
        assert by[u2]["health"] == "DRAINING" and by[u2]["weight"] == 0  # as published

        # undrain and clear: back to the config's weights
        assert cli("drain", "llm", u2, "--cancel", token="a-operator", address=a).returncode == 0
        assert cli("weight", "clear", "llm", u1, token="a-operator", address=a).returncode == 0
        envoy.wait_for(lambda: eds_hosts(envoy, "p1") == {u1: {"weight": 1, "health": "HEALTHY"},
                                                          u2: {"weight": 1, "health": "HEALTHY"}},
                       what="weights back to 1")

        # status shows this Envoy synced; every other read command works, tables and JSON
        st = json.loads(cli("status", "--json", address=a).stdout)
        proxy = next(p for p in st["proxies"] if p["node_id"] == "admin-e2e")
        assert {t["type"]: t["state"] for t in proxy["types"]} == {"CDS": "SYNCED", "EDS": "SYNCED",
                                                                   "LDS": "SYNCED", "RDS": "SYNCED"}
        dump = json.loads(cli("config-dump", "EDS", "--json", address=a).stdout)
        cla = next(x for x in dump["types"]["EDS"] if x["name"] == "p1")["resource"]
        assert cla["@type"].endswith("ClusterLoadAssignment") and cla["cluster_name"] == "p1"
        for args, needle in ((["status"], "admin-e2e"), (["services"], "team-a"), (["endpoints"], u1),
                             (["plan", "llm"], "p1"), (["config-dump"], "ingress"), (["decisions"], "decisions"),
                             (["events", "--kind", "action"], "pinned to 40")):
            r = cli(*args, address=a)
            assert r.returncode == 0 and needle in r.stdout, (args, r.stdout, r.stderr)

        # failures: non-zero exit with the gRPC status and message
        r = cli("weight", "set", "llm", "127.0.0.1:1", "5", token="a-operator", address=a)
        assert (r.returncode, r.stderr.strip()) == (
            1, "xds-control admin: NOT_FOUND: endpoint '127.0.0.1:1' not found in service 'llm'")
        r = cli("drain", "llm", u1, token="a-viewer", address=a)
        assert r.returncode == 1 and r.stderr.startswith("xds-control admin: PERMISSION_DENIED: ")
        r = cli("pause", "llm", token="a-operator", address=a)
        assert r.returncode == 1 and "FAILED_PRECONDITION: service 'llm' is not autoscaled" in r.stderr
        r = cli("policy", "set", "llm", "threshold", "--set", "max_replicas=4", token="a-operator", address=a)
        assert r.returncode == 1 and "PERMISSION_DENIED" in r.stderr
        r = cli("status", token=None, address=a)
        assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr

        # events --follow streams as actions happen
        follow = subprocess.Popen(
            [sys.executable, "-m", "xds_control.cli", "admin", "--address", a, "--token", TOKENS["root"][0],
             "--json", "events", "--follow", "--kind", "action"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            backlog = [json.loads(follow.stdout.readline()) for _ in range(4)]
            assert [json.loads(json.dumps(e))["detail"]["action"] for e in backlog] == \
                ["weight_set", "drain", "undrain", "weight_clear"]
            t0 = time.monotonic()
            assert cli("weight", "set", "llm", u2, "3", token="a-operator", address=a).returncode == 0
            live = json.loads(follow.stdout.readline())
            assert live["detail"]["action"] == "weight_set" and live["endpoint"] == u2
            # Requirement (README "Admin API": `events --follow` streams): the new event arrives live, not at exit.
            assert live["actor"] == "a-operator (tenant team-a, operator)" and time.monotonic() - t0 < 10
        finally:
            follow.terminate()
            follow.wait(10)
            follow.stdout.close()
            follow.stderr.close()
    finally:
        envoy.stop()
        sv.stop()
        for u in ups:
            u.stop()


def test_envoy_over_mutual_tls_xds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """admin.xds_tls with a client CA: an Envoy bootstrapped with --xds-ca/--xds-cert/--xds-key gets its config;
    one without a client certificate gets nothing."""
    from support.admin import make_certs

    from xds_control.envoy.bootstrap import render_bootstrap

    certs = make_certs(tmp_path)
    tls = {"cert": str(certs["server_cert"]), "key": str(certs["server_key"]), "client_ca": str(certs["ca"])}
    listener = free_port()
    cfg = {"listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener}],
           "services": [{"name": "llm", "pools": [{"name": "p1", "endpoints": [{"address": "127.0.0.1", "port": 1}]}]}],
           "admin": {"port": 0, "xds_tls": tls}}
    # the CLI writes the same bootstrap the test helper uses
    r = subprocess.run([sys.executable, "-m", "xds_control.cli", "bootstrap", "--node-id", "n", "--xds-address",
                        "127.0.0.1:1", "--xds-ca", str(certs["ca"]), "--xds-cert", str(certs["client_cert"]),
                        "--xds-key", str(certs["client_key"]), "--xds-sni", "localhost"],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 0, r.stderr
    import yaml

    client_tls = {"ca": str(certs["ca"]), "cert": str(certs["client_cert"]), "key": str(certs["client_key"]),
                  "sni": "localhost"}
    assert yaml.safe_load(r.stdout) == render_bootstrap("n", "127.0.0.1", 1, tls=client_tls)
    with Served(cfg) as sv:
        good = Envoy("mtls", sv.cp.ports.xds, tls=client_tls)
        anon = Envoy("no-client-cert", sv.cp.ports.xds, tls={"ca": str(certs["ca"])})
        try:
            good.start()
            anon.start()
            good.wait_for(lambda: good.listener_port("ingress") == listener, what="the listener over mTLS xDS")
            nodes = {p["node"] for p in sv.call(_syncz(sv))}
            assert "mtls" in nodes and "no-client-cert" not in nodes
            assert anon.listener_port("ingress") is None
        finally:
            good.stop()
            anon.stop()


async def _syncz(sv):  # type: ignore[no-untyped-def]
    return sv.cp.tracker.syncz()
