"""Control-plane metrics (prometheus_client), on a registry of their own.

Names follow Istio's pilot_* metrics where one exists, under the ``xds_control_`` prefix.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connected = Gauge("xds_control_connected_proxies", "xDS streams currently open", ["protocol"], registry=r)
        self.pushes = Counter("xds_control_pushes_total", "xDS responses sent", ["type"], registry=r)
        self.push_bytes = Counter("xds_control_push_bytes_total", "Bytes of xDS responses sent", ["type"], registry=r)
        self.rejects = Counter("xds_control_rejects_total", "NACKs received from proxies", ["type"], registry=r)
        self.acks = Counter("xds_control_acks_total", "ACKs received from proxies", ["type"], registry=r)
        self.stale_nonces = Counter(
            "xds_control_stale_nonce_requests_total", "SotW requests ignored for a stale nonce", ["type"], registry=r
        )
        self.push_time = Histogram(
            "xds_control_push_time_seconds",
            "From a snapshot being set to every connected proxy having ACKed it",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.convergence = Histogram(
            "xds_control_proxy_convergence_seconds",
            "From a snapshot being set to one proxy having ACKed it for every type it subscribes to",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.config_size = Gauge(
            "xds_control_config_size_bytes", "Serialized size of the current snapshot per type", ["type"], registry=r
        )
        self.snapshot_version = Gauge("xds_control_snapshot_version", "Current snapshot version", registry=r)
        self.snapshots_refused = Counter(
            "xds_control_snapshots_refused_total", "Plans refused (inconsistent or invalid)", registry=r
        )
        self.rollbacks = Counter("xds_control_rollbacks_total", "Rollbacks to the last good version after a NACK",
                                 registry=r)
        self.config_reloads = Counter(
            "xds_control_config_reloads_total", "Config file reloads", ["result"], registry=r
        )
        self.signals_up = Gauge(
            "xds_control_signals_up",
            "1 while the pool's signal source answers for its ready endpoints, 0 while it is lost "
            "(the controller then holds the replica count and the published weights)",
            ["pool"], registry=r,
        )
        self.signal_failures = Counter(
            "xds_control_signal_read_failures_total", "Ticks whose signal read failed for every ready endpoint",
            ["pool"], registry=r,
        )
        self.shadow_target = Gauge(
            "xds_control_shadow_target_replicas",
            "Replicas a shadow policy (autoscale.shadow) would ask for on the pool's live signals; never acted on",
            ["pool", "policy"], registry=r,
        )
        self.shadow_replica_seconds = Counter(
            "xds_control_shadow_replica_seconds_total",
            "Integral of a shadow policy's target replicas over time: what its decisions would have cost",
            ["pool", "policy"], registry=r,
        )
