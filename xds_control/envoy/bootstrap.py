"""Envoy bootstrap rendering (pure): an Envoy 1.40 that runs this connects to xds-control over ADS."""

from __future__ import annotations

from typing import Any

import yaml


def render_bootstrap(
    node_id: str,
    xds_host: str,
    xds_port: int,
    *,
    delta: bool = False,
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    cluster: str = "xds-control",
    tls: dict[str, str] | None = None,
    reconnect_base_s: float = 0.25,
    reconnect_max_s: float = 2.0,
) -> dict[str, Any]:
    """The bootstrap as a dict. ``admin_port`` 0 lets Envoy pick (read it with --admin-address-path).

    ``reconnect_base_s``/``reconnect_max_s``: the ADS stream's reconnect back-off (jittered, doubling).
    Envoy's own default (0.5 s doubling up to 30 s) made a proxy take up to 6 s to come back after a
    control-plane restart in the fault suite; 0.25-2 s keeps reconvergence within the 5 s target.

    ``tls``: connect to a TLS xDS port (``admin.xds_tls``): ``{"ca": FILE}`` verifies the server against
    that CA; add ``"cert"`` and ``"key"`` for mutual TLS and ``"sni"`` for the server name.
    """
    api_type = "DELTA_GRPC" if delta else "GRPC"
    boot: dict[str, Any] = {
        "node": {"id": node_id, "cluster": cluster},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{
                    "envoy_grpc": {
                        "cluster_name": "xds_control",
                        "retry_policy": {"retry_back_off": {"base_interval": _dur(reconnect_base_s),
                                                            "max_interval": _dur(reconnect_max_s)}},
                    },
                }],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds_control",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    # PING every 10 s, dead after 5 s unanswered. Also finds a half-open
                                    # stream (the control plane's side of the connection gone, this side
                                    # still open: a middlebox or relay dropped it during a partition):
                                    # after the network heals, the next PING meets a reset, so the proxy
                                    # reconnects within one interval (30 s made that up to 35 s).
                                    "connection_keepalive": {"interval": "10s", "timeout": "5s"},
                                }
                            },
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds_control",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": xds_host, "port_value": xds_port}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
        "admin": {"address": {"socket_address": {"address": admin_address, "port_value": admin_port}}},
    }
    if tls:
        boot["static_resources"]["clusters"][0]["transport_socket"] = _tls_socket(tls)
    return boot


def _tls_socket(tls: dict[str, str]) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "alpn_protocols": ["h2"],  # gRPC servers expect HTTP/2 negotiated by ALPN
        "validation_context": {"trusted_ca": {"filename": tls["ca"]}},
    }
    if tls.get("cert"):
        ctx["tls_certificates"] = [{"certificate_chain": {"filename": tls["cert"]},
                                    "private_key": {"filename": tls["key"]}}]
    typed: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": ctx,
    }
    if tls.get("sni"):
        typed["sni"] = tls["sni"]
    return {"name": "envoy.transport_sockets.tls", "typed_config": typed}


def _dur(seconds: float) -> str:
    return f"{seconds:.3f}s"


class _QuotedDumper(yaml.SafeDumper):
    """Quotes every string value: Envoy's YAML parser reads a bare ``n``, ``y``, ``on``... as a boolean,
    so a node id like ``n`` would otherwise fail to load."""


def _quoted_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')


_QuotedDumper.add_representer(str, _quoted_str)


def render_bootstrap_yaml(*args: Any, **kwargs: Any) -> str:
    return yaml.dump(render_bootstrap(*args, **kwargs), Dumper=_QuotedDumper, sort_keys=False)
