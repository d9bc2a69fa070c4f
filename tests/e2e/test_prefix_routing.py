"""Prefix-cache affinity (``routing: prefix``) end to end with a real Envoy.

The control plane pushes a Lua filter (prompt prefix -> key). With ``spill: least_request`` (the default)
the filter names the key's replica (rendezvous hashing over the endpoints in the route) and the cluster's
override-host policy sends the first attempt there, retries by least request; with ``spill: maglev`` a route
hash policy on the key feeds a Maglev cluster with bounded loads. Envoy decides alone per request. Checked here:

* requests sharing a prompt prefix land on one replica (the one ``core.affinity`` predicts); different
  prefixes spread out;
* under concurrency the hot replica sheds (least_request: the retry goes elsewhere) or takes requests only up
  to the bound (maglev), then they spill;
* bodies that are not JSON, empty, too large, chunked or without a prompt all succeed (plain
  bounded-load balancing), and a client cannot choose the key;
* adding a replica moves about 1/(N+1) of the keys; a DRAINING replica gets no new request; an
  endpoint weight scales the share of keys; zero failed requests through all of it;
* with the emulated replicas, the affinity shows as prefix-cache hits.
"""

from __future__ import annotations

import asyncio
import collections
import http.server
import threading
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from support.envoy import Envoy
from support.ports import free_port

from xds_control.config import parse_config
from xds_control.core.affinity import fnv1a32, rendezvous_pick, rendezvous_top
from xds_control.core.traffic import (
    AFFINITY_ATTEMPTS_HEADER,
    AFFINITY_ENDPOINT_HEADER,
    SHED_ATTEMPTS_HEADER,
    SHED_FIRST_BACKLOG_HEADER,
    HealthStatus,
    TrafficPlan,
)
from xds_control.runtime.app import ControlPlane

pytestmark = pytest.mark.envoy


