"""Open-loop load generator for OpenAI-compatible endpoints (an emulated replica, Envoy, or a real vLLM).

Open loop: request *i* is sent at ``start + trace[i].timestamp_s`` whatever the
responses are doing — slow or failing responses never delay later arrivals (the
dispatcher only sleeps until the next arrival and spawns a task per request; the
connection pool is unbounded by default). ``send_lag_s`` per request records how
late the dispatcher actually sent it, so a test can prove it.

Each request is ``POST {target}/v1/completions`` (or ``/v1/chat/completions``
with ``chat=True``) with ``max_tokens`` = the trace's output tokens and the
extension field ``xds_input_tokens`` = the trace's input tokens, which the
emulated replica uses as the prompt length. A trace row with ``hash_ids`` (512-token prompt blocks,
chained on the prefix) is sent as real text: each block id becomes the same 2,048 characters
(512 four-character "tokens" drawn from a generator seeded by the id, :func:`block_text`) every
time, the last block cut to the row's token count, so equal blocks are equal text and Envoy and the
replica see real shared prefixes. Rows without ids send a one-character prompt. With ``stream=True`` (the default)
the response is read as server-sent events and the time to the first data
chunk is the TTFT.

:func:`run_load` returns a :class:`LoadResult` (per-request records plus a
:class:`Summary` value); ``xds-control loadgen`` prints the summary, or JSON.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from xds_control.fleet.trace import BLOCK_TOKENS, TraceRequest, as_requests

__all__ = ["RequestRecord", "Summary", "LoadResult", "run_load", "summarize", "endpoint_url", "percentile",
           "block_text", "prompt_for"]

#: Characters per "token" of generated prompt text (the replica's length estimate).
CHARS_PER_TOKEN = 4
_VOCAB = tuple(a + b + c for a in "bdfgklmnprstvz" for b in "aeiou" for c in "bdgklmnprstxz")


@functools.lru_cache(maxsize=8192)
def block_text(block_id: int, block_tokens: int = BLOCK_TOKENS) -> str:
    """The text of one prompt block: ``block_tokens`` three-letter words, each followed by a space,
    drawn from a generator seeded by ``block_id`` (same id, same text, in every process)."""
    rng = random.Random(block_id)
    return " ".join(rng.choices(_VOCAB, k=block_tokens)) + " "


def prompt_for(hash_ids: Sequence[int], input_tokens: int, block_tokens: int = BLOCK_TOKENS) -> str:
    """The prompt text of a trace row: its blocks' texts in order, cut at ``input_tokens`` tokens."""
    text = "".join(block_text(int(h), block_tokens) for h in hash_ids)
    return text[: max(1, input_tokens) * CHARS_PER_TOKEN]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds from the start of the run."""

    index: int
    scheduled_s: float
    #: How late the request was sent relative to its schedule (open-loop check).
    send_lag_s: float
    #: Seconds from send to the end of the response (or to the error); ``None`` if never sent.
    latency_s: float | None
    #: Seconds from send to the first streamed data chunk (streaming only).
    ttft_s: float | None
    #: HTTP status, or 0 for a transport error / timeout.
    status: int
    error: str
    input_tokens: int
    output_tokens: int
    #: The ``x-xds-replica`` response header (which replica served it), if any.
    replica: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


@dataclass(frozen=True)
class Summary:
    requests: int
    ok: int
    failed: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_mean_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    #: Successful responses per second of wall time (first send to last completion).
    achieved_rps: float
    #: Requests per second the trace offered (requests / trace span).
    offered_rps: float
    duration_s: float
    send_lag_p99_ms: float | None
    send_lag_max_ms: float | None
    #: Count per HTTP status (0 = transport error or timeout), as strings for JSON.
    status_counts: dict[str, int] = field(default_factory=dict)
    #: Successful responses per replica (from the ``x-xds-replica`` header).
    by_replica: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadResult:
    records: list[RequestRecord]
    summary: Summary


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default), ``None`` for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 3)


def summarize(records: Sequence[RequestRecord], wall_s: float | None = None) -> Summary:
    """Summary of a run; ``wall_s`` defaults to first send → last completion."""
    ok = [r for r in records if r.ok]
    lat = [r.latency_s for r in ok if r.latency_s is not None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    lags = [r.send_lag_s for r in records]
    if wall_s is None:
        ends = [r.scheduled_s + r.send_lag_s + (r.latency_s or 0.0) for r in records]
        starts = [r.scheduled_s + r.send_lag_s for r in records]
        wall_s = (max(ends) - min(starts)) if records else 0.0
    span = (max(r.scheduled_s for r in records) - min(r.scheduled_s for r in records)) if len(records) > 1 else 0.0
    return Summary(
        requests=len(records),
        ok=len(ok),
        failed=len(records) - len(ok),
        latency_p50_ms=_ms(percentile(lat, 50)),
        latency_p95_ms=_ms(percentile(lat, 95)),
        latency_p99_ms=_ms(percentile(lat, 99)),
        latency_mean_ms=_ms(sum(lat) / len(lat)) if lat else None,
        ttft_p50_ms=_ms(percentile(ttft, 50)),
        ttft_p99_ms=_ms(percentile(ttft, 99)),
        achieved_rps=round(len(ok) / wall_s, 3) if wall_s > 0 else 0.0,
        offered_rps=round(len(records) / span, 3) if span > 0 else 0.0,
        duration_s=round(wall_s, 3),
        send_lag_p99_ms=_ms(percentile(lags, 99)),
        send_lag_max_ms=_ms(max(lags)) if lags else None,
        status_counts={str(k): v for k, v in sorted(Counter(r.status for r in records).items())},
        by_replica=dict(sorted(Counter(r.replica for r in ok if r.replica).items())),
    )


def endpoint_url(target: str, chat: bool = False) -> str:
    """``target`` as a request URL: a bare ``http://host:port`` gets the OpenAI path appended."""
    if "://" not in target:
        target = "http://" + target
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"target must be an http(s) URL, got {target!r}")
    if parts.path in ("", "/"):
        return target.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    return target


