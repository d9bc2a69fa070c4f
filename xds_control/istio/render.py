"""Config -> Istio ``EnvoyFilter`` resources (plain dicts). Pure: no I/O, no Kubernetes client.

In a mesh, istiod gives every sidecar its listeners, routes, clusters, certificates and endpoints over
ADS. These EnvoyFilters change exactly two things in the sidecars of their namespace (the Istio root
namespace: the whole mesh):

1. ``xds-control-eds-cluster`` **adds** one cluster, ``xds-control-eds``, through which the sidecar
   reaches xds-control's gRPC port (HTTP/2, DNS name of its Service);
2. ``xds-control-<pool>`` **merges** into the sidecar's outbound cluster of each configured Service
   (``outbound|PORT||SERVICE.NAMESPACE.svc.DOMAIN``, matched by service and port) an ``eds_cluster_config``
   whose endpoints come over a (non-aggregated) EDS stream from ``xds-control-eds`` under the pool's
   name, plus the pool's load-balancing, locality and outlier-detection settings.

So the endpoints of those services -- with xds-control's load-aware weights, drains and localities --
come from xds-control, and everything else stays with istiod (see README "Istio").
"""

from __future__ import annotations

from typing import Any

from xds_control.config import Config, to_traffic_plan
from xds_control.core.traffic import LbPolicy, OutlierDetectionPlan, PoolPlan
from xds_control.planning.plan import outlier_plan

__all__ = ["XDS_CLUSTER", "render_envoyfilters", "outbound_cluster_name", "pool_cluster_patch"]

#: The cluster the patches add to each sidecar: how it reaches xds-control.
XDS_CLUSTER = "xds-control-eds"
API_VERSION = "networking.istio.io/v1alpha3"
MANAGED_BY = {"app.kubernetes.io/managed-by": "xds-control"}

_LB = {LbPolicy.ROUND_ROBIN: "ROUND_ROBIN", LbPolicy.LEAST_REQUEST: "LEAST_REQUEST", LbPolicy.RANDOM: "RANDOM"}


def _dur(seconds: float) -> str:
    """A protobuf JSON Duration (``1.500s``), as Istio and Envoy parse it."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _k8s_name(pool: str) -> str:
    return pool.lower().replace("_", "-").replace(".", "-").strip("-")


def outbound_cluster_name(host: str, port: int, subset: str = "") -> str:
    """Istio's name for a sidecar's outbound cluster: ``outbound|PORT|SUBSET|HOST``."""
    return f"outbound|{port}|{subset}|{host}"


def _outlier(od: OutlierDetectionPlan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "consecutive_5xx": od.consecutive_5xx,
        "interval": _dur(od.interval_s),
        "base_ejection_time": _dur(od.base_ejection_time_s),
        "max_ejection_percent": od.max_ejection_percent,
        "success_rate_minimum_hosts": od.success_rate_minimum_hosts,
        "success_rate_request_volume": od.success_rate_request_volume,
        "success_rate_stdev_factor": od.success_rate_stdev_factor,
        "failure_percentage_minimum_hosts": od.failure_percentage_minimum_hosts,
        "failure_percentage_request_volume": od.failure_percentage_request_volume,
    }
    if od.failure_percentage_threshold is not None:
        out["failure_percentage_threshold"] = od.failure_percentage_threshold
        out["enforcing_failure_percentage"] = 100
    if od.consecutive_gateway_failure is not None:
        out["consecutive_gateway_failure"] = od.consecutive_gateway_failure
        out["enforcing_consecutive_gateway_failure"] = 100
    return out


def pool_cluster_patch(pool: PoolPlan, outlier: OutlierDetectionPlan | None,
                       slow_start_window_s: float | None) -> dict[str, Any]:
    """The value merged into the sidecar's outbound cluster (Envoy ``Cluster`` fields, proto JSON names)."""
    value: dict[str, Any] = {
        "eds_cluster_config": {
            "service_name": pool.name,
            "eds_config": {
                "resource_api_version": "V3",
                "initial_fetch_timeout": "5s",
                "api_config_source": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": True,
                    "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                },
            },
        },
        "lb_policy": _LB[pool.lb_policy],
    }
    if pool.locality_weights is not None:
        value["common_lb_config"] = {"locality_weighted_lb_config": {}}
    if outlier is not None:
        value["outlier_detection"] = _outlier(outlier)
    window = slow_start_window_s or pool.slow_start_window_s
    if window and pool.lb_policy is not LbPolicy.RANDOM:
        slow = {
            "slow_start_window": _dur(window),
            "aggression": {"default_value": pool.slow_start_aggression,
                           "runtime_key": "xds_control.slow_start.aggression"},
            "min_weight_percent": {"value": pool.slow_start_min_weight_percent},
        }
        key = "least_request_lb_config" if pool.lb_policy is LbPolicy.LEAST_REQUEST else "round_robin_lb_config"
        value[key] = {"slow_start_config": slow}
    return value


