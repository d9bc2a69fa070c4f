"""xDS resource type URLs, in the make-before-break order Envoy's docs prescribe."""

from __future__ import annotations

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

#: CDS -> EDS -> LDS -> RDS: a cluster (and its endpoints) exists before anything routes to it.
ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
#: Types Envoy subscribes to with a wildcard (the full state is always sent).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
SHORT = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}
BY_SHORT = {v: k for k, v in SHORT.items()}
