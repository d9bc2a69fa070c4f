"""deploy/grafana/xds-control.json: what deploy/grafana/dashboard.py generates, and every metric its queries
name is one a real ``xds-control serve`` exports on ``/metrics``.

``serve`` runs as a subprocess with an autoscaled pool of local emulated replicas (so the controller's metrics
exist and have values); the metric identifiers of every panel query and template variable are taken out of the
PromQL and looked up among the names ``/metrics`` exports: each family's samples (a counter's ``_total``, a
histogram's ``_bucket``/``_sum``/``_count``), including families that have no labelled child yet (a NACK counter
in a run without NACKs is still exported, with its HELP and TYPE lines).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "xds-control.json"

# PromQL words that are not metric names: aggregations, their modifiers, binary operators, keywords.
_KEYWORDS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "group",
             "count_values", "limitk", "limit_ratio", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric identifiers in a PromQL expression (or a Grafana ``label_values(metric, label)`` query)."""
    m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)\s*", expr)
    if m:
        return {m.group(1)}
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery selectors ($__rate_interval)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    out = set()
    for tok in re.finditer(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        name, call = tok.group(1), tok.group(2)
        if call or name.lower() in _KEYWORDS:
            continue  # a function or an aggregation
        out.add(name)
    return out


def test_metric_names_are_found_in_promql() -> None:
    assert metric_names('sum by (pool, le) (rate(a_bucket{pool=~"$pool", x="y{z}"}[$__rate_interval]))') == \
        {"a_bucket"}
    assert metric_names("histogram_quantile(0.99, sum(rate(b_seconds_bucket[5m]))) / on(pool) c + 1e3") == \
        {"b_seconds_bucket", "c"}
    assert metric_names("label_values(xds_control_target_replicas, pool)") == {"xds_control_target_replicas"}
    assert metric_names('min by (pool) (up{job="x"}) and bool d offset 5m') == {"up", "d"}


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expression) for every panel target and every query variable."""
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['title']!r} target {t['refId']}", t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"variable {v['name']!r}", q))
    return out


def unexported(dash: dict[str, Any], exported: set[str]) -> list[str]:
    missing = []
    for where, expr in queries(dash):
        names = metric_names(expr)
        if not names:
            missing.append(f"{where}: no metric in {expr!r}")
        missing += [f"{where}: {n} is not exported (query {expr!r})" for n in sorted(names - exported)]
    return missing


def exported_names(text: str) -> tuple[set[str], set[str]]:
    """(every sample name /metrics exports, including declared families without samples; names with samples)."""
    names, with_samples = set(), set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
                "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "unknown": ("",)}
    for fam in text_string_to_metric_families(text):
        names.update(fam.name + s for s in suffixes[fam.type])
        with_samples.update(s.name for s in fam.samples)
    return names | with_samples, with_samples


def test_dashboard_json_is_what_the_generator_writes() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "deploy" / "grafana" / "dashboard.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("Replicas: current, target, ready", "Load index per pool", "Endpoint weights (EDS)",
                   "Decisions by direction", "Scaling actions", "Gateway request rate", "Signals up",
                   "Push time (snapshot set → every proxy ACKed)", "Snapshot version", "NACKs and rollbacks",
                   "Config reloads", "Connected proxies"):
        assert needed in titles, needed


def autoscaled_config(listener_port: int) -> dict[str, Any]:
    """examples/autoscale.yaml with small settings: one replica to start, quick to load."""
    cfg = yaml.safe_load((ROOT / "examples" / "autoscale.yaml").read_text())
    cfg["listeners"][0]["port"] = listener_port
    auto = cfg["services"][0]["pools"][0]["autoscale"]
    auto["initial_replicas"] = 1
    auto["overrides"].update(min_replicas=1, max_replicas=2, startup_s=5)
    auto["replica"]["load_delay_s"] = 0.3
    cfg["controller"]["tick_s"] = 0.5
    return cfg


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_every_panel_queries_metrics_a_running_serve_exports(tmp_path: Path) -> None:
    cfg = tmp_path / "autoscale.yaml"
    cfg.write_text(yaml.safe_dump(autoscaled_config(free_port())))
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xds_control", "serve", "--config", str(cfg), "--xds-port", "0", "--metrics-port",
         "0", "--admin-port", "0", "--log-level", "warning"], stdout=subprocess.PIPE, stderr=log, cwd=tmp_path)
    watchdog = threading.Timer(90, proc.kill)  # serve that hangs is killed, and the test fails below
    watchdog.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line, (tmp_path / "serve.log").read_text()[-3000:]
        port = json.loads(line)["metrics_port"]
        # Wait for the controller to have ticked with its replica ready (its gauges then have samples).
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            text = scrape(port)
            if re.search(r'^xds_control_ready_replicas\{[^}]*pool="llm"[^}]*\} 1\.0$', text, re.M):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the controller never reported a ready replica:\n{text[-3000:]}")
        text = scrape(port)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    exported, with_samples = exported_names(text)
    dash = json.loads(DASHBOARD.read_text())
    missing = unexported(dash, exported)
    assert not missing, "\n".join(missing)
    # The controller's own series have values in this run, not only declarations.
    for name in ("xds_control_current_replicas", "xds_control_target_replicas", "xds_control_ready_replicas",
                 "xds_control_endpoint_weight", "xds_control_autoscaler_decisions_total",
                 "xds_control_scaling_actions_total", "xds_control_snapshot_version", "xds_control_signals_up"):
        assert name in with_samples, name
    # The check is not a rubber stamp: a panel on a metric serve does not export fails, named by its title.
    bogus = {"panels": [{"title": "Made up", "targets": [{"refId": "A", "expr": "rate(xds_control_nope_total[1m])"}]}],
             "templating": {"list": []}}
    assert unexported(bogus, exported) == \
        ["panel 'Made up' target A: xds_control_nope_total is not exported (query 'rate(xds_control_nope_total[1m])')"]
