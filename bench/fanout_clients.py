"""Fan-out load: N ADS streams over C gRPC connections that behave like Envoy (subscribe CDS+EDS, ACK).

Run by bench_fanout.py in its own process. It does not parse whole responses: it
reads only the top-level fields it needs to ACK (version_info, type_url, nonce),
skipping the resources, so the client side costs little CPU next to the server.
Prints "ready" once every stream has ACKed its first CDS and EDS responses, then
one line per later push: "acked <count>".
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        x = b[i]
        i += 1
        n |= (x & 0x7F) << shift
        if not x & 0x80:
            return n, i
        shift += 7


def top_fields(b: bytes) -> dict[int, bytes]:
    """Top-level length-delimited fields except the repeated resources (2)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 2:
            ln, i = _varint(b, i)
            if num != 2:
                out[num] = b[i:i + ln]
            i += ln
        elif wt == 0:
            _, i = _varint(b, i)
        else:
            raise ValueError(f"unexpected wire type {wt}")
    return out


async def stream(channel: grpc.aio.Channel, idx: int, cluster: str, first: asyncio.Event,
                 versions: dict[int, dict[str, str]], ready_count: list[int], n: int) -> None:
    q: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
    call = channel.stream_stream(METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                 response_deserializer=lambda b: b)

    async def reqs():  # type: ignore[no-untyped-def]
        while True:
            r = await q.get()
            if r is None:
                return
            yield r

    q.put_nowait(discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id=f"bench-{idx}", cluster="bench"),
                                                type_url=CLUSTER))
    q.put_nowait(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=[cluster]))
    seen: set[str] = set()
    mine = versions.setdefault(idx, {})
    async for raw in call(reqs()):
        f = top_fields(raw)
        version, type_url, nonce = (f.get(k, b"").decode() for k in (1, 4, 5))
        names = [cluster] if type_url == ENDPOINT else []
        q.put_nowait(discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names, version_info=version,
                                                    response_nonce=nonce))
        mine[type_url] = version
        if len(seen) < 2:
            seen.add(type_url)
            if len(seen) == 2:
                ready_count[0] += 1
                if ready_count[0] == n:
                    first.set()


async def main() -> None:
    target, n, conns, cluster = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    opts = [("grpc.max_receive_message_length", 256 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=opts + [("grpc.channel_id", i)]) for i in range(conns)]
    first = asyncio.Event()
    versions: dict[int, dict[str, str]] = {}
    ready = [0]
    tasks = [asyncio.create_task(stream(channels[i % conns], i, cluster, first, versions, ready, n))
             for i in range(n)]
    await first.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
