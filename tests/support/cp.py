"""An in-process control plane on free loopback ports, and small plan builders."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from xds_control.config import parse_config
from xds_control.runtime.app import ControlPlane


def config_dict(pools: dict[str, list[int]] | None = None, weights: dict[str, int] | None = None,
                listener_port: int = 10000, **service: Any) -> dict[str, Any]:
    """A one-listener, one-service config; ``pools`` maps pool name -> endpoint ports."""
    pools = pools or {"p1": [18101, 18102], "p2": [18103]}
    weights = weights or {}
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": listener_port}],
        "services": [{
            "name": "llm",
            "pools": [
                {"name": n, "weight": weights.get(n, 1),
                 "endpoints": [{"address": "127.0.0.1", "port": p, "zone": "zone-a"} for p in ports]}
                for n, ports in pools.items()
            ],
            **service,
        }],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
    }


@contextlib.asynccontextmanager
async def running(cfg: dict[str, Any], **kw: Any) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=None, **kw)
    await cp.start()
    try:
        yield cp
    finally:
        await cp.stop(grace=0)


def target(cp: ControlPlane) -> str:
    return f"127.0.0.1:{cp.ports.xds}"
