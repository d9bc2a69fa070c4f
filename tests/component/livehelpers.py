"""Helpers for the live-path component tests: free ports, replica and Prometheus processes."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM (then SIGKILL after ``timeout``), wait, and close the pipes it was started with."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


class ReplicaProc:
    """``python -m xds_control.fleet.replica --port 0 ...`` with its bound port read from stdout."""

    def __init__(self, *args: str) -> None:
        self.args = ["--port", "0", "--profile", "tiny", *args]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xds_control.fleet.replica", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15.0)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on "):
            stop_process(self.proc)
            raise RuntimeError(f"replica did not start: {line!r}")
        self.listening_at = time.monotonic()
        self.host, port = line.split()[-1].rsplit(":", 1)
        self.port = int(port)
        self.key = f"{self.host}:{self.port}"
        self.url = f"http://{self.key}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 10.0) -> float:
        """Poll /health until 200; returns seconds since the server started listening."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if http_status(self.url + "/health") == 200:
                return time.monotonic() - self.listening_at
            time.sleep(0.02)
        raise TimeoutError(f"replica {self.key} not ready after {timeout} s")

    def stop(self) -> None:
        stop_process(self.proc)


PROMETHEUS = shutil.which("prometheus")


class PrometheusProc:
    """A real Prometheus (Debian package) scraping ``targets`` every second, on a free loopback port."""

    def __init__(self, targets: list[str]) -> None:
        if PROMETHEUS is None:
            raise RuntimeError("prometheus binary not found")
        self.dir = tempfile.mkdtemp(prefix="xds-prom-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = Path(self.dir) / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: replicas\n    scrape_interval: 1s\n    scrape_timeout: 900ms\n"
            f"    static_configs:\n      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        self.log = open(Path(self.dir) / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_first_sample(self, query: str = "up", timeout: float = 20.0) -> float:
        """Poll the query API until ``query`` returns a series; returns seconds waited."""
        t0 = time.monotonic()
        url = f"{self.url}/api/v1/query?query={urllib.parse.quote(query)}"
        while time.monotonic() - t0 < timeout:
            assert self.proc.poll() is None, "prometheus exited"
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if json.load(r)["data"]["result"]:
                        return time.monotonic() - t0
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"no {query!r} sample from prometheus after {timeout} s")

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


