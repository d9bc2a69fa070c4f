"""Generate the Grafana dashboard of xds-control (``deploy/grafana/xds-control.json``) from the panel list below.

    python deploy/grafana/dashboard.py            # rewrites xds-control.json next to this file
    python deploy/grafana/dashboard.py --check    # exit 1 if xds-control.json is not what this prints

Import the JSON in Grafana (Dashboards → Import) and pick a Prometheus data source that scrapes the control
plane's metrics port (the chart's ServiceMonitor, or the pod annotations ``prometheus.io/scrape``). Every query
uses only metrics a running ``xds-control serve`` exports; tests/e2e/test_grafana_dashboard.py checks each
one against a real ``serve``'s ``/metrics``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "xds-control.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
P = 'pool=~"$pool"'  # the pool variable
RI = "$__rate_interval"

#: (row title, [(panel title, type, unit, [(expr, legend)], description)]), laid out two panels per line.
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]], str]]]] = [
    ("Fleet", [
        ("Replicas: current, target, ready", "timeseries", "short", [
            (f"xds_control_current_replicas{{{P}}}", "{{pool}} current"),
            (f"xds_control_target_replicas{{{P}}}", "{{pool}} target"),
            (f"xds_control_ready_replicas{{{P}}}", "{{pool}} ready"),
        ], "Replicas the policy counted (drains excluded), wants, and that have a ready endpoint."),
        ("Replicas starting and draining", "timeseries", "short", [
            (f"xds_control_starting_replicas{{{P}}}", "{{pool}} starting"),
            (f"xds_control_draining_replicas{{{P}}}", "{{pool}} draining"),
        ], "Started and not ready yet; being drained (draining or removable)."),
        ("Gateway request rate", "timeseries", "reqps", [
            (f"xds_control_gateway_request_rate{{{P}}}", "{{pool}}"),
        ], "Arrival rate per pool from Envoy's statistics."),
        ("Shadow policies: target replicas", "timeseries", "short", [
            (f"xds_control_shadow_target_replicas{{{P}}}", "{{pool}} {{policy}} (shadow)"),
            (f"xds_control_target_replicas{{{P}}}", "{{pool}} live target"),
        ], "What each shadow policy would ask for on the live signals, next to the live target; never acted on."),
        ("Shadow policies: replica-hours over the time range", "stat", "none", [
            (f"sum by (pool, policy) (increase(xds_control_shadow_replica_seconds_total{{{P}}}[$__range])) / 3600",
             "{{pool}} {{policy}}"),
        ], "What each shadow policy's decisions would have cost, in replica-hours, over the dashboard's range."),
    ]),
    ("Load and weights", [
        ("Load index per pool", "timeseries", "none", [
            (f"xds_control_pool_load_index{{{P}}}", "{{pool}}"),
        ], "The pool's smoothed load index L = αU_GPU + βU_CPU + γD_net that the policy used."),
        ("Load index per endpoint", "timeseries", "none", [
            (f"xds_control_endpoint_load_index{{{P}}}", "{{pool}} {{endpoint}}"),
        ], "A hotspot shows as one endpoint far above the others."),
        ("Endpoint weights (EDS)", "timeseries", "short", [
            (f"xds_control_endpoint_weight{{{P}}}", "{{pool}} {{endpoint}}"),
        ], "Published load-balancing weight per endpoint; 0 = out of rotation (draining or ramping from 0)."),
        ("Signals a decision names", "timeseries", "short", [
            (f"xds_control_scaler_metric_value{{{P}}}", "{{pool}} {{metric}}"),
        ], "Value of each signal the pool's last decision gives as a reason."),
    ]),
    ("Decisions and actions", [
        ("Decisions by direction", "timeseries", "short", [
            (f"sum by (pool, direction) (increase(xds_control_autoscaler_decisions_total{{{P}}}[{RI}]))",
             "{{pool}} {{direction}}"),
        ], "Policy decisions (one per pool per tick): up, down or hold."),
        ("Scale decisions by reason", "timeseries", "short", [
            (f'sum by (pool, policy, reason) (increase(xds_control_autoscaler_decisions_total{{{P}, '
             f'direction!="hold"}}[{RI}]))', "{{pool}} {{policy}}: {{reason}}"),
        ], "Why the fleet moved: the first reason code of each up or down decision."),
        ("Scaling actions", "timeseries", "short", [
            (f"sum by (pool, action) (increase(xds_control_scaling_actions_total{{{P}}}[{RI}]))",
             "{{pool}} {{action}}"),
        ], "Replicas started (scale_up), drained replicas stopped (scale_down), crashed replicas reaped."),
        ("Autoscaling paused", "stat", "short", [
            (f"xds_control_autoscaling_paused{{{P}}}", "{{pool}}"),
        ], "1 while an operator paused the pool (xds-control admin pause)."),
    ]),
    ("Latency and SLO", [
        ("TTFT seen through the replicas", "timeseries", "s", [
            (f"histogram_quantile(0.5, sum by (pool, le) (rate(xds_control_replica_ttft_seconds_bucket{{{P}}}"
             f"[{RI}])))", "{{pool}} p50"),
            (f"histogram_quantile(0.99, sum by (pool, le) (rate(xds_control_replica_ttft_seconds_bucket{{{P}}}"
             f"[{RI}])))", "{{pool}} p99"),
            (f"xds_control_slo_ttft_target_seconds{{{P}}}", "{{pool}} target"),
        ], "Each endpoint's mean time to first token per reading, and the policy's TTFT target."),
        ("TPOT seen through the replicas", "timeseries", "s", [
            (f"histogram_quantile(0.5, sum by (pool, le) (rate(xds_control_replica_tpot_seconds_bucket{{{P}}}"
             f"[{RI}])))", "{{pool}} p50"),
            (f"histogram_quantile(0.99, sum by (pool, le) (rate(xds_control_replica_tpot_seconds_bucket{{{P}}}"
             f"[{RI}])))", "{{pool}} p99"),
        ], "Each endpoint's mean time per output token per reading (vllm:request_time_per_output_token_seconds)."),
        ("SLO attainment (last minute)", "timeseries", "percentunit", [
            (f"xds_control_slo_attainment_ratio{{{P}}}", "{{pool}}"),
        ], "Share of completed requests whose endpoint's mean TTFT met the target (an estimate from means)."),
        ("Signals up", "stat", "short", [
            (f"min by (pool) (xds_control_signals_up{{{P}}})", "{{pool}}"),
        ], "0 while a pool's signal source is lost: its replicas and weights are then held (an alert)."),
        ("Signal read failures", "timeseries", "short", [
            (f"sum by (pool) (increase(xds_control_signal_read_failures_total{{{P}}}[{RI}]))", "{{pool}}"),
        ], "Ticks whose signal read failed for every ready endpoint of the pool."),
    ]),
    ("xDS", [
        ("Connected proxies", "timeseries", "short", [
            ("sum by (protocol) (xds_control_connected_proxies)", "{{protocol}}"),
        ], "Open ADS streams by protocol (SotW, Delta). Per-proxy sync state: /debug/syncz or "
           "xds-control admin status."),
        ("Push time (snapshot set → every proxy ACKed)", "timeseries", "s", [
            (f"histogram_quantile(0.5, sum by (le) (rate(xds_control_push_time_seconds_bucket[{RI}])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(xds_control_push_time_seconds_bucket[{RI}])))", "p99"),
            (f"histogram_quantile(0.99, sum by (le) (rate(xds_control_proxy_convergence_seconds_bucket[{RI}])))",
             "one proxy p99"),
        ], "Like pilot_xds_push_time; one proxy = one proxy ACKed every type it subscribes to."),
        ("Snapshot version", "timeseries", "short", [
            ("xds_control_snapshot_version", "{{instance}}"),
        ], "The version in force; replicas of the control plane serving the same config agree."),
        ("Pushes by type", "timeseries", "short", [
            (f"sum by (type) (increase(xds_control_pushes_total[{RI}]))", "{{type}}"),
            (f"sum by (type) (increase(xds_control_acks_total[{RI}]))", "{{type}} ACK"),
            (f"sum by (type) (increase(xds_control_stale_nonce_requests_total[{RI}]))", "{{type}} stale nonce"),
        ], "xDS responses sent, ACKs received, and SotW requests ignored for a stale nonce."),
        ("Push bytes by type", "timeseries", "Bps", [
            (f"sum by (type) (rate(xds_control_push_bytes_total[{RI}]))", "{{type}}"),
        ], "Bytes of xDS responses sent per second."),
        ("NACKs and rollbacks", "timeseries", "short", [
            (f"sum by (type) (increase(xds_control_rejects_total[{RI}]))", "{{type}} NACK"),
            (f"sum(increase(xds_control_rollbacks_total[{RI}]))", "rollbacks"),
            (f"sum(increase(xds_control_snapshots_refused_total[{RI}]))", "snapshots refused"),
        ], "A NACK keeps the proxy on its last good version; a rollback returns everyone to the last version "
           "all proxies ACKed."),
        ("Config reloads", "timeseries", "short", [
            (f"sum by (result) (increase(xds_control_config_reloads_total[{RI}]))", "{{result}}"),
        ], "Config file reloads by result: ok, invalid (last good config kept), needs_restart (a start-only key "
           "changed), known_bad (a configuration proxies rejected before, not re-applied)."),
        ("Config size by type", "timeseries", "bytes", [
            ("xds_control_config_size_bytes", "{{type}}"),
        ], "Serialized size of the current snapshot per resource type."),
    ]),
]


def _panel(pid: int, title: str, kind: str, unit: str, targets: list[tuple[str, str]], desc: str,
           x: int, y: int) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": pid, "type": kind, "title": title, "description": desc, "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }
    if kind == "timeseries":
        panel["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    else:
        panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
        alert_at = {"Autoscaling paused": [("green", None), ("red", 1)],  # 1 = paused
                    "Signals up": [("red", None), ("green", 1)]}.get(title)  # 0 = lost
        if alert_at:
            panel["fieldConfig"]["defaults"]["thresholds"] = {
                "mode": "absolute", "steps": [{"color": c, "value": v} for c, v in alert_at]}
    return panel


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row, items in ROWS:
        panels.append({"id": pid, "type": "row", "title": row, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for n, item in enumerate(items):
            panels.append(_panel(pid, *item, x=12 * (n % 2), y=y + 8 * (n // 2)))
            pid += 1
        y += 8 * ((len(items) + 1) // 2)
    return {
        "title": "xds-control", "uid": "xds-control", "description": "Load-aware xDS control plane: fleet, "
        "decisions, load, latency and xDS (generated by deploy/grafana/dashboard.py)",
        "tags": ["xds-control", "envoy", "autoscaling"], "editable": True, "schemaVersion": 39, "version": 1,
        "graphTooltip": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
            {"name": "pool", "label": "Pool", "type": "query", "datasource": DS,
             "query": {"query": "label_values(xds_control_target_replicas, pool)", "refId": "pool"},
             "definition": "label_values(xds_control_target_replicas, pool)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]}},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
