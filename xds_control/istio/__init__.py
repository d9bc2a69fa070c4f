"""Istio integration: EnvoyFilters that attach Istio sidecars to xds-control (pure rendering)."""

from xds_control.istio.render import XDS_CLUSTER, outbound_cluster_name, render_envoyfilters

__all__ = ["XDS_CLUSTER", "outbound_cluster_name", "render_envoyfilters"]
