"""TLS and mutual TLS on the admin and xDS ports, serve's refusal to expose an open admin port, tokens
never in logs, and the admin stubs generated from admin.proto on a clean tree."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.admin import ROOT, TOKENS, Served, cli, make_certs, md, pb, pb_grpc, token_config
from support.cp import config_dict

from xds_control.snapshot import types as T


@pytest.fixture(scope="module")
def certs(tmp_path_factory):  # type: ignore[no-untyped-def]
    return make_certs(tmp_path_factory.mktemp("certs"))


def _creds(certs, client: bool) -> grpc.ChannelCredentials:  # type: ignore[no-untyped-def]
    return grpc.ssl_channel_credentials(
        root_certificates=certs["ca"].read_bytes(),
        private_key=certs["client_key"].read_bytes() if client else None,
        certificate_chain=certs["client_cert"].read_bytes() if client else None,
    )


def test_mtls_on_admin_and_xds_ports(certs) -> None:  # type: ignore[no-untyped-def]
    tls = {"cert": str(certs["server_cert"]), "key": str(certs["server_key"]), "client_ca": str(certs["ca"])}
    cfg = config_dict()
    cfg["admin"] = {"port": 0, "tokens": token_config(), "tls": tls, "xds_tls": tls}
    with Served(cfg) as sv:
        admin = sv.address
        # mutual TLS + token: OK
        with grpc.secure_channel(admin, _creds(certs, client=True)) as ch:
            st = pb_grpc.AdminStub(ch).GetStatus(pb.GetStatusRequest(), metadata=md("root"), timeout=5)
            assert st.version >= 1
        # no client certificate, or no TLS at all: the handshake fails
        for ch in (grpc.secure_channel(admin, _creds(certs, client=False)), grpc.insecure_channel(admin)):
            with ch, pytest.raises(grpc.RpcError) as ei:
                pb_grpc.AdminStub(ch).GetStatus(pb.GetStatusRequest(), metadata=md("root"), timeout=3)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
        # the CLI speaks mTLS too
        ok = cli("--ca", str(certs["ca"]), "--cert", str(certs["client_cert"]), "--key", str(certs["client_key"]),
                 "status", "--json", address=admin)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["caller"] == "root (tenant *, admin)"
        bad = cli("--ca", str(certs["ca"]), "--timeout", "3", "status", address=admin)
        assert bad.returncode == 1 and bad.stderr.startswith("xds-control admin: UNAVAILABLE: ")

        # xDS over mutual TLS: an ADS stream gets the clusters; a plain-text client gets nothing
        xds = f"127.0.0.1:{sv.cp.ports.xds}"
        req = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="tls-proxy", cluster="t"), type_url=T.CLUSTER)
        with grpc.secure_channel(xds, _creds(certs, client=True)) as ch:
            stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources(iter([req]), timeout=5)
            resp = next(stream)
            assert resp.type_url == T.CLUSTER and len(resp.resources) == 2
            stream.cancel()
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(xds) as ch, pytest.raises(grpc.RpcError) as ei:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


def _serve(cfg_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "xds_control.cli", "serve", "--config", str(cfg_path), "--xds-port", "0",
         "--metrics-port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_serve_refuses_an_open_admin_port_beyond_loopback(tmp_path: Path) -> None:
    cfg = config_dict()
    cfg["admin"] = {"address": "0.0.0.0", "port": 0}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    proc = _serve(p)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and out == ""
    assert "admin.address: '0.0.0.0' is beyond loopback and no admin token is configured" in err


def test_tokens_never_reach_the_log(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump(token_config()))
    cfg = config_dict()
    cfg["admin"] = {"port": 0, "tokens_file": str(tokens)}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    proc = _serve(p, "--log-level", "debug")
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, proc.stderr.read() if proc.stderr else ""
        address = f"127.0.0.1:{json.loads(line)['admin_port']}"
        assert cli("status", token="a-viewer", address=address).returncode == 0
        r = cli("weight", "set", "llm", "127.0.0.1:18101", "5", "--reason", "test", token="root", address=address)
        assert r.returncode == 0, r.stderr
        wrong = cli("status", token="wrong-token-0123456789abc", address=address)
        assert wrong.returncode == 1 and "UNAUTHENTICATED: invalid token" in wrong.stderr
        assert cli("status", token=None, address=address).returncode == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert "pinned to 5 by root (tenant *, admin) (test)" in err  # the action is logged with who did it
    for secret, *_ in TOKENS.values():
        assert secret not in err
    assert "wrong-token" not in err


def test_admin_stubs_generated_on_a_clean_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "xds_control", tree / "xds_control",
                    ignore=shutil.ignore_patterns("__pycache__", "*_pb2*.py", "admin.proto.sha256"))
    gen = tree / "xds_control" / "admin" / "gen"
    assert sorted(x.name for x in gen.iterdir()) == ["__init__.py"]
    code = ("import xds_control, xds_control.admin.proto as p; pb, g = p.load(); "
            "print(xds_control.__file__); print(pb.Status.DESCRIPTOR.full_name, g.AdminStub.__name__)")
    env = {**os.environ, "PYTHONPATH": str(tree), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == [
        str(tree / "xds_control" / "__init__.py"), "xds_control.admin.v1.Status AdminStub"
    ]
    assert {"admin_pb2.py", "admin_pb2_grpc.py"} <= {x.name for x in gen.iterdir()}
    # a package directory we cannot write (an installed wheel): generated into the user's cache instead.
    # (Tests may run as root, for whom a read-only mode bit means nothing: a directory where the module
    # file should go makes the write fail just the same.)
    for f in gen.iterdir():
        if f.name != "__init__.py":
            f.unlink()
    (gen / "admin_pb2.py").mkdir()
    r = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[1] == "xds_control.admin.v1.Status AdminStub"
    assert any((tmp_path / "cache" / "xds-control").glob("admin-gen-*/admin_pb2.py"))


def test_serve_reports_a_busy_admin_port(tmp_path: Path) -> None:
    import socket

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(config_dict()))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _serve(p, "--admin-port", str(port))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and out == ""
    assert f"xds-control: cannot start: admin API: cannot bind 127.0.0.1:{port}" in err
    assert "Traceback" not in err
