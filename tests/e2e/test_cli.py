"""The command-line contract: exit statuses, messages that name the key, and a bootstrap Envoy runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xds_control.envoy.check import envoy_binary

CLI = [sys.executable, "-m", "xds_control.cli"]
MINIMAL = Path(__file__).resolve().parents[2] / "examples" / "minimal.yaml"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_serve_with_invalid_config_exits_2_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.read_text().replace("weight: 80", "weight: -80").replace("port: 18102", "port: 0"))
    p = run("serve", "--config", str(bad), "--xds-port", "0", "--metrics-port", "0")
    assert p.returncode == 2
    assert "services[0].pools[0].weight: -80 is invalid" in p.stderr
    assert "services[0].pools[0].endpoints[1].port: 0 is invalid" in p.stderr
    assert "xds_port" not in p.stdout  # nothing started


def test_serve_with_missing_file_exits_2(tmp_path: Path) -> None:
    p = run("serve", "--config", str(tmp_path / "nope.yaml"))
    assert p.returncode == 2 and "cannot read the config file" in p.stderr


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_bootstrap_is_accepted_by_envoy(tmp_path: Path, delta: bool) -> None:
    args = ["bootstrap", "--node-id", "envoy-1", "--xds-address", "127.0.0.1:18000", "--admin-port", "0"]
    p = run(*args, *(["--delta"] if delta else []))
    assert p.returncode == 0, p.stderr
    assert ("DELTA_GRPC" in p.stdout) is delta
    path = tmp_path / "envoy.yaml"
    path.write_text(p.stdout)
    binary = envoy_binary()
    assert binary is not None
    v = subprocess.run([binary, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr[-1000:]


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:", ":18000", "127.0.0.1:99999", "host:port"])
def test_bootstrap_rejects_bad_address(address: str) -> None:
    p = run("bootstrap", "--node-id", "e", "--xds-address", address)
    assert p.returncode == 2 and "--xds-address" in p.stderr


def test_validate_reports_envoy_rejections(tmp_path: Path) -> None:
    ok = run("validate", "--envoy", str(MINIMAL))
    assert ok.returncode == 0 and "valid (CDS=2, EDS=2, LDS=1, RDS=1)" in ok.stdout
    bad = tmp_path / "regex.yaml"
    bad.write_text(MINIMAL.read_text().replace("  - name: llm\n", "  - name: llm\n    regex: '^/(?=v1)'\n"))
    p = run("validate", "--envoy", str(bad))
    assert p.returncode == 2 and "Envoy rejects" in p.stderr and "(?=" in p.stderr


@pytest.mark.parametrize("node_id", ["n", "on", "123", "yes"])
def test_bootstrap_quotes_ids_envoy_would_read_as_other_types(tmp_path: Path, node_id: str) -> None:
    p = run("bootstrap", "--node-id", node_id, "--xds-address", "127.0.0.1:18000", "--admin-port", "0")
    assert p.returncode == 0, p.stderr
    path = tmp_path / "envoy.yaml"
    path.write_text(p.stdout)
    v = subprocess.run([envoy_binary() or "envoy", "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr[-1000:]


def test_bootstrap_sets_the_ads_reconnect_back_off() -> None:
    from xds_control.envoy.bootstrap import render_bootstrap

    b = render_bootstrap("n1", "127.0.0.1", 18000, reconnect_base_s=0.25, reconnect_max_s=2)
    grpc = b["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
    # EnvoyGrpc.retry_policy is the one Envoy uses to re-establish xDS streams (GrpcService.retry_policy is not).
    assert grpc["retry_policy"] == {"retry_back_off": {"base_interval": "0.250s", "max_interval": "2.000s"}}
