"""Plan -> versioned, consistency-checked Envoy resources (pure)."""

from xds_control.snapshot.snapshot import Resource, Snapshot, build_snapshot, check_consistent, make_resource

__all__ = ["Resource", "Snapshot", "build_snapshot", "check_consistent", "make_resource"]
