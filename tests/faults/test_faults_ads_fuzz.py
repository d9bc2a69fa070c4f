"""Malformed and adversarial xDS clients against ``xds-control serve`` (its ADS server), next to a real Envoy.

* fuzz (hypothesis; 60 examples, 600 full): each example is one SotW or Delta stream from a raw gRPC client
  that sends a script of DiscoveryRequests: known and unknown type URLs (random text, empty), resource-name
  lists of random text or of ``max_names_per_stream`` ± 1 names, nonces that echo the last response, echo an
  older one, are random, "future" or empty, random ``version_info`` (ACKs of versions never sent),
  ``error_detail`` NACKs, Delta unsubscribes of names never subscribed and garbage
  ``initial_resource_versions``, with a missing or random node, and ends by half-closing, by an abrupt
  cancel mid-stream, or by closing the channel. The stream ends OK or with ``RESOURCE_EXHAUSTED`` naming the
  limit (always when one request listed more names than the cap), never with any other status; ``serve``
  never dies; every few examples the config changes and the real Envoy gets the push (its EDS shows the new
  weight) while the fuzzing goes on;
* held: 10 streams (40 full) hold just under the cap (9,999 names of 24 bytes) open at once;
* flood (40 streams, 200 full; four rounds, eight full): each tries to subscribe to a million names — SotW: one request
  of 1,000,000 names (10 MB, over the 4 MiB message limit: gRPC refuses it) or of 300,000 (3 MB, refused by
  the names cap); Delta: 2,000 more per request until refused.

Requirements (state per stream is capped): every million-name stream ends with ``RESOURCE_EXHAUSTED``; a
held stream at the cap costs ``serve`` at most 12 MiB of RSS; the peak RSS stays within 16 MiB per
concurrent flooding stream of the start (what one in-flight 4 MiB request can cost to receive and parse); after
every round the RSS is back within 128 MiB of where it was before the first (nothing accumulates); the Envoy gets
every push, during the fuzzing and the flood; once the clients are gone ``/debug/syncz`` lists only the
Envoy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import Serve, eds_hosts, envoy_running, pick, record
from support.ports import free_port

from xds_control.snapshot import types as T

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.timeout(pick(180, 900))]

EXAMPLES = pick(60, 600)
FLOOD = pick(40, 200)
HELD = pick(10, 40)
MiB = 1024 * 1024
ROUNDS = pick(4, 8)
#: How far above its level before the floods serve's RSS may be after any round (freed memory kept by glibc).
ROUND_SLACK = 128 * MiB
#: A push reaches the Envoy within this of the config write (0.25 s file poll included). The full form's floods
#: (200 streams at once sending 3-10 MB requests, ~2 GB to receive and parse) delayed one by 4.97 s.
PUSH_LIMIT_S = pick(5.0, 10.0)
CAP = 10_000  # AdsServer's default max_names_per_stream
SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
NODE = "faults-ads-fuzz-envoy"


def config(port: int, weight: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "port": port}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "endpoints": [
            {"address": "127.0.0.1", "port": 1, "weight": weight}, {"address": "127.0.0.1", "port": 2}]}]}],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0},
    }


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def _ser(m: Any) -> bytes:
    return m if isinstance(m, bytes) else m.SerializeToString()  # type: ignore[no-any-return]


class Raw:
    """One ADS stream that sends whatever it is given (messages or pre-serialized bytes)."""

    def __init__(self, channel: grpc.aio.Channel, delta: bool) -> None:
        resp = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        rpc = channel.stream_stream(DELTA if delta else SOTW, request_serializer=_ser,
                                    response_deserializer=resp.FromString)
        self.q: asyncio.Queue[Any] = asyncio.Queue()
        self.call = rpc()
        self.nonces: dict[str, list[str]] = {}
        self.write_failed = False
        loop = asyncio.get_running_loop()
        self.writer = loop.create_task(self._write())
        self.pump = loop.create_task(self._pump())

    async def _write(self) -> None:
        # A write after the server ended the stream fails, and grpc's Python client then reports its own
        # INTERNAL "Internal error from Core" instead of the server's status (``write_failed`` says so).
        try:
            while (m := await self.q.get()) is not None:
                await self.call.write(m)
            await self.call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            self.write_failed = True
        except asyncio.CancelledError:
            pass

    async def _pump(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            while (r := await self.call.read()) is not grpc.aio.EOF:
                self.nonces.setdefault(r.type_url, []).append(r.nonce)
        self.writer.cancel()

    async def end(self, timeout: float = 5.0) -> tuple[grpc.StatusCode, str]:
        """Half-close and wait for the status."""
        self.q.put_nowait(None)
        await asyncio.wait_for(self.pump, timeout)
        return await self.call.code(), await self.call.details() or ""

    async def status(self, timeout: float = 10.0) -> tuple[grpc.StatusCode, str]:
        """Wait for the server to end the stream (without half-closing)."""
        await asyncio.wait_for(self.pump, timeout)
        return await self.call.code(), await self.call.details() or ""


# -- the fuzzed scripts -----------------------------------------------------------------------------------
TEXT = st.text(max_size=40)
TYPES = st.one_of(st.sampled_from(T.ORDER), TEXT, st.just("type.googleapis.com/envoy.config.cluster.v3.Nope"))
NAMES = st.one_of(st.lists(st.one_of(TEXT, st.sampled_from(["llm", "ingress", "*", ""])), max_size=12),
                  st.sampled_from([("huge", CAP - 1), ("huge", CAP + 1), ("huge", 50_000)]))
NONCE = st.one_of(st.sampled_from(["echo", "stale", "future", ""]), TEXT)
STEP = st.fixed_dictionaries({
    "type": TYPES, "names": NAMES, "unsub": st.lists(TEXT, max_size=5), "nonce": NONCE,
    "version": st.one_of(st.just(""), TEXT, st.just("999999")),
    "error": st.one_of(st.none(), TEXT),
    "initial": st.one_of(st.dictionaries(TEXT, TEXT, max_size=6), st.just({"llm": "bogus"}), st.just("huge")),
    "pause": st.sampled_from([0.0, 0.0, 0.01, 0.05]),
})
SCRIPT = st.fixed_dictionaries({
    "delta": st.booleans(),
    "node": st.one_of(st.none(), st.just(NODE + "-impostor"), TEXT),
    "steps": st.lists(STEP, min_size=1, max_size=8),
    "end": st.sampled_from(["half_close", "cancel", "close_channel"]),
})


def expand(names: Any) -> list[str]:
    if isinstance(names, tuple):
        return [f"fuzz-{i:018d}" for i in range(names[1])]
    return list(names)


def nonce_for(raw: Raw, type_url: str, how: str) -> str:
    got = raw.nonces.get(type_url, [])
    if how == "echo":
        return got[-1] if got else ""
    if how == "stale":
        return got[0] if got else "0-0"
    if how == "future":
        return "999999999-999999999"
    return how


def build(raw: Raw, delta: bool, step: dict[str, Any], node: Any, first: bool) -> Any:
    names = expand(step["names"])
    nonce = nonce_for(raw, step["type"], step["nonce"])
    if delta:
        req: Any = discovery_pb2.DeltaDiscoveryRequest(
            type_url=step["type"], resource_names_subscribe=names, resource_names_unsubscribe=step["unsub"],
            response_nonce=nonce)
        init = step["initial"]
        req.initial_resource_versions.update(
            {f"init-{i:018d}": "v" for i in range(CAP + 1)} if init == "huge" else init)
    else:
        req = discovery_pb2.DiscoveryRequest(type_url=step["type"], resource_names=names,
                                             version_info=step["version"], response_nonce=nonce)
    if first and node is not None:
        req.node.CopyFrom(base_pb2.Node(id=node, cluster="fuzz"))
    if step["error"] is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=step["error"]))
    return req


def over_cap(delta: bool, step: dict[str, Any], first: bool) -> bool:
    """This request alone lists more names than the cap (the server must refuse it)."""
    if step["type"] not in T.ORDER:
        return False
    n = len(expand(step["names"]))
    if delta and first:
        n += CAP + 1 if step["initial"] == "huge" else len(step["initial"])
    return n > CAP


stats: collections.Counter[str] = collections.Counter()


async def play(xds_port: int, script: dict[str, Any]) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}")
    try:
        raw = Raw(channel, script["delta"])
        must_refuse = False
        seen: set[str] = set()
        for i, step in enumerate(script["steps"]):
            first_of_type = step["type"] not in seen
            seen.add(step["type"])
            raw.q.put_nowait(build(raw, script["delta"], step, script["node"], i == 0))
            if over_cap(script["delta"], step, first_of_type):
                must_refuse = True
                break  # the server ends the stream here: writing on would race its status (see Raw)
            await asyncio.sleep(step["pause"])
        if script["end"] == "cancel":
            await asyncio.sleep(0.02)
            raw.call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await raw.pump
            stats["cancelled"] += 1
            return
        if script["end"] == "close_channel":
            await asyncio.sleep(0.02)
            await channel.close()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await raw.pump
            stats["channel_closed"] += 1
            return
        # A stream that must be refused is not half-closed: that would race the server's status too.
        code, details = await (raw.status() if must_refuse else raw.end())
        if must_refuse:
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        if raw.write_failed and code == grpc.StatusCode.INTERNAL and details == "Internal error from Core":
            # The server ended the stream (a cumulative cap) while this client still wrote: the status seen
            # is the client library's. Only the cap ends a stream from the server side.
            stats["write_races"] += 1
            return
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED), (code, details)
        stats[code.name] += 1
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert "max_names_per_stream" in details or "max_name_bytes_per_stream" in details, details
    finally:
        await channel.close()


# -- the flood ----------------------------------------------------------------------------------------------
def _many(n: int) -> bytes:
    return discovery_pb2.DiscoveryRequest(
        type_url=T.ENDPOINT, resource_names=[f"m{i:07d}" for i in range(n)],
        node=base_pb2.Node(id="faults-million", cluster="fuzz")).SerializeToString()


MILLION = _many(1_000_000)  # 10 MB: over the server's 4 MiB message limit (refused by gRPC itself)
THREE_HUNDRED_K = _many(300_000)  # 3 MB: under it, refused by the names cap


async def million_sotw(channel: grpc.aio.Channel, body: bytes) -> tuple[grpc.StatusCode, str]:
    raw = Raw(channel, delta=False)
    raw.q.put_nowait(body)
    return await raw.status()


async def million_delta(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, str]:
    """Subscribe 2,000 more names a request, towards a million: refused by the request that passes the cap."""
    raw = Raw(channel, delta=True)
    for chunk in range(500):
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=T.ENDPOINT, resource_names_subscribe=[f"d{chunk:03d}-{i:05d}" for i in range(2000)])
        if chunk == 0:
            req.node.CopyFrom(base_pb2.Node(id="faults-million-delta", cluster="fuzz"))
        raw.q.put_nowait(req)
        if (chunk + 1) * 2000 > CAP:
            break  # refused now; writing on would race the server's status (see Raw)
        await asyncio.sleep(0.01)
        assert not raw.pump.done(), f"refused at {(chunk + 1) * 2000} names, under the cap"
    return await raw.status()


async def hold_at_cap(channel: grpc.aio.Channel, k: int) -> Raw:
    raw = Raw(channel, delta=k % 2 == 1)
    names = [f"held-{k:04d}-{i:014d}" for i in range(CAP - 1)]  # 24 bytes each
    if k % 2:
        raw.q.put_nowait(discovery_pb2.DeltaDiscoveryRequest(
            type_url=T.ENDPOINT, resource_names_subscribe=names, node=base_pb2.Node(id=f"held-{k}")))
    else:
        raw.q.put_nowait(discovery_pb2.DiscoveryRequest(type_url=T.ENDPOINT, resource_names=names,
                                                        node=base_pb2.Node(id=f"held-{k}")))
    return raw


# -- the scenario -------------------------------------------------------------------------------------------
async def test_ads_survives_malformed_clients(tmp_path: Path) -> None:
    port, xds_port = free_port(), free_port()
    cfg_path = tmp_path / "config.yaml"
    weight = 10
    cfg_path.write_text(yaml.safe_dump(config(port, weight)))
    serve = Serve(cfg_path, xds_port, tmp_path / "serve.log")
    push_s: list[float] = []
    pending: list[tuple[float, int]] = []
    try:
        with envoy_running(NODE, xds_port) as envoy:
            def has_weight(w: int) -> bool:
                return eds_hosts(envoy, "llm").get("127.0.0.1:1") == w

            def push() -> None:
                """Change the config; checked by check_pushes (after the next fuzz example or flood round)."""
                nonlocal weight
                weight = weight % 100 + 1
                pending.append((time.monotonic(), weight))
                cfg_path.write_text(yaml.safe_dump(config(port, weight)))

            def check_pushes() -> None:
                """Blocking: every pending push reached the Envoy within PUSH_LIMIT_S of its config write."""
                while pending:
                    t0, w = pending[0]
                    while not has_weight(w):
                        assert serve.proc.poll() is None, "serve died"
                        assert time.monotonic() - t0 < PUSH_LIMIT_S, \
                            f"the Envoy did not get the push of weight {w} in {PUSH_LIMIT_S} s"
                        time.sleep(0.02)
                    push_s.append(time.monotonic() - t0)
                    pending.pop(0)

            deadline = time.monotonic() + 20
            while not has_weight(weight):
                assert time.monotonic() < deadline, "the Envoy never got the first config"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            rss0 = rss(serve.proc.pid)
            examples = 0

            # hypothesis runs its examples synchronously: in a worker thread, each example on its own event
            # loop; every 5th example a config change is pushed while the example's stream runs.
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                             HealthCheck.large_base_example])
            @given(script=SCRIPT)
            def fuzz(script: dict[str, Any]) -> None:
                nonlocal examples
                examples += 1
                if examples % 5 == 0:
                    push()
                asyncio.run(play(xds_port, script))
                assert serve.proc.poll() is None, "serve died"
                check_pushes()

            await asyncio.to_thread(fuzz)
            rss_fuzz = rss(serve.proc.pid)

            # HELD streams just under the cap, open at once; then three rounds of million-name streams.
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}",
                                                options=[("grpc.max_send_message_length", -1)])
            rounds: list[int] = []
            refused: collections.Counter[str] = collections.Counter()
            try:
                before_held = rss(serve.proc.pid)
                held = [await hold_at_cap(channel, k) for k in range(HELD)]
                deadline = time.monotonic() + 30
                while len(serve.syncz()) < HELD + 1:
                    assert time.monotonic() < deadline, "the held streams never connected"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
                with_held = rss(serve.proc.pid)
                push()
                await asyncio.to_thread(check_pushes)
                for h in held:
                    code, details = await h.end()
                    assert code == grpc.StatusCode.OK, (code, details)
                await asyncio.sleep(0.5)
                before_flood = rss(serve.proc.pid)
                for _ in range(ROUNDS):
                    push()
                    kinds = [million_delta(channel) if i % 3 == 0 else
                             million_sotw(channel, MILLION if i % 3 == 1 else THREE_HUNDRED_K) for i in range(FLOOD)]
                    for code, details in await asyncio.gather(*kinds):
                        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
                        if "max_names_per_stream" in details:
                            refused["names_cap"] += 1
                        else:
                            assert "Received message larger than max" in details, details
                            refused["message_size"] += 1
                    await asyncio.to_thread(check_pushes)
                    assert serve.proc.poll() is None, "serve died"
                    rounds.append(rss(serve.proc.pid))
            finally:
                await channel.close()
            deadline = time.monotonic() + 10
            while [p["node"] for p in serve.syncz()] != [NODE]:
                assert time.monotonic() < deadline, f"streams left behind: {[p['node'] for p in serve.syncz()]}"
                await asyncio.sleep(0.1)
            push()
            await asyncio.to_thread(check_pushes)
            hwm = rss(serve.proc.pid, "VmHWM")
            assert serve.proc.poll() is None, "serve died"
    finally:
        serve.stop()
    per_held = (with_held - before_held) / HELD
    row = record("ads_malformed_clients", examples=examples, fuzz_ends=dict(sorted(stats.items())), pushes=len(push_s),
                 push_p50_s=statistics.median(push_s), push_max_s=max(push_s),
                 million_name_streams=FLOOD * ROUNDS, refused=dict(refused), held_streams=HELD,
                 rss_before_mb=rss0 / MiB, rss_after_fuzz_mb=rss_fuzz / MiB, rss_before_flood_mb=before_flood / MiB,
                 rss_after_flood_rounds_mb="/".join(f"{x / MiB:.0f}" for x in rounds),
                 rss_per_held_stream_mb=per_held / MiB, rss_peak_mb=hwm / MiB)
    # Requirements (RELIABILITY.md, ads_malformed_clients): state per stream is capped.
    assert per_held <= 12 * MiB, row
    assert sum(refused.values()) == FLOOD * ROUNDS, row
    # What an in-flight request can cost is bounded by the 4 MiB message limit: at most ~16 MiB each (receive
    # buffer, bytes, parsed message), FLOOD of them at once. The RSS between rounds moves by ~100 MiB (freed
    # memory stays in glibc's per-thread arenas), so "nothing accumulates" is checked on the server's state
    # (only the Envoy's stream left, above) and on every round staying under the same bound.
    assert hwm - rss0 <= FLOOD * 16 * MiB, row
    # Nothing a refused stream sent outlives it: after every round the RSS is back within ROUND_SLACK of where it
    # was before the first, however many rounds (measured, full form: 102-157 MiB after each of 8 rounds of 200,
    # 154 MiB before them; before the fix it grew to 4.9 GB after 8).
    assert all(r - before_flood <= ROUND_SLACK for r in rounds), row