def xds_cluster(host: str, port: int) -> dict[str, Any]:
    """The cluster added to every sidecar: xds-control's Service, HTTP/2 (gRPC)."""
    return {
        "name": XDS_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {"connection_keepalive": {"interval": "10s", "timeout": "5s"}},
                },
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": host, "port_value": port}}}}]}],
        },
    }


def render_envoyfilters(cfg: Config, namespace: str | None = None,
                        xds_address: tuple[str, int] | None = None) -> list[dict[str, Any]]:
    """The EnvoyFilters for ``cfg``'s ``kubernetes.pools``, in namespace ``namespace`` (default: the
    config's ``kubernetes.namespace``, else ``default``). ``xds_address`` overrides where sidecars reach
    xds-control (default: ``<istio.xds_service>.<ns>.svc.<domain>:<istio.xds_port>``)."""
    k = cfg.kubernetes
    if k is None or not k.pools:
        raise ValueError("kubernetes.pools: nothing to render; list the pools whose Services sidecars should "
                         "take from xds-control")
    app_ns = k.namespace or "default"
    ns = namespace or app_ns
    ist = k.istio
    domain = ist.cluster_domain
    host, port = xds_address or (f"{ist.xds_service}.{ist.xds_namespace or app_ns}.svc.{domain}", ist.xds_port)
    plan = to_traffic_plan(cfg)
    pool_cfg = {p.name: p for s in cfg.services for p in s.pools}
    out: list[dict[str, Any]] = [{
        "apiVersion": API_VERSION,
        "kind": "EnvoyFilter",
        "metadata": {"name": "xds-control-eds-cluster", "namespace": ns, "labels": dict(MANAGED_BY)},
        "spec": {"configPatches": [{
            "applyTo": "CLUSTER",
            "match": {"context": "SIDECAR_OUTBOUND"},
            "patch": {"operation": "ADD", "value": xds_cluster(host, port)},
        }]},
    }]
    for name, kp in k.pools.items():
        pool = plan.pool(name)
        pc = pool_cfg[name]
        assert pool is not None
        outlier = pool.outlier_detection
        slow_start: float | None = None
        if pc.autoscale is not None:
            spec = pc.autoscale.spec
            if outlier is None:
                outlier = outlier_plan(spec.traffic.outlier, max(1, spec.min_replicas))
            slow_start = spec.traffic.envoy_slow_start_window_s
        svc_host = f"{kp.service_name}.{app_ns}.svc.{domain}"
        out.append({
            "apiVersion": API_VERSION,
            "kind": "EnvoyFilter",
            "metadata": {"name": f"xds-control-{_k8s_name(name)}", "namespace": ns,
                         "labels": {**MANAGED_BY, "xds-control/pool": _k8s_name(name)},
                         "annotations": {"xds-control/patches-cluster": outbound_cluster_name(svc_host, kp.port)}},
            "spec": {"configPatches": [{
                "applyTo": "CLUSTER",
                "match": {"context": "SIDECAR_OUTBOUND", "cluster": {"service": svc_host, "portNumber": kp.port}},
                "patch": {"operation": "MERGE", "value": pool_cluster_patch(pool, outlier, slow_start)},
            }]},
        })
    return out
