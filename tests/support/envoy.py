"""A real Envoy for tests: the package's EnvoyProcess under its short test name, and a reader of its /clusters."""

from xds_control.envoy.process import EnvoyProcess as Envoy

__all__ = ["Envoy", "cluster_hosts"]


def cluster_hosts(clusters_text: str, cluster: str) -> dict[str, dict[str, str]]:
    """Envoy's ``/clusters`` text -> ``{"ip:port": {"health_flags": ..., "rq_success": ..., ...}}`` for ``cluster``."""
    out: dict[str, dict[str, str]] = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster and ":" in parts[1]:
            out.setdefault(parts[1], {})[parts[2]] = parts[3]
    return out
