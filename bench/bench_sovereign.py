"""Side by side with sovereign (PyPI), the other Python Envoy control plane, on the same real Envoy 1.40.

    .venv/bin/python bench/bench_sovereign.py [--changes 50] [--spacing-s 2.5] [--rest-refresh-s 1] [--json]

Both control planes serve one cluster ``llm`` of 3 endpoints (loopback HTTP upstreams) to their own Envoy
(same binary, same flags). In one run, each changes the weight of one endpoint ``--changes`` times, one
change every ``--spacing-s`` seconds, and the time from the change to Envoy having applied it (its
``/clusters`` shows the new weight; polled every 2 ms) is measured, with the control plane's CPU (its
whole process tree, from /proc) over the series divided by the number of changes:

* xds-control: ``xds-control serve`` (gRPC ADS push), the change made through the admin API
  (``SetWeightOverride``, what an operator or a script does) and, separately, by rewriting the watched
  config file (polled every 0.25 s, then debounced 100 ms);
* sovereign: ``sovereign`` (gunicorn + uvicorn, 1 worker) in bench/.sovereign-venv (created by
  bench/sovereign_venv.sh when missing), REST-JSON polling: a ``file`` source (the instances, re-read
  every ``source_config.refresh_rate`` = 1 s, its minimum) and Python templates for CDS and EDS; Envoy
  polls CDS and EDS every ``--rest-refresh-s`` (one run each for 1 s and 0.25 s by default). The change =
  rewriting the source file. Ratios are against the faster sovereign setting.

Also measured: Envoy's added latency on loopback (``--latency-requests`` sequential keep-alive GETs straight to
an upstream, then through xds-control's Envoy to the same upstream alone; p50/p99 of the difference).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.envoy import Envoy  # noqa: E402
from support.upstream import Upstream  # noqa: E402

from xds_control.envoy.check import envoy_binary  # noqa: E402

SOV_VENV = ROOT / "bench" / ".sovereign-venv"
CLUSTER = "llm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its live descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    kids: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        stats[int(d)] = fields
        kids.setdefault(int(fields[1]), []).append(int(d))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        f = stats.get(p)
        if f is None:
            continue
        total += (int(f[11]) + int(f[12])) / tick  # utime, stime
        todo.extend(kids.get(p, []))
    return total


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(len(s) - 1, int(k) + 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def envoy_weight(admin_port: int, key: str) -> int | None:
    c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=2)
    try:
        c.request("GET", "/clusters")
        body = c.getresponse().read().decode()
    finally:
        c.close()
    prefix = f"{CLUSTER}::{key}::weight::"
    for line in body.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):])
    return None


def wait_weight(admin_port: int, key: str, weight: int, timeout: float = 30.0) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if envoy_weight(admin_port, key) == weight:
            return time.perf_counter()
        time.sleep(0.002)
    raise TimeoutError(f"Envoy never applied weight {weight} for {key}")


def series(name: str, cp_pid: int, admin_port: int, key: str, change: Any, changes: int, spacing: float,
           first_weight: int) -> dict[str, Any]:
    conv = []
    cpu0, t0 = tree_cpu_s(cp_pid), time.perf_counter()
    for i in range(changes):
        start = time.perf_counter()
        w = first_weight + i
        change(w)
        conv.append(wait_weight(admin_port, key, w) - start)
        time.sleep(max(0.0, start + spacing - time.perf_counter()))
    cpu, wall = tree_cpu_s(cp_pid) - cpu0, time.perf_counter() - t0
    return {"control_plane": name, "changes": changes, "convergence_p50_ms": round(1000 * pct(conv, 50), 1),
            "convergence_p99_ms": round(1000 * pct(conv, 99), 1), "convergence_max_ms": round(1000 * max(conv), 1),
            "cpu_ms_per_change": round(1000 * cpu / changes, 1), "cpu_pct_of_a_core": round(100 * cpu / wall, 2)}


# -- xds-control ---------------------------------------------------------------------------------------------
def xds_config(port: int, ups: list[Upstream], w0: int, debounce_ms: int = 100) -> dict[str, Any]:
    return {"listeners": [{"name": "ingress", "port": port}],
            "services": [{"name": "llm", "pools": [{"name": CLUSTER, "endpoints": [
                {"address": "127.0.0.1", "port": u.port, "weight": w0 if i == 0 else 10}
                for i, u in enumerate(ups)]}]}],
            "xds": {"debounce_ms": debounce_ms, "max_delay_ms": 1000}}


def run_xds_control(
    tmp: Path, ups: list[Upstream], a: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from xds_control.admin.proto import load

    pb, pb_grpc = load()
    import grpc

    port, xds_port = free_port(), free_port()
    cfg_path = tmp / "xds.yaml"
    cfg_path.write_text(yaml.safe_dump(xds_config(port, ups, 10, a.debounce_ms)))
    proc = subprocess.Popen([sys.executable, "-m", "xds_control.cli", "serve", "--config", str(cfg_path),
                             "--xds-port", str(xds_port), "--metrics-port", "0", "--admin-port", "0",
                             "--log-level", "warning"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    envoy = None
    try:
        ports = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        envoy = Envoy("bench-xds", xds_port).start()
        key = f"127.0.0.1:{ups[0].port}"
        wait_weight(envoy.admin_port, key, 10)
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['admin_port']}")
        stub = pb_grpc.AdminStub(channel)

        def by_admin(w: int) -> None:
            stub.SetWeightOverride(pb.SetWeightOverrideRequest(service="llm", endpoint=key, pool=CLUSTER, weight=w),
                                   timeout=5)

        tag = f", debounce {a.debounce_ms} ms"
        rows = [series(f"xds-control (admin API{tag})", proc.pid, envoy.admin_port, key, by_admin, a.changes,
                       a.spacing_s, 100)]
        stub.ClearWeightOverride(pb.EndpointRef(service="llm", endpoint=key, pool=CLUSTER), timeout=5)
        wait_weight(envoy.admin_port, key, 10)
        channel.close()

        def by_file(w: int) -> None:
            tmpf = cfg_path.with_suffix(".tmp")
            tmpf.write_text(yaml.safe_dump(xds_config(port, ups, w, a.debounce_ms)))
            tmpf.replace(cfg_path)

        if "file" in a.xds_series:
            rows.append(series(f"xds-control (config file{tag})", proc.pid, envoy.admin_port, key, by_file,
                               a.changes, a.spacing_s, 300))
        idle_cpu0 = tree_cpu_s(proc.pid)
        time.sleep(a.idle_s)
        idle = {"control_plane": "xds-control", "idle_cpu_pct": round(100 * (tree_cpu_s(proc.pid) - idle_cpu0)
                                                                       / a.idle_s, 2)}
        latency = envoy_latency(port, ups, a.latency_requests)
        return rows, {**idle, **latency}
    finally:
        if envoy is not None:
            envoy.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def envoy_latency(port: int, ups: list[Upstream], n: int) -> dict[str, Any]:
    """Sequential keep-alive GETs: straight to upstream 0, then through Envoy (other endpoints drained by weight)."""

    def times(p: int) -> list[float]:
        c = http.client.HTTPConnection("127.0.0.1", p, timeout=5)
        out = []
        for i in range(n + 200):
            t = time.perf_counter()
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            if i >= 200:  # warm-up
                out.append(time.perf_counter() - t)
        c.close()
        return out

    direct = times(ups[0].port)
    via = times(port)
    return {"latency_requests": n, "direct_p50_ms": round(1000 * pct(direct, 50), 3),
            "via_envoy_p50_ms": round(1000 * pct(via, 50), 3), "direct_p99_ms": round(1000 * pct(direct, 99), 3),
            "via_envoy_p99_ms": round(1000 * pct(via, 99), 3),
            "added_p50_ms": round(1000 * (pct(via, 50) - pct(direct, 50)), 3),
            "added_p99_ms": round(1000 * (pct(via, 99) - pct(direct, 99)), 3)}


# -- sovereign -----------------------------------------------------------------------------------------------
TEMPLATE_CDS = '''
def call(instances, **kwargs):
    for inst in instances:
        yield {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": inst["name"],
               "type": "EDS", "connect_timeout": "1s",
               "eds_cluster_config": {"service_name": inst["name"], "eds_config": {
                   "resource_api_version": "V3",
                   "api_config_source": {"api_type": "REST", "transport_api_version": "V3",
                                         "cluster_names": ["sovereign"], "refresh_delay": "REFRESH",
                                         "request_timeout": "1s"}}}}
'''
TEMPLATE_EDS = '''
def call(instances, **kwargs):
    for inst in instances:
        yield {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
               "cluster_name": inst["name"],
               "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {"address": e["address"], "port_value": e["port"]}}},
                    "load_balancing_weight": e["weight"]} for e in inst["endpoints"]]}]}
'''


def sovereign_bootstrap(node: str, listener: int, sov_port: int, refresh: str, admin_file: Path) -> dict[str, Any]:
    rest = {"api_type": "REST", "transport_api_version": "V3", "cluster_names": ["sovereign"],
            "refresh_delay": refresh, "request_timeout": "1s"}
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "ingress",
           "route_config": {"validate_clusters": False,  # llm comes from CDS later
                            "virtual_hosts": [{"name": "all", "domains": ["*"],
                                               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": CLUSTER}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {
        "node": {"id": node, "cluster": "bench"},
        "dynamic_resources": {"cds_config": {"resource_api_version": "V3", "api_config_source": rest}},
        "static_resources": {
            "listeners": [{"name": "ingress", "address": {"socket_address": {"address": "127.0.0.1",
                                                                             "port_value": listener}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [{"name": "sovereign", "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": "sovereign", "endpoints": [{"lb_endpoints": [
                              {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                           "port_value": sov_port}}}}]}]}}]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


def run_sovereign(tmp: Path, ups: list[Upstream], a: argparse.Namespace,
                  refresh_s: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    d = tmp / f"sovereign-{refresh_s:g}"
    d.mkdir()
    refresh = f"{refresh_s:g}s"
    (d / "clusters.py").write_text(TEMPLATE_CDS.replace("REFRESH", refresh))
    (d / "endpoints.py").write_text(TEMPLATE_EDS)
    inst = d / "instances.yaml"

    def write_instances(w: int) -> None:
        data = [{"name": CLUSTER, "service_clusters": ["*"], "endpoints": [
            {"address": "127.0.0.1", "port": u.port, "weight": w if i == 0 else 10} for i, u in enumerate(ups)]}]
        t = inst.with_suffix(".tmp")
        t.write_text(yaml.safe_dump(data))
        t.replace(inst)

    write_instances(10)
    (d / "sovereign.yaml").write_text(yaml.safe_dump({
        "sources": [{"type": "file", "config": {"path": f"file+yaml://{inst}"}}],
        "source_config": {"refresh_rate": 1},
        "matching": {"enabled": False},
        "templates": {"default": [
            {"type": "clusters",
             "spec": {"protocol": "python", "serialization": "raw", "path": str(d / "clusters.py")}},
            {"type": "endpoints", "spec": {"protocol": "python", "serialization": "raw",
                                           "path": str(d / "endpoints.py")}}]},
        "logging": {"access_logs": {"enabled": False}},
    }))
    sov_port = free_port()
    env = {**os.environ, "SOVEREIGN_CONFIG": f"file://{d / 'sovereign.yaml'}", "SOVEREIGN_HOST": "127.0.0.1",
           "SOVEREIGN_PORT": str(sov_port), "SOVEREIGN_WORKERS": "1", "SOVEREIGN_ENVIRONMENT_TYPE": "local"}
    log = open(d / "sovereign.log", "wb")
    proc = subprocess.Popen([str(SOV_VENV / "bin" / "sovereign")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=d, start_new_session=True)
    envoy_proc = None
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sovereign exited ({proc.returncode}): "
                                   f"{(d / 'sovereign.log').read_text(errors='replace')[-3000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", sov_port, timeout=1)
                c.request("GET", "/healthcheck")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sovereign did not answer /healthcheck within 60 s")
            time.sleep(0.2)
        port = free_port()
        boot = d / "envoy.yaml"
        addr = d / "admin.addr"
        boot.write_text(yaml.safe_dump(sovereign_bootstrap("bench-sov", port, sov_port, refresh, addr)))
        envoy_log = open(d / "envoy.log", "wb")
        envoy_proc = subprocess.Popen([envoy_binary(), "-c", str(boot), "--disable-hot-restart", "--concurrency", "1",
                                       "-l", "warning", "--admin-address-path", str(addr), "--drain-time-s", "1"],
                                      stdout=envoy_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (addr.exists() and addr.read_text().strip()):
            if time.monotonic() > deadline or envoy_proc.poll() is not None:
                raise RuntimeError(f"envoy did not start: {(d / 'envoy.log').read_text()[-2000:]}")
            time.sleep(0.05)
        admin_port = int(addr.read_text().strip().rsplit(":", 1)[1])
        key = f"127.0.0.1:{ups[0].port}"
        wait_weight(admin_port, key, 10, timeout=60)
        rows = [series(f"sovereign (file source, Envoy REST refresh {refresh})", proc.pid, admin_port, key,
                       write_instances, a.changes, a.spacing_s, 100)]
        idle_cpu0 = tree_cpu_s(proc.pid)
        time.sleep(a.idle_s)
        idle_cpu_pct = round(100 * (tree_cpu_s(proc.pid) - idle_cpu0) / a.idle_s, 2)
        return rows, {"control_plane": f"sovereign (REST refresh {refresh})", "idle_cpu_pct": idle_cpu_pct}
    finally:
        if envoy_proc is not None:
            envoy_proc.terminate()
            envoy_proc.wait(10)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def ensure_sovereign() -> str | None:
    """None when sovereign is installed (installing it if needed), else why it cannot run here."""
    if (SOV_VENV / "bin" / "sovereign").exists():
        return None
    r = subprocess.run(["sh", str(ROOT / "bench" / "sovereign_venv.sh")], capture_output=True, text=True)
    if r.returncode != 0 or not (SOV_VENV / "bin" / "sovereign").exists():
        return f"bench/sovereign_venv.sh failed ({r.returncode}): {(r.stdout + r.stderr)[-1500:]}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--spacing-s", type=float, default=2.5)
    ap.add_argument("--rest-refresh-s", default="1,0.25",
                    help="Envoy's REST refresh_delay for sovereign, one run per comma-separated value")
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--latency-requests", type=int, default=5000)
    ap.add_argument("--skip-sovereign", action="store_true")
    ap.add_argument("--debounce-ms", type=int, default=100, help="xds-control's xds.debounce_ms (default: its default)")
    ap.add_argument("--xds-series", default="admin,file", help="admin,file or admin: which xds-control changes")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ups = [Upstream(f"u{i}", 0).start() for i in range(3)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-sovereign-"))
    try:
        rows, extra = run_xds_control(tmp, ups, a)
        extras = [extra]
        why = "skipped (--skip-sovereign)" if a.skip_sovereign else ensure_sovereign()
        if why is None:
            for refresh in (float(x) for x in str(a.rest_refresh_s).split(",")):
                r, e = run_sovereign(tmp, ups, a, refresh)
                rows += r
                extras.append(e)
    finally:
        for u in ups:
            u.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {"rows": rows, "extra": extras, "sovereign": why or "ran"}
    sovs = [r for r in rows if r["control_plane"].startswith("sovereign")]
    sov = min(sovs, key=lambda r: r["convergence_p50_ms"]) if sovs else None  # the fastest sovereign setting
    if sov is not None:
        out["ratios_against"] = sov["control_plane"]
        for r in rows:
            if r["control_plane"].startswith("xds-control"):
                r["convergence_p50_ratio"] = round(sov["convergence_p50_ms"] / r["convergence_p50_ms"], 1)
                r["convergence_p99_ratio"] = round(sov["convergence_p99_ms"] / r["convergence_p99_ms"], 1)
                r["cpu_per_change_ratio"] = round(r["cpu_ms_per_change"] / sov["cpu_ms_per_change"], 2)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for r in rows:
            print(json.dumps(r))
        for e in extras:
            print(json.dumps(e))
        if why:
            print(f"sovereign: {why}")
    print(f"(cpu count {os.cpu_count()}; python {sys.version.split()[0]}; spacing {a.spacing_s} s; "
          f"REST refresh {a.rest_refresh_s} s; ratios against {out.get('ratios_against')})",
          file=sys.stderr if a.json else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
