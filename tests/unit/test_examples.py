"""Every file in examples/ loads with the real config loader and builds the snapshot it would serve.

The directory is listed at collection time, so a new example is covered without touching this file.
For an autoscaled pool, the policy spec it resolves to (preset + overrides) is checked too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2

from xds_control.config import load_config, to_traffic_plan
from xds_control.config.schema import AutoscaleConfig
from xds_control.policies import POLICIES
from xds_control.snapshot import build_snapshot
from xds_control.snapshot import types as T

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(p for p in EXAMPLES.iterdir() if p.is_file())


def test_there_are_examples() -> None:
    assert {"minimal.yaml", "autoscale.yaml"} <= {p.name for p in FILES}


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _check_autoscale(where: str, auto: AutoscaleConfig) -> None:
    spec = auto.spec
    assert spec.policy in POLICIES, where
    if auto.policy in POLICIES:  # a preset name (else a policy file, which names its own policy)
        assert spec.policy == auto.policy, where
    for key, value in _leaves(auto.overrides):
        assert _get(spec, key) == value, f"{where}: override {key}={value!r} not in the resolved spec"
        assert auto.resolved.origin(key) == "override", f"{where}: {key}"
    assert spec.min_replicas <= spec.max_replicas, where
    if auto.initial_replicas is not None:
        assert spec.min_replicas <= auto.initial_replicas <= spec.max_replicas, where


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_example_loads_and_builds_the_snapshot_it_would_serve(path: Path) -> None:
    cfg = load_config(path)
    snap = build_snapshot(to_traffic_plan(cfg), 1)  # as serve/validate build the first version

    pools = [p for s in cfg.services for p in s.pools]
    assert set(snap.of(T.LISTENER)) == {lst.name for lst in cfg.listeners}
    assert set(snap.of(T.CLUSTER)) == {p.name for p in pools}
    assert set(snap.of(T.ENDPOINT)) == {p.name for p in pools}
    assert len(snap.of(T.ROUTE)) == len(cfg.listeners)
    for pool in pools:
        cla = endpoint_pb2.ClusterLoadAssignment.FromString(snap.of(T.ENDPOINT)[pool.name].body)
        served = {(lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value)
                  for group in cla.endpoints for lb in group.lb_endpoints}
        assert served == {(e.address, e.port) for e in pool.endpoints}, pool.name
        if pool.autoscale is not None:
            assert not served  # replicas join when the controller starts them
            _check_autoscale(f"{path.name}: pool {pool.name}", pool.autoscale)