async def run_load(
    target: str,
    trace: Sequence[TraceRequest] | Any,
    *,
    stream: bool = True,
    chat: bool = False,
    model: str = "emulated",
    timeout_s: float = 120.0,
    connection_limit: int = 0,
    headers: Mapping[str, str] | None = None,
    on_record: Callable[[RequestRecord], None] | None = None,
    stop: asyncio.Event | None = None,
    session: aiohttp.ClientSession | None = None,
) -> LoadResult:
    """Replay ``trace`` against ``target`` open-loop and wait for every response.

    Args:
        target: base URL (``http://127.0.0.1:8000``) or a full completions URL.
        trace: :class:`~xds_control.fleet.trace.TraceRequest` rows (or a simulator ``Trace``).
        connection_limit: aiohttp connector limit; 0 = unlimited (open loop needs it).
        on_record: called for each finished request (e.g. a live view).
        stop: when set, no further requests are sent (in-flight ones finish).
        session: reuse a client session (its connector limits apply).
    """
    reqs = as_requests(trace)
    url = endpoint_url(target, chat)
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connection_limit, limit_per_host=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )
    records: list[RequestRecord] = []
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05  # a little slack so the first arrivals are not late

    async def one(i: int, r: TraceRequest) -> None:
        sent = loop.time()
        lag = sent - (t0 + r.timestamp_s)
        body: dict[str, Any] = {"model": model, "max_tokens": max(1, r.output_tokens), "stream": stream,
                                "xds_input_tokens": max(1, r.input_tokens), "ignore_eos": True}  # fmt: skip
        prompt = prompt_for(r.hash_ids, r.input_tokens) if r.hash_ids else "x"
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        status, err, ttft, replica = 0, "", None, ""
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                status = resp.status
                replica = resp.headers.get("x-xds-replica", "")
                if status != 200:
                    err = (await resp.text())[:200] or f"HTTP {status}"
                elif stream:
                    done = False
                    async for line in resp.content:
                        if not line.startswith(b"data:"):
                            continue
                        if ttft is None:
                            ttft = loop.time() - sent
                        if line.strip() == b"data: [DONE]":
                            done = True
                    if not done:
                        err = "stream ended without [DONE]"
                else:
                    await resp.read()
        except TimeoutError:
            err = f"timeout after {timeout_s:g} s"
            status = 0
        except (aiohttp.ClientError, OSError) as e:
            err = f"{type(e).__name__}: {e}"[:200]
            status = 0
        rec = RequestRecord(
            index=i, scheduled_s=r.timestamp_s, send_lag_s=max(0.0, lag), latency_s=loop.time() - sent,
            ttft_s=ttft, status=status, error=err, input_tokens=r.input_tokens, output_tokens=r.output_tokens,
            replica=replica,
        )  # fmt: skip
        records.append(rec)
        if on_record is not None:
            on_record(rec)

    try:
        for i, r in enumerate(reqs):
            if stop is not None and stop.is_set():
                break
            delay = t0 + r.timestamp_s - loop.time()
            if delay > 0:
                if stop is not None:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(delay)
            task = loop.create_task(one(i, r))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        if own:
            await session.close()
    records.sort(key=lambda x: x.index)
    return LoadResult(records, summarize(records))


def format_summary(s: Summary) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    lines = [
        f"requests {s.requests}  ok {s.ok}  failed {s.failed}  statuses {s.status_counts}",
        f"latency ms  p50 {f(s.latency_p50_ms)}  p95 {f(s.latency_p95_ms)}  p99 {f(s.latency_p99_ms)}"
        f"  mean {f(s.latency_mean_ms)}",
        f"ttft ms     p50 {f(s.ttft_p50_ms)}  p99 {f(s.ttft_p99_ms)}",
        f"rps achieved {s.achieved_rps:.2f}  offered {s.offered_rps:.2f}  over {s.duration_s:.1f} s"
        f"  (send lag p99 {f(s.send_lag_p99_ms)} ms)",
    ]
    if s.by_replica:
        lines.append("by replica  " + "  ".join(f"{k}: {v}" for k, v in s.by_replica.items()))
    return "\n".join(lines)


def summary_json(s: Summary) -> str:
    return json.dumps(s.to_dict(), sort_keys=True)


