"""Prefill-backlog shedding end to end: real Envoy, real emulated replicas, the control plane's pushed route.

With ``traffic.shed_prefill_backlog_s`` set (the comprehensive preset sets it), the control plane has Envoy add
the shed headers to each request of the pool, send ``x-envoy-attempt-count`` and retry a 429 on another
replica; a replica with more prefill queued than the bound answers 429 unless it is the last attempt. Checked:

* the pushed route and cluster carry exactly that (headers, retry on 429 with the previous-hosts predicate,
  a 100 % retry budget);
* a long prompt arriving while another one is in prefill on the replica Envoy picked is served by another
  replica, every time;
* a burst that finds every replica busy is shed and retried, the last attempt is accepted: zero failed
  requests, Envoy's 429 count equals the replicas' shed counters, no retry refused for the budget.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from support.envoy import Envoy
from support.ports import free_port

from xds_control.actuators.local import LocalScaler
from xds_control.config import parse_config
from xds_control.core.traffic import SHED_ATTEMPTS_HEADER, SHED_BACKLOG_HEADER
from xds_control.fleet.replica import REPLICA_HEADER
from xds_control.runtime.app import ControlPlane

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

#: A prompt of 8,000 token ids: 1.44 s of prefill on the default profile (0.18 ms per token), above the bound.
LONG = list(range(8000))
BOUND_S = 0.3


def config(port: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "port": port}],
        "services": [{
            "name": "llm",
            "pools": [{
                "name": "llm",
                "lb_policy": "least_request",
                "autoscale": {
                    "policy": "comprehensive",
                    "overrides": {
                        "min_replicas": 3, "max_replicas": 3,
                        "traffic": {"shed_prefill_backlog_s": BOUND_S, "shed_attempts": 3, "ramp_window_s": 0,
                                    "warmup_s": 0},
                    },
                    "replica": {"load_delay_s": 0.5},
                },
            }],
        }],
        "controller": {"tick_s": 0.5},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }


async def generate(s: aiohttp.ClientSession, port: int) -> tuple[int, str]:
    body = {"model": "m", "prompt": LONG, "max_tokens": 2}
    async with s.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as r:
        await r.read()
        return r.status, r.headers.get(REPLICA_HEADER, "")


def shed_total(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("xds_replica_shed_requests_total"))


async def test_long_prompts_skip_busy_replicas_and_nothing_is_lost() -> None:
    port = free_port()
    scaler = LocalScaler(install_signal_handlers=False)
    cp = ControlPlane(parse_config(config(port)), xds_port=0, metrics_port=None, admin_port=None, scaler=scaler)
    await cp.start()
    envoy = Envoy("shed", cp.ports.xds).start()
    try:
        await asyncio.to_thread(envoy.wait_for, lambda: envoy.listener_port("ingress") == port, 20, "listener")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            h = cp.controller.history
            if h and sum(1 for e in h[-1].endpoints if e.phase == "serving") >= 3:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("3 replicas never served")
        await asyncio.sleep(1.0)  # Envoy has the three endpoints (next push)

        # What the control plane pushed.
        dump = json.loads(envoy.admin("/config_dump?resource=dynamic_route_configs"))
        rc = dump["configs"][0]["route_config"]
        vh = rc["virtual_hosts"][0]
        assert vh["include_request_attempt_count"] is True
        route = vh["routes"][0]["route"]
        rp = route["retry_policy"]
        assert "retriable-status-codes" in rp["retry_on"] and rp["retriable_status_codes"] == [429], rp
        assert rp["num_retries"] == 2
        assert rp["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
        hdrs = {h["header"]["key"]: h["header"]["value"]
                for h in route["weighted_clusters"]["clusters"][0]["request_headers_to_add"]}
        assert hdrs == {SHED_BACKLOG_HEADER: f"{BOUND_S:g}", SHED_ATTEMPTS_HEADER: "3"}
        cdump = json.loads(envoy.admin("/config_dump?resource=dynamic_active_clusters"))
        budget = cdump["configs"][0]["cluster"]["circuit_breakers"]["thresholds"][0]["retry_budget"]
        assert budget["budget_percent"]["value"] == 100

        async with aiohttp.ClientSession() as s:
            # Pairs: a long prompt, then 0.1 s later a second one while the first is in prefill. Whichever
            # replica Envoy picks for the second, it never queues behind the first.
            for _ in range(6):
                first = asyncio.create_task(generate(s, port))
                await asyncio.sleep(0.1)
                second = await generate(s, port)
                one = await first
                assert one[0] == 200 and second[0] == 200, (one, second)
                assert one[1] != second[1], f"both long prompts on {one[1]}"

            # A burst that finds every replica busy: 3 long prompts, then 3 more while all three are in
            # prefill. Each of the later ones is shed on its first two attempts and accepted on its last.
            first3 = [asyncio.create_task(generate(s, port)) for _ in range(3)]
            await asyncio.sleep(0.15)
            later3 = [asyncio.create_task(generate(s, port)) for _ in range(3)]
            results = await asyncio.gather(*first3, *later3)
        assert all(st == 200 for st, _ in results), results

        stats = envoy.stats()
        # Envoy counts the responses it retried under cluster.<name>.retry.*
        shed_by_envoy = int(stats.get("cluster.llm.retry.upstream_rq_429", "0"))
        assert shed_by_envoy >= 6, {k: v for k, v in stats.items() if "upstream_rq" in k}
        assert int(stats.get("cluster.llm.upstream_rq_retry", "0")) == shed_by_envoy
        assert int(stats.get("cluster.llm.upstream_rq_retry_overflow", "0")) == 0
        # What Envoy saw as 429 is what the replicas shed.
        shed_by_replicas = 0.0
        async with aiohttp.ClientSession() as s:
            for r in scaler.list():
                async with s.get(f"http://{r.address}:{r.port}/metrics") as resp:
                    shed_by_replicas += shed_total(await resp.text())
        assert shed_by_replicas == shed_by_envoy
    finally:
        envoy.stop()
        await cp.stop(grace=0)
        await scaler.close()