class Replica:
    """An HTTP upstream that records the prefix key it saw and how many requests it held at once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.delay_s = 0.0
        #: answer 429 to a first attempt that carries the affinity bound while another request is in flight
        #: (the shedding contract of xds_control.fleet.replica, with "busy" for "backlog over the bound")
        self.shed_when_busy = False
        self.shed = 0
        self.keys: list[str] = []
        self.named: list[str] = []
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        up = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        self.rfile.read(size + 2)
                        if size == 0:
                            break
                with up._lock:
                    attempt = int(self.headers.get("x-envoy-attempt-count", "1"))
                    first = (self.headers.get(SHED_FIRST_BACKLOG_HEADER) is not None
                             and attempt <= int(self.headers.get(AFFINITY_ATTEMPTS_HEADER, "1"))
                             and attempt < int(self.headers.get(SHED_ATTEMPTS_HEADER, "1")))
                    if up.shed_when_busy and first and up.inflight > 0:
                        up.shed += 1
                        self.send_response(429)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    up.named.append(self.headers.get(AFFINITY_ENDPOINT_HEADER, ""))
                    up.inflight += 1
                    up.max_inflight = max(up.max_inflight, up.inflight)
                    up.keys.append(self.headers.get("x-prefix-hash", ""))
                try:
                    if up.delay_s:
                        time.sleep(up.delay_s)
                    body = up.name.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with up._lock:
                        up.inflight -= 1

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # bursts of new connections from Envoy

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replicas():  # type: ignore[no-untyped-def]
    rs = [Replica(f"r{i}") for i in range(6)]
    yield rs
    for r in rs:
        r.stop()


def config(replicas: list[Replica], port: int, **prefix: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": port}],
        "services": [{
            "name": "llm",
            "retry": {"num_retries": 2},
            "pools": [{
                "name": "llm",
                "routing": "prefix",
                "prefix_routing": {"prefix_bytes": 64, "max_body_bytes": 8192, **prefix},
                "endpoints": [{"address": "127.0.0.1", "port": r.port} for r in replicas],
            }],
        }],
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
    }


async def post(s: aiohttp.ClientSession, port: int, data: bytes | None = None, json: Any = None,
               path: str = "/v1/completions", **kw: Any) -> tuple[int, str]:
    async with s.post(f"http://127.0.0.1:{port}{path}", data=data, json=json, **kw) as r:
        return r.status, await r.text()


def fnv1a(data: bytes) -> str:
    h = 2166136261
    for c in data:
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return f"{h:08x}"


def prompt(prefix: str, i: int) -> dict[str, Any]:
    return {"model": "m", "prompt": (prefix * 64)[:64] + f" question {i}", "max_tokens": 1}


async def owners(s: aiohttp.ClientSession, port: int, keys: int) -> list[str]:
    """Which replica serves each of ``keys`` distinct prefixes (one request each, no concurrency)."""
    out = []
    for k in range(keys):
        status, body = await post(s, port, json=prompt(f"key-{k:05d}-", 0))
        assert status == 200, body
        out.append(body)
    return out


async def hot_burst(s: aiohttp.ClientSession, port: int, n: int) -> list[tuple[int, str]]:
    """``n`` concurrent requests sharing the ``shared-`` prefix, started 10 ms apart."""

    async def later(i: int) -> tuple[int, str]:
        await asyncio.sleep(0.01 * i)
        return await post(s, port, json=prompt("shared-", 100 + i))

    return await asyncio.gather(*(later(i) for i in range(n)))


async def bad_input_is_balanced(s: aiohttp.ClientSession, port: int, *extra: tuple[str, dict[str, Any]]) -> None:
    """Every kind of bad body (and ``extra`` cases) succeeds and is balanced: 12 requests reach >= 2 replicas."""
    bad: list[tuple[str, dict[str, Any]]] = [
        ("not json", {"data": b"this is not json"}),
        ("empty body", {"data": b""}),
        ("no prompt", {"json": {"model": "m", "max_tokens": 1}}),
        ("empty prompt", {"json": {"prompt": ""}}),
        ("too large", {"json": {"prompt": "x" * 20_000}}),
        ("truncated json", {"data": b'{"prompt": "never closed'}),
        *extra,
    ]
    for what, kw in bad:
        got: collections.Counter[str] = collections.Counter()
        for _ in range(12):
            st, body = await post(s, port, **kw)
            assert st == 200, (what, st, body)
            got[body] += 1
        assert len(got) >= 2, (what, got)  # balanced, not pinned to one replica


def healthy_hosts(envoy: Envoy) -> dict[str, str]:
    """``port -> health_flags`` of the llm cluster's hosts, from Envoy's /clusters."""
    out = {}
    for line in envoy.admin("/clusters").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "llm" and parts[2] == "health_flags":
            out[parts[1].rsplit(":", 1)[1]] = parts[3]
    return out


async def start(replicas: list[Replica], **prefix: Any) -> tuple[ControlPlane, Envoy, int]:
    port = free_port()
    cp = ControlPlane(parse_config(config(replicas, port, **prefix)), xds_port=0, metrics_port=None,
                      admin_port=None)
    await cp.start()
    envoy = Envoy("prefix-1", cp.ports.xds).start()
    await asyncio.to_thread(envoy.wait_for, lambda: envoy.listener_ready("ingress"), 20, "listener")
    await asyncio.to_thread(envoy.wait_for, lambda: len(healthy_hosts(envoy)) == len(replicas), 20, "endpoints")
    return cp, envoy, port


async def test_rendezvous_pick_sticks_then_sheds_to_least_request_and_bad_bodies_succeed(replicas) -> None:  # type: ignore[no-untyped-def]
    """``spill: least_request`` (the default): the Lua filter names the key's replica exactly as
    ``core.affinity.rendezvous_pick`` does; a busy replica's 429 on the first attempt is retried on another
    replica (least request); bad bodies and client-chosen endpoints go to least request; zero failures."""
    reps = replicas[:4]
    cp, envoy, port = await start(reps)
    names = [f"127.0.0.1:{r.port}" for r in reps]
    by_addr = {f"127.0.0.1:{r.port}": r.name for r in reps}
    try:
        async with aiohttp.ClientSession() as s:
            # Lua and Python agree on every key (the key: FNV-1a of the first prefix_bytes (64) of the prompt): the
            # request names the key's two best replicas (affinity_choices: 2) and lands on the first
            for k in range(120):
                p = prompt(f"key-{k:05d}-", 0)
                top = [names[i] for i in rendezvous_top(fnv1a32(p["prompt"].encode()[:64]), names, [1.0] * 4, 2)]
                st, body = await post(s, port, json=p)
                assert st == 200 and body == by_addr[top[0]], (k, body, top)
                got_names = next(r for r in reps if r.name == body).named[-1]
                assert got_names == ",".join(top), (k, got_names, top)
            assert {n.split(",")[0] for r in reps for n in r.named} == set(names)
            # chat bodies are keyed too; a client cannot name the replica
            chat = {"messages": [{"role": "system", "content": "S" * 64}, {"role": "user", "content": "hi"}]}
            assert len({(await post(s, port, json=chat, path="/v1/chat/completions"))[1] for _ in range(8)}) == 1
            p = prompt("shared-", 0)
            hot = by_addr[names[rendezvous_pick(fnv1a32(p["prompt"].encode()[:64]), names, [1.0] * 4)]]
            other = next(n for n in names if by_addr[n] != hot)
            got = {(await post(s, port, json=prompt("shared-", i), headers={AFFINITY_ENDPOINT_HEADER: other}))[1]
                   for i in range(8)}
            assert got == {hot}, got

            # A hot key under concurrency: its replica sheds first attempts while busy, Envoy retries by least
            # request; every request succeeds and the 429s equal Envoy's retries on 429.
            await asyncio.gather(*(post(s, port, json=prompt(f"warm-{i}-", i)) for i in range(40)))
            for r in reps:
                r.delay_s = 0.3
                r.shed_when_busy = True

            results = await hot_burst(s, port, 30)
            for r in reps:
                r.delay_s = 0.0
                r.shed_when_busy = False
            assert all(st == 200 for st, _ in results), ([r for r in results if r[0] != 200][:3], str({
                k: v for k, v in envoy.stats().items() if ("retry" in k or "429" in k) and v != "0"}))
            burst = collections.Counter(b for _, b in results)
            assert burst[hot] >= 1 and len(burst) >= 3, burst
            shed = sum(r.shed for r in reps)
            assert shed >= 10, shed
            stats = envoy.stats()
            assert int(stats.get("cluster.llm.retry.upstream_rq_429", "0")) == shed
            assert int(stats.get("cluster.llm.upstream_rq_retry_overflow", "0")) == 0

            # Bad input falls back to least request (no key, no endpoint named) and succeeds.
            for r in reps:
                r.keys.clear()
                r.named.clear()
            await bad_input_is_balanced(s, port, ("client endpoint", {
                "data": b"not json", "headers": {AFFINITY_ENDPOINT_HEADER: other}}))
            assert all(n == "" for r in reps for n in r.named), "a bad body named an endpoint"
        stats = envoy.stats()
        assert int(stats.get("cluster.llm.upstream_rq_5xx", "0")) == 0
    finally:
        envoy.stop()
        await cp.stop(grace=0)


async def test_shared_prefix_sticks_until_the_bound_then_spills_and_bad_bodies_succeed(replicas) -> None:  # type: ignore[no-untyped-def]
    """``spill: maglev``: Envoy's bounded loads keep the hot replica at the bound, the rest spill."""
    reps = replicas[:4]
    cp, envoy, port = await start(reps, spill="maglev")
    try:
        async with aiohttp.ClientSession() as s:
            # One prefix, one replica (whatever the suffix); and chat bodies are keyed too.
            served = collections.Counter([(await post(s, port, json=prompt("shared-", i)))[1] for i in range(20)])
            assert len(served) == 1, served
            chat = {"messages": [{"role": "system", "content": "S" * 64}, {"role": "user", "content": "hi"}]}
            chat_served = {(await post(s, port, json=chat, path="/v1/chat/completions"))[1] for _ in range(10)}
            assert len(chat_served) == 1, chat_served
            # Many prefixes spread over all replicas.
            spread = collections.Counter(await owners(s, port, 80))
            assert len(spread) == 4 and min(spread.values()) >= 8, spread
            assert all(k for r in reps for k in r.keys), "a well-formed request reached a replica without a key"
            # The key is the 32-bit FNV-1a of the first prefix_bytes (64) of the prompt, as hex.
            hot_keys = {k for r in reps if r.name in served for k in r.keys[:20]}
            assert hot_keys == {fnv1a(prompt("shared-", 0)["prompt"].encode()[:64])}, hot_keys

            # Concurrency: 40 requests with one prefix, each held 0.6 s. The hot replica is kept at the bound
            # (1.25 x the mean outstanding, i.e. about 12.5 of 40 over 4), the rest spill.
            for r in reps:
                r.delay_s = 0.6
                r.max_inflight = 0
            hot = next(iter(served))
            # Envoy counts a request toward a host's load once it has a connection (requests waiting for a
            # new connection are "pending", not "active"): warm the connection pools first, as steady traffic
            # does, and let arrivals be 10 ms apart rather than all in one instant.
            await asyncio.gather(*(post(s, port, json=prompt(f"warm-{i}-", i)) for i in range(60)))
            for r in reps:
                r.max_inflight = 0

            results = await hot_burst(s, port, 40)
            for r in reps:
                r.delay_s = 0.0
            assert all(st == 200 for st, _ in results), [r for r in results if r[0] != 200][:3]
            burst = collections.Counter(b for _, b in results)
            # The hot replica filled up to the bound (ceil(1.25 x 41 / 4) = 13 at the peak) and no further.
            assert 8 <= burst[hot] <= 14, burst
            assert len(burst) >= 3, burst
            hot_rep = next(r for r in reps if r.name == hot)
            assert hot_rep.max_inflight <= 14, hot_rep.max_inflight

            # Bad input: every kind falls back to the balancer (no key) and succeeds.
            for r in reps:
                r.keys.clear()
            await bad_input_is_balanced(s, port, ("client key", {"data": b"not json",
                                                                 "headers": {"x-prefix-hash": "mine"}}))
            # Chunked upload (no content-length): not buffered by the filter, still served.
            async def gen():  # type: ignore[no-untyped-def]
                yield b'{"prompt": "'
                yield b"chunked " * 20 + b'"}'
            st, _ = await post(s, port, data=gen())
            assert st == 200
            assert all(k == "" for r in reps for k in r.keys), "a bad body reached a replica with a key"
        stats = envoy.stats()
        assert int(stats.get("cluster.llm.upstream_rq_5xx", "0")) == 0
    finally:
        envoy.stop()
        await cp.stop(grace=0)


