"""Shared pieces of the fault-injection suite: the short/full switch, results, load, processes, Envoy views.

``XDS_FAULTS_FULL=1`` (``make faults``) runs the full forms; otherwise (``make test``) the short ones.
Every scenario calls :func:`record` with its figures: they are printed at the end of the run and written
as one JSON file per scenario to ``$XDS_FAULTS_OUT`` (``make faults`` uses ``out/faults`` and then
``tests/faults/report.py`` turns them into the table in RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.envoy import Envoy

from xds_control.fleet.loadgen import LoadResult, RequestRecord, run_load
from xds_control.fleet.trace import TraceRequest

FULL = os.environ.get("XDS_FAULTS_FULL") == "1"
FORM = "full" if FULL else "short"
ROOT = Path(__file__).resolve().parents[2]

#: Every figure recorded in this pytest session (printed by conftest's terminal summary).
RESULTS: list[dict[str, Any]] = []


def pick(short: Any, full: Any) -> Any:
    return full if FULL else short


def record(scenario: str, **figures: Any) -> dict[str, Any]:
    row = {"scenario": scenario, "form": FORM, "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
           **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}}
    RESULTS.append(row)
    out = os.environ.get("XDS_FAULTS_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{scenario}.json").write_text(json.dumps(row, indent=2) + "\n")
    print(f"\n[faults] {json.dumps(row)}")
    return row


# -- load ---------------------------------------------------------------------------------------------------
def steady_trace(rps: float, seconds: float, input_tokens: int = 64, output_tokens: int = 4) -> list[TraceRequest]:
    n = int(rps * seconds)
    return [TraceRequest(i / rps, input_tokens, output_tokens) for i in range(n)]


@dataclass
class Background:
    """Open-loop load (``xds_control.fleet.loadgen.run_load``, non-streaming so a reset before the response's
    headers can be retried by Envoy) running in a task while a scenario injects its fault."""

    port: int
    rps: float
    seconds: float
    t0: float = 0.0
    task: asyncio.Task[LoadResult] | None = None
    records: list[RequestRecord] = field(default_factory=list)

    def start(self) -> Background:
        self.t0 = time.monotonic()
        self.task = asyncio.get_running_loop().create_task(
            run_load(f"http://127.0.0.1:{self.port}", steady_trace(self.rps, self.seconds), stream=False,
                     timeout_s=30, on_record=self.records.append), name="faults-load")
        return self

    async def result(self) -> LoadResult:
        assert self.task is not None
        return await self.task

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


def failures(res: LoadResult) -> list[str]:
    return [f"{r.status} {r.error[:100]}" for r in res.records if not r.ok]


def loss_pct(res: LoadResult) -> float:
    return 100.0 * res.summary.failed / max(1, res.summary.requests)


async def until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> float:
    """Poll ``pred`` (may block briefly) until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return time.monotonic()
        except Exception as e:  # noqa: BLE001 - e.g. admin port not up yet
            last = e
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


# -- processes ----------------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Serve:
    """``xds-control serve`` as its own process (so it can be SIGKILLed), on a fixed xDS port."""

    def __init__(self, cfg_path: Path, xds_port: int, log_path: Path) -> None:
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xds_control.cli", "serve", "--config", str(cfg_path), "--xds-port",
             str(xds_port), "--metrics-port", "0", "--admin-port", "0", "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=self.log, env=child_env(), cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line:
            self.stop()
            raise RuntimeError(f"serve did not start; see {log_path}")
        self.ports = json.loads(line)

    def syncz(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics_port']}/debug/syncz", timeout=2) as r:
            return json.load(r)["proxies"]  # type: ignore[no-any-return]

    def snapshot(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics_port']}/debug/snapshot", timeout=2) as r:
            return json.load(r)  # type: ignore[no-any-return]

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close()

    def _close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


@contextlib.contextmanager
def envoy_running(node_id: str, xds_port: int, delta: bool = False) -> Iterator[Envoy]:
    envoy = Envoy(node_id, xds_port, delta=delta).start()
    try:
        yield envoy
    finally:
        envoy.stop()


# -- what Envoy holds -------------------------------------------------------------------------------------
def eds_hosts(envoy: Envoy, cluster: str) -> dict[str, int]:
    """``address:port -> load-balancing weight`` of ``cluster`` as Envoy applied it (config_dump?include_eds)."""
    dump = envoy.config_dump(include_eds=True)
    out: dict[str, int] = {}
    for cfg in dump["configs"]:
        for c in cfg.get("dynamic_endpoint_configs", []):
            cla = c.get("endpoint_config", {})
            if cla.get("cluster_name") != cluster:
                continue
            for lle in cla.get("endpoints", []):
                for e in lle.get("lb_endpoints", []):
                    sa = e["endpoint"]["address"]["socket_address"]
                    out[f"{sa['address']}:{sa['port_value']}"] = int(e.get("load_balancing_weight", 1))
    return out


_HOST_LINE = re.compile(r"^(?P<cluster>[^:]+)::(?P<host>[\d.]+:\d+)::health_flags::(?P<flags>.*)$")


def host_flags(envoy: Envoy, cluster: str) -> dict[str, str]:
    """``address:port -> health flags`` from Envoy's /clusters (``healthy``, ``/failed_outlier_check``, ...)."""
    out = {}
    for line in envoy.admin("/clusters").splitlines():
        m = _HOST_LINE.match(line)
        if m and m["cluster"] == cluster:
            out[m["host"]] = m["flags"]
    return out


class FlagWatch:
    """Envoy's per-host health flags of one cluster every 20 ms, in a thread: (time, {host: flags})."""

    def __init__(self, envoy: Envoy, cluster: str = "llm") -> None:
        self.envoy, self.cluster = envoy, cluster
        self.samples: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), host_flags(self.envoy, self.cluster)))
            self._stop.wait(0.02)

    def __enter__(self) -> FlagWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(5)

    def out_of_rotation(self, key: str, after: float) -> tuple[float | None, str]:
        """First time after ``after`` the host was ejected or gone, and which."""
        for t, flags in self.samples:
            if t < after:
                continue
            if key not in flags:
                return t, "removed"
            if "failed_outlier_check" in flags[key]:
                return t, "ejected"
        return None, ""


class EdsWatch:
    """Polls what Envoy holds for one cluster every ``every`` s in a thread: ``(monotonic time, hosts)``."""

    def __init__(self, envoy: Envoy, cluster: str, every: float = 0.05) -> None:
        self.envoy, self.cluster, self.every = envoy, cluster, every
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="eds-watch")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), eds_hosts(self.envoy, self.cluster)))
            self._stop.wait(self.every)

    def __enter__(self) -> EdsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
