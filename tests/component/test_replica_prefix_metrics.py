"""The emulated replica process exports vLLM's prefix-cache counters and serves cached prompts faster."""

from __future__ import annotations

import time

import aiohttp
from test_replica import scrape

from xds_control.fleet.loadgen import prompt_for

B = 512


async def test_prefix_cache_counters_and_faster_cached_prompt(start_replica) -> None:  # type: ignore[no-untyped-def]
    r = start_replica("--profile", "tiny")
    prompt = prompt_for((1, 2, 3), 3 * B)
    async with aiohttp.ClientSession() as s:
        before = await scrape(s, r.url)
        assert before["vllm:prefix_cache_queries_total"] == 0
        assert before["vllm:prefix_cache_hits_total"] == 0
        took = []
        for _ in range(2):
            t = time.monotonic()
            async with s.post(r.url + "/v1/completions",
                              json={"prompt": prompt, "xds_input_tokens": 3 * B, "max_tokens": 1}) as resp:
                assert resp.status == 200
                await resp.read()
            took.append(time.monotonic() - t)
        # Chat with the same text in one message: the same blocks, so a hit too.
        async with s.post(r.url + "/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": prompt}], "xds_input_tokens": 3 * B,
                                "max_tokens": 1}) as resp:
            assert resp.status == 200
        after = await scrape(s, r.url)
    assert after["vllm:prefix_cache_queries_total"] == 3 * 3 * B
    assert after["vllm:prefix_cache_hits_total"] == 2 * (3 * B - 1)
    # The first request computed 1,536 prompt tokens (1.5 s on the tiny profile), the second one token.
    assert took[0] > 1.3 and took[1] < 0.5, took
