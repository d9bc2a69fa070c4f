"""The emulated replica as a real process on a real socket.

Aspects: readiness after the model-load delay; latency and TTFT as the cost model
predicts (alone and batched); bounded queue -> 503; prefill-backlog shedding -> 429
(never the last attempt; the prefix cache's saving for the request is subtracted from the backlog);
vLLM/DCGM metric names and their movement under load; --slow-factor; --fail-rate; bad flags; no Nagle stalls.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from livehelpers import ROOT, child_env, http_status

from xds_control.core.traffic import (
    AFFINITY_ATTEMPTS_HEADER,
    AFFINITY_STALL_HEADER,
    SHED_ATTEMPTS_HEADER,
    SHED_BACKLOG_HEADER,
    SHED_FIRST_BACKLOG_HEADER,
)
from xds_control.fleet import costmodel
from xds_control.fleet.loadgen import prompt_for
from xds_control.fleet.replica import REPLICA_HEADER
from xds_control.fleet.replica.server import ENVOY_ATTEMPT_HEADER, SHED_HEADER

TINY = costmodel.get_profile("tiny")


async def complete(session: aiohttp.ClientSession, url: str, n_in: int, n_out: int, **extra) -> tuple[int, float, dict]:
    t = time.monotonic()
    body_in = {"prompt": "x", "xds_input_tokens": n_in, "max_tokens": n_out, **extra}
    async with session.post(url + "/v1/completions", json=body_in) as r:
        body = await r.json()
        return r.status, time.monotonic() - t, body


def metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as r:
        assert r.status == 200
        return metrics(await r.text())


def test_health_turns_ready_only_after_load_delay(start_replica) -> None:
    r = start_replica("--load-delay", "1.0", ready=False)
    assert http_status(r.url + "/health") == 503
    waited = r.wait_ready(timeout=10)
    # Requirement (README, the replicas: "a model-load delay before /health is ready"): not ready before it.
    assert waited >= 0.9, waited
    assert http_status(r.url + "/health") == 200


async def test_requests_before_ready_get_503(start_replica) -> None:
    r = start_replica("--load-delay", "5", ready=False)
    async with aiohttp.ClientSession() as s:
        status, _, body = await complete(s, r.url, 10, 2)
    assert status == 503 and "loading" in body["error"]["message"]


async def test_lone_request_latency_matches_cost_model(start_replica) -> None:
    r = start_replica()
    n_in, n_out = 200, 30
    ttft_pred, total_pred = costmodel.isolated_latency_s(TINY, n_in, n_out)
    async with aiohttp.ClientSession() as s:
        status, latency, body = await complete(s, r.url, n_in, n_out)
        assert status == 200
        assert body["usage"] == {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
        # Requirement (README: batching "driven by the shared cost model"): a request takes at least the
        # model's time. How much longer a loaded machine makes it is not asserted.
        assert latency >= 0.95 * total_pred, (latency, total_pred)
        # Streaming: the first chunk arrives after the prefill.
        t = time.monotonic()
        first = None
        chunks = 0
        req = {"prompt": "x", "xds_input_tokens": n_in, "max_tokens": n_out, "stream": True}
        async with s.post(r.url + "/v1/completions", json=req) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            async for line in resp.content:
                if line.startswith(b"data: ") and first is None:
                    first = time.monotonic() - t
                chunks += line.startswith(b"data: ")
        # Requirement (as above): the first token comes after the model's prefill time, not before.
        assert first is not None and first >= 0.95 * ttft_pred, (first, ttft_pred)
        assert chunks >= n_out // 2  # roughly one chunk per step, plus [DONE]


async def test_concurrent_requests_share_a_batch(start_replica) -> None:
    r = start_replica()
    n_in, n_out, k = 100, 40, 4
    # All k admitted in one step: prefill of k prompts, then n_out-1 decode steps at batch k.
    pred = costmodel.step_time_s(TINY, 0, k * n_in) + (n_out - 1) * costmodel.decode_step_time_s(TINY, k)
    sequential = k * costmodel.isolated_latency_s(TINY, n_in, n_out)[1]
    async with aiohttp.ClientSession() as s:
        t = time.monotonic()
        res = await asyncio.gather(*(complete(s, r.url, n_in, n_out) for _ in range(k)))
        wall = time.monotonic() - t
    assert [x[0] for x in res] == [200] * k
    # Requirement (README: "continuous batching"): k concurrent requests take the batched step times of the
    # cost model (at least those), and together much less than k requests one after another.
    assert wall >= 0.9 * pred, (wall, pred)
    assert wall < 0.6 * sequential, (wall, sequential)


async def test_full_queue_answers_503(start_replica) -> None:
    r = start_replica("--max-num-seqs", "1", "--max-queue", "2")
    async with aiohttp.ClientSession() as s:
        res = await asyncio.gather(*(complete(s, r.url, 5, 40) for _ in range(8)))
        statuses = sorted(x[0] for x in res)
        m = await scrape(s, r.url)
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 5 and statuses.count(200) >= 2, statuses
    assert m['xds_replica_rejected_total'] == statuses.count(503)


async def try_request(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], *, chat: bool = False, prompt: str = "x",
    n_in: int = 10,
) -> tuple[int, dict[str, str], dict | None]:
    """A streaming request (small by default): (status, response headers, error body). A 200 means it was queued
    (the headers come before any token); the client then hangs up, so the replica drops it."""
    body: dict = {"xds_input_tokens": n_in, "max_tokens": 50, "stream": True}
    if chat:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = prompt
    async with session.post(url + ("/v1/chat/completions" if chat else "/v1/completions"), json=body,
                            headers=headers) as resp:  # fmt: skip
        hdrs = {k.lower(): v for k, v in resp.headers.items()}
        if resp.status == 200:
            resp.close()
            return 200, hdrs, None
        return resp.status, hdrs, await resp.json()


async def test_prefill_backlog_sheds_429_but_never_the_last_attempt(start_replica) -> None:
    r = start_replica()
    shed = {SHED_BACKLOG_HEADER: "0.1", SHED_ATTEMPTS_HEADER: "3"}
    first = {SHED_FIRST_BACKLOG_HEADER: "0.1", SHED_ATTEMPTS_HEADER: "3"}
    stall = {SHED_ATTEMPTS_HEADER: "3", ENVOY_ATTEMPT_HEADER: "1"}
    async with aiohttp.ClientSession() as s:
        assert (await scrape(s, r.url))["xds_replica_shed_requests_total"] == 0
        # A 5,000-token prompt: 5 s of prefill on the tiny profile, far above the 0.1 s bound for the whole test.
        long = asyncio.create_task(complete(s, r.url, 5000, 1))
        try:
            deadline = time.monotonic() + 15
            while (await scrape(s, r.url))["vllm:num_requests_running"] < 1:
                assert time.monotonic() < deadline, "the long prompt was never admitted"
                await asyncio.sleep(0.02)
            statuses = {}
            for label, headers, chat in (
                ("first attempt", {**shed, ENVOY_ATTEMPT_HEADER: "1"}, False),
                ("second attempt, chat", {**shed, ENVOY_ATTEMPT_HEADER: "2"}, True),
                ("no attempt count (= first)", shed, False),
                ("last attempt", {**shed, ENVOY_ATTEMPT_HEADER: "3"}, False),
                ("last attempt, chat", {**shed, ENVOY_ATTEMPT_HEADER: "3"}, True),
                ("no shed headers", {}, False),
                ("bound without attempts", {SHED_BACKLOG_HEADER: "0.1"}, False),
                ("unparsable bound", {**shed, SHED_BACKLOG_HEADER: "soon"}, False),
                ("negative bound", {**shed, SHED_BACKLOG_HEADER: "-1"}, False),
                ("bound above the backlog", {**shed, SHED_BACKLOG_HEADER: "1000"}, False),
                # prefix affinity (spill: least_request): the first attempt's own bound
                ("affinity bound, first attempt", {**first, ENVOY_ATTEMPT_HEADER: "1"}, False),
                ("affinity bound only, retry", {**first, ENVOY_ATTEMPT_HEADER: "2"}, False),
                ("affinity bound above, first attempt", {**shed, SHED_FIRST_BACKLOG_HEADER: "1000"}, False),
                ("affinity bound above, retry", {**shed, SHED_FIRST_BACKLOG_HEADER: "1000",
                                                 ENVOY_ATTEMPT_HEADER: "2"}, False),
                ("2 affinity attempts, second", {**first, AFFINITY_ATTEMPTS_HEADER: "2", ENVOY_ATTEMPT_HEADER: "2"},
                 False),
                # the decode-stall budget of an affinity attempt (one request is running)
                ("stall over budget", {**stall, AFFINITY_STALL_HEADER: "0.000001"}, False),
                ("stall within budget", {**stall, AFFINITY_STALL_HEADER: "1000000"}, False),
                ("stall budget, retry", {**stall, AFFINITY_STALL_HEADER: "0.000001", ENVOY_ATTEMPT_HEADER: "2"}, False),
                ("stall budget, last attempt", {AFFINITY_STALL_HEADER: "0.000001", SHED_ATTEMPTS_HEADER: "1"}, False),
            ):  # fmt: skip
                status, hdrs, body = await try_request(s, r.url, headers, chat=chat)
                statuses[label] = status
                if status == 429:
                    # Requirement (shedding contract): the 429 says why, in the usual error format.
                    assert hdrs[SHED_HEADER] == "prefill-backlog" and REPLICA_HEADER in hdrs, hdrs
                    assert body is not None and body["error"]["code"] == 429, body
                    if label.startswith("stall"):
                        m = re.fullmatch(r"prefill (\d+\.\d+) s x 1 running > stall budget 0\.00 s: retry on another "
                                         r"replica", body["error"]["message"])
                        assert m is not None and float(m.group(1)) > 0, body
                        continue
                    # (The prompts here have no full block, so the prefix cache saves them nothing.)
                    m = re.fullmatch(r"prefill backlog (\d+\.\d+) s - cached 0\.00 s > bound 0\.10 s: "
                                     r"retry on another replica", body["error"]["message"])
                    assert m is not None and float(m.group(1)) > 0.1, body
            m_after = await scrape(s, r.url)
        finally:
            long.cancel()
            await asyncio.gather(long, return_exceptions=True)
    # Requirement (shedding contract): above the bound, every attempt but the last is shed at once; the last
    # attempt, and requests without a usable bound or attempt total, are queued as before.
    assert statuses == {
        "first attempt": 429, "second attempt, chat": 429, "no attempt count (= first)": 429,
        "last attempt": 200, "last attempt, chat": 200, "no shed headers": 200, "bound without attempts": 200,
        "unparsable bound": 200, "negative bound": 200, "bound above the backlog": 200,
        "affinity bound, first attempt": 429, "affinity bound only, retry": 200,
        "affinity bound above, first attempt": 200, "affinity bound above, retry": 429,
        "2 affinity attempts, second": 429,
        "stall over budget": 429, "stall within budget": 200, "stall budget, retry": 200,
        "stall budget, last attempt": 200,
    }, statuses  # fmt: skip
    # Every 429 is counted on /metrics, and none of them is a 503-style rejection.
    assert m_after["xds_replica_shed_requests_total"] == 7
    assert m_after["xds_replica_rejected_total"] == 0


async def wait_running(session: aiohttp.ClientSession, url: str, n: int = 1, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (await scrape(session, url))["vllm:num_requests_running"] < n:
        assert time.monotonic() < deadline, "the request was never admitted"
        await asyncio.sleep(0.02)


async def test_shedding_subtracts_the_prefix_cache_saving(start_replica) -> None:
    """A request whose long prefix is cached on the busy replica is kept; a cold one of the same length is shed."""
    r = start_replica()
    bt = TINY.kv_block_tokens
    pf = TINY.prefill_s_per_token
    warm_ids = tuple(range(1000, 1008))
    n_in = 8 * bt + 200  # 8 full blocks and a partial one: all 8 can be cached
    long_in, bound = 5000, 2.0
    # The backlog is at most the long prompt's 5 s of prefill (tiny profile: 1 ms per token) and falls from there.
    # Cached request: 8 blocks x 512 tokens saved = 4.1 s, so backlog - saving <= 0.9 s, under the 2 s bound
    # whatever the timing. Cold request: shed while more than 2 s of the prefill is left (its first 3 s).
    # Partly cached (1 block, 0.51 s saved): shed while more than 2.51 s is left (the first 2.49 s).
    assert long_in * pf - 8 * bt * pf + 1.0 < bound < long_in * pf - bt * pf - 2.0
    shed = {SHED_BACKLOG_HEADER: str(bound), SHED_ATTEMPTS_HEADER: "3", ENVOY_ATTEMPT_HEADER: "1"}
    cached_prompt = prompt_for((*warm_ids, 1100), n_in)
    partly_prompt = prompt_for((warm_ids[0], *range(1200, 1208)), n_in)
    cold_prompt = prompt_for(tuple(range(1300, 1309)), n_in)
    assert len(cached_prompt) == len(partly_prompt) == len(cold_prompt) == 4 * n_in
    async with aiohttp.ClientSession() as s:
        # Warm the cache: the shared 8-block prefix, prefilled and finished (its blocks stay cached, free).
        status, _, _ = await complete(s, r.url, 8 * bt, 1, prompt=prompt_for(warm_ids, 8 * bt))
        assert status == 200
        # A different long prompt (no full text block, so nothing cached) creates the backlog.
        long = asyncio.create_task(complete(s, r.url, long_in, 1))
        try:
            await wait_running(s, r.url)
            t_admitted = time.monotonic()
            results = {}
            for label, prompt in (("partly cached", partly_prompt), ("cold", cold_prompt),
                                  ("cached", cached_prompt)):  # fmt: skip
                results[label] = await try_request(s, r.url, shed, prompt=prompt, n_in=n_in)
            m_after = await scrape(s, r.url)
            elapsed = time.monotonic() - t_admitted
        finally:
            long.cancel()
            await asyncio.gather(long, return_exceptions=True)
    statuses = {k: v[0] for k, v in results.items()}
    # Requirement (shedding, as the simulator decides): the backlog less what this replica's prefix cache saves
    # the request is compared with the bound: the cached request is queued here, the cold one is shed. (The
    # shed ones need less than 2.5 s from admission to their check; `elapsed` says how long it took.)
    assert statuses == {"partly cached": 429, "cold": 429, "cached": 200}, (statuses, elapsed)
    msgs = {k: v[2]["error"]["message"] for k, v in results.items() if v[2] is not None}
    m = re.fullmatch(r"prefill backlog (\d+\.\d+) s - cached 0\.00 s > bound 2\.00 s: retry on another replica",
                     msgs["cold"])
    assert m is not None and float(m.group(1)) > bound, msgs
    # The 429 names the cache's saving: 1 block of 512 tokens at 1 ms per token.
    m = re.fullmatch(r"prefill backlog (\d+\.\d+) s - cached 0\.51 s > bound 2\.00 s: retry on another replica",
                     msgs["partly cached"])
    assert m is not None and float(m.group(1)) - bt * pf > bound, msgs
    assert m_after["xds_replica_shed_requests_total"] == 2 and m_after["xds_replica_rejected_total"] == 0
    # The lookups counted nothing: before the long prefill ends (5 s) only the warm-up and the long prompt
    # were admitted, and neither hit the cache.
    if elapsed < long_in * pf:
        assert m_after["vllm:prefix_cache_queries_total"] == 8 * bt + long_in, m_after
        assert m_after["vllm:prefix_cache_hits_total"] == 0, m_after


async def test_metrics_names_present_and_move_under_load(start_replica) -> None:
    r = start_replica()
    async with aiohttp.ClientSession() as s:
        before = await scrape(s, r.url)
        for name in (
            "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
            "vllm:time_to_first_token_seconds_count", "vllm:time_to_first_token_seconds_bucket",
            "vllm:e2e_request_latency_seconds_sum", "vllm:request_success_total",
            "DCGM_FI_DEV_GPU_UTIL", "process_cpu_seconds_total",
        ):  # fmt: skip
            assert name in before, name
        assert before["vllm:num_requests_running"] == 0 and before["DCGM_FI_DEV_GPU_UTIL"] == 0
        # 12 long requests on a batch of 8: some run, some wait.
        load = [asyncio.create_task(complete(s, r.url, 50, 40)) for _ in range(12)]
        await asyncio.sleep(0.6)
        during = await scrape(s, r.url)
        res = await asyncio.gather(*load)
        after = await scrape(s, r.url)
    assert all(x[0] == 200 for x in res)
    assert during["vllm:num_requests_running"] == TINY.max_batch
    assert during["vllm:num_requests_waiting"] == 12 - TINY.max_batch
    assert 0 < during["vllm:kv_cache_usage_perc"] <= 1
    assert 30 <= during["DCGM_FI_DEV_GPU_UTIL"] <= 100
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == 12
    assert after["vllm:e2e_request_latency_seconds_count"] == 12
    assert after["vllm:time_to_first_token_seconds_sum"] > 0
    assert after["vllm:num_requests_running"] == 0 and after["vllm:kv_cache_usage_perc"] == 0
    assert after["process_cpu_seconds_total"] > 0


async def test_slow_factor_multiplies_latency(start_replica) -> None:
    fast, slow = start_replica(), start_replica("--slow-factor", "3")
    async with aiohttp.ClientSession() as s:
        (sf, lf, _), (ss, ls, _) = await asyncio.gather(complete(s, fast.url, 100, 20), complete(s, slow.url, 100, 20))
    assert sf == ss == 200
    pred = costmodel.isolated_latency_s(TINY, 100, 20)[1]
    # Requirement (README config: autoscale.replica.slow_factor): the slow replica's latency is the model's
    # times the factor (at least), and about that many times the normal replica's, side by side.
    assert ls >= 2.5 * pred, (ls, pred)
    assert ls > 2.4 * lf, (ls, lf)


async def test_fail_rate_gives_500s(start_replica) -> None:
    r = start_replica("--fail-rate", "0.5", "--seed", "7")
    async with aiohttp.ClientSession() as s:
        res = [await complete(s, r.url, 1, 1) for _ in range(40)]
    n500 = sum(x[0] == 500 for x in res)
    assert {x[0] for x in res} <= {200, 500}
    assert 8 <= n500 <= 32, n500


async def test_chat_completions_and_replica_header(start_replica) -> None:
    r = start_replica("--name", "rep-a")
    async with aiohttp.ClientSession() as s:
        req = {"messages": [{"role": "user", "content": "hello " * 40}], "max_tokens": 3}
        async with s.post(r.url + "/v1/chat/completions", json=req) as resp:
            body = await resp.json()
            assert resp.status == 200 and resp.headers[REPLICA_HEADER] == "rep-a"
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 3
        assert body["usage"]["prompt_tokens"] >= 60  # 240 characters / 4
        async with s.post(r.url + "/v1/completions", data=b"{not json") as resp:
            assert resp.status == 400
        async with s.post(r.url + "/v1/completions", json={"prompt": "x", "max_tokens": 0}) as resp:
            assert resp.status == 400


def test_bad_flags_exit_2_naming_option_and_value() -> None:
    for args, needle in ((["--slow-factor", "abc"], "--slow-factor"), (["--fail-rate", "1.5"], "1.5"),
                         (["--profile", "nope"], "nope")):  # fmt: skip
        p = subprocess.run([sys.executable, "-m", "xds_control.fleet.replica", *args], capture_output=True, text=True,
                           env=child_env(), cwd=ROOT, timeout=20)  # fmt: skip
        assert p.returncode == 2, p
        assert needle in p.stderr and args[0] in p.stderr, p.stderr


async def test_client_disconnect_aborts_the_request(start_replica) -> None:
    r = start_replica()
    async with aiohttp.ClientSession() as s:
        t = asyncio.create_task(complete(s, r.url, 10, 2000))
        await asyncio.sleep(0.3)
        assert (await scrape(s, r.url))["vllm:num_requests_running"] == 1
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
    async with aiohttp.ClientSession() as s:
        await asyncio.sleep(0.2)
        m = await scrape(s, r.url)
    assert m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0
    assert m["vllm:request_success_total"] == 0


def test_taken_port_exits_1_with_message(start_replica) -> None:
    r = start_replica()
    p = subprocess.run([sys.executable, "-m", "xds_control.fleet.replica", "--port", str(r.port)], capture_output=True,
                       text=True, env=child_env(), cwd=ROOT, timeout=20)  # fmt: skip
    assert p.returncode == 1 and f"cannot listen on 127.0.0.1:{r.port}" in p.stderr, p.stderr