@pytest.mark.parametrize("spill", ["least_request", "maglev"])
async def test_scale_up_drain_and_weights_move_few_keys_with_zero_failures(replicas, spill: str) -> None:  # type: ignore[no-untyped-def]
    base, extra = replicas[:4], replicas[4]
    cp, envoy, port = await start(base, spill=spill)
    failures: list[str] = []
    sent = 0
    stop = asyncio.Event()

    async def background(s: aiohttp.ClientSession) -> None:
        nonlocal sent
        i = 0
        while not stop.is_set():
            batch = [post(s, port, json=prompt(f"bg-{(i + j) % 50}-", i + j)) for j in range(8)]
            for st, body in await asyncio.gather(*batch, return_exceptions=True):  # type: ignore[misc]
                sent += 1
                if isinstance(st, BaseException) or st != 200:
                    failures.append(repr(st) + str(body)[:80])
            i += 8

    def publish(plan: TrafficPlan) -> None:
        cp.publisher.publish_now(plan, reason="test")

    try:
        async with aiohttp.ClientSession() as s:
            bg = asyncio.create_task(background(s))
            keys = 300
            before = await owners(s, port, keys)
            assert collections.Counter(before).keys() == {r.name for r in base}
            plan = cp.publisher.cache.snapshot.plan  # type: ignore[union-attr]
            pool = plan.pools[0]
            # Scale-up: a fifth replica.
            ep_extra = replace(pool.endpoints[0], port=extra.port)
            up_pool = replace(pool, endpoints=(*pool.endpoints, ep_extra))
            publish(replace(plan, pools=(up_pool,)))
            await asyncio.to_thread(envoy.wait_for, lambda: len(healthy_hosts(envoy)) == 5, 10, "5 hosts")
            after = await owners(s, port, keys)
            moved = sum(a != b for a, b in zip(before, after, strict=True)) / keys
            # Consistent hashing: ideally 1/5 of the keys move (to the new replica); Maglev is close to that,
            # rendezvous hashing moves exactly the keys the new replica wins.
            to_new = sum(a == extra.name for a in after) / keys
            assert 0.1 <= to_new <= 0.32 and moved <= to_new + 0.08, (moved, to_new)

            # Drain one of the original replicas: it gets no new request; only its keys move.
            drained = base[1]
            eps = tuple(replace(e, health=HealthStatus.DRAINING) if e.port == drained.port else e
                        for e in up_pool.endpoints)
            publish(replace(plan, pools=(replace(up_pool, endpoints=eps),)))
            await asyncio.to_thread(envoy.wait_for,
                                    lambda: "healthy" not in healthy_hosts(envoy).get(str(drained.port), "healthy"),
                                    10, "drained host")
            n_drained = len(drained.keys)
            drained_view = await owners(s, port, keys)
            assert drained.name not in drained_view
            assert len(drained.keys) == n_drained, "a DRAINING replica got new requests"
            kept = [a == b for a, b in zip(after, drained_view, strict=True) if a != drained.name]
            assert sum(kept) / len(kept) >= 0.9, sum(kept) / len(kept)

            # Weights still apply: weight 4 on one of four healthy replicas -> about 4/7 of the keys.
            heavy = base[0]
            eps_w = tuple(replace(e, weight=4) if e.port == heavy.port else e for e in eps)
            publish(replace(plan, pools=(replace(up_pool, endpoints=eps_w),)))
            await asyncio.sleep(0.5)
            weighted_view = await owners(s, port, keys)
            weighted = collections.Counter(weighted_view)
            assert 0.45 <= weighted[heavy.name] / keys <= 0.7, weighted
            if spill == "least_request":
                # the Lua's weighted pick is rendezvous_top's, key by key (the drained replica is not listed)
                live = [e for e in eps_w if e.health is not HealthStatus.DRAINING]
                names = [e.key for e in live]
                by_port = {r.port: r.name for r in [*base, extra]}
                want = [by_port[live[rendezvous_top(fnv1a32(prompt(f"key-{k:05d}-", 0)["prompt"].encode()[:64]),
                                                    names, [float(e.weight) for e in live], 1)[0]].port]
                        for k in range(keys)]
                assert weighted_view == want
            stop.set()
            await bg
        assert sent > 100
        assert failures == [], failures[:5]
    finally:
        stop.set()
        envoy.stop()
        await cp.stop(grace=0)
