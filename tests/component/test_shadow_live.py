"""Shadow policies on a running control plane: real controller, real local replicas, admin API over gRPC,
``/metrics`` over HTTP and the CLI as a subprocess.

The real policy is pinned to one replica; the shadow (a policy file asking for 3) decides every tick. Its
target must show in GetPlan, ``xds-control admin plan``, on ``/metrics`` and as one ``shadow_decision`` event,
while the pool keeps exactly the one replica the real policy wants.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from support.admin import Served, cli, md, pb, token_config
from support.ports import free_port

from xds_control.config import parse_config
from xds_control.runtime.app import ControlPlane


class ServedWithMetrics(Served):
    """:class:`Served` with the metrics HTTP endpoint on a free port."""

    async def _start(self, cfg: dict[str, Any], kw: dict[str, Any]) -> ControlPlane:
        cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=0, admin_port=0, **kw)
        await cp.start()
        return cp


def wait_for(pred, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_a_shadow_policy_is_visible_everywhere_and_never_acts(tmp_path: Path) -> None:
    shadow = tmp_path / "three.yaml"
    shadow.write_text("policy: threshold\nmin_replicas: 3\nmax_replicas: 3\n")
    cfg = {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": free_port()}],
        "services": [{"name": "llm", "tenant": "team-a", "pools": [{
            "name": "gpu",
            "autoscale": {
                "policy": "threshold", "initial_replicas": 1, "shadow": [str(shadow)],
                "overrides": {"min_replicas": 1, "max_replicas": 1,
                              "traffic": {"warmup_s": 0, "ramp_window_s": 0}},
                "replica": {"profile": "tiny", "load_delay_s": 0},
            },
        }]}],
        "controller": {"tick_s": 0.1},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
        "admin": {"port": 0, "tokens": token_config()},
    }
    name = str(shadow)
    with ServedWithMetrics(cfg) as sv:
        s, viewer = sv.stub, md("a-viewer")

        def shadows() -> Any:
            pools = s.GetPlan(pb.GetPlanRequest(service="llm"), metadata=viewer).pools
            return pools[0].shadows if pools and pools[0].shadows else None

        (first,) = wait_for(shadows, what="a shadow decision in GetPlan")
        assert (first.policy, first.target, first.current) == (name, 3, 1)
        assert first.explanation and first.mode
        # what it would have cost grows with time: 3 replicas where the pool runs 1
        later = wait_for(lambda: (sh := shadows()) and sh[0].would_replica_seconds >= first.would_replica_seconds + 1
                         and sh[0], what="the shadow's replica-seconds growing")
        assert later.actual_replica_seconds > 0
        assert later.would_replica_seconds >= 2.5 * later.actual_replica_seconds

        # /metrics: the shadow's target and replica-seconds, labelled by pool and policy
        labels = (("policy", name), ("pool", "gpu"))
        m = wait_for(lambda: (x := scrape(sv.cp.ports.metrics)).get(("xds_control_shadow_replica_seconds_total",
                                                                      labels), 0) > 0 and x,
                     what="the shadow metrics")
        assert m[("xds_control_shadow_target_replicas", labels)] == 3

        # the event stream: one shadow_decision (its target differs from the real one; not repeated every tick)
        ticks = sv.run(lambda: len(sv.cp.controller.history))
        wait_for(lambda: sv.run(lambda: len(sv.cp.controller.history)) >= ticks + 5, what="five more ticks")
        evs = list(s.WatchEvents(pb.WatchEventsRequest(kinds=["shadow_decision"]), metadata=viewer))
        assert len(evs) == 1, [e.message for e in evs]
        (ev,) = evs
        assert ev.service == "llm" and ev.pool == "gpu" and "would scale gpu to 3" in ev.message
        detail = json_format.MessageToDict(ev.detail)
        assert (detail["policy"], detail["target"], detail["real_target"]) == (name, 3, 1)

        # the CLI shows it
        out = cli("--address", sv.address, "plan", token="a-viewer")
        assert out.returncode == 0, out.stderr
        assert "shadow policies" in out.stdout and "three.yaml" in out.stdout, out.stdout

        # the real pool followed the main policy only: one replica, no scale-up beyond the initial one
        assert len(sv.cp.controller.scaler.list()) == 1
        recs = sv.run(lambda: list(sv.cp.controller.history))
        assert recs and all(r.target == 1 and r.current == 1 for r in recs)
        ups = list(s.WatchEvents(pb.WatchEventsRequest(kinds=["scale_up"]), metadata=viewer))
        assert len(ups) == 1
