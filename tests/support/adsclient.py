"""A gRPC client that plays Envoy on an ADS stream (SotW or Delta), for conformance tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2


class _Client:
    def __init__(self, target: str, node_id: str) -> None:
        self.node = base_pb2.Node(id=node_id, cluster="test")
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._out: asyncio.Queue[Any] = asyncio.Queue()
        self._first = True
        self.call: Any = None
        self._in: asyncio.Queue[Any] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    def _start_pump(self) -> None:
        async def pump() -> None:
            try:
                async for resp in self.call:
                    self._in.put_nowait(resp)
            except (asyncio.CancelledError, grpc.aio.AioRpcError) as e:
                self._in.put_nowait(e)

        self._pump = asyncio.get_running_loop().create_task(pump())

    async def _requests(self):  # type: ignore[no-untyped-def]
        while True:
            req = await self._out.get()
            if req is None:
                return
            yield req

    async def recv(self, timeout: float = 3.0) -> Any:
        item = await asyncio.wait_for(self._in.get(), timeout)
        if isinstance(item, BaseException):
            raise AssertionError(f"stream ended: {item!r}")
        return item

    async def expect_none(self, timeout: float = 0.4) -> None:
        try:
            item = await asyncio.wait_for(self._in.get(), timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no response, got {item}")

    async def close(self) -> None:
        await self._out.put(None)
        self.call.cancel()
        if self._pump is not None:
            self._pump.cancel()
        await self.channel.close()


class SotwClient(_Client):
    async def start(self) -> SotwClient:
        self.call = self.stub.StreamAggregatedResources(self._requests())
        self._start_pump()
        return self

    def request(self, type_url: str, names: Iterable[str] = (), version: str = "", nonce: str = "",
                error: str | None = None) -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names), version_info=version,
                                             response_nonce=nonce)
        if self._first:
            req.node.CopyFrom(self.node)
            self._first = False
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._out.put_nowait(req)

    def ack(self, resp: Any, names: Iterable[str] = ()) -> None:
        self.request(resp.type_url, names, version=resp.version_info, nonce=resp.nonce)

    def nack(self, resp: Any, message: str, names: Iterable[str] = (), last_good: str = "") -> None:
        self.request(resp.type_url, names, version=last_good, nonce=resp.nonce, error=message)


class DeltaClient(_Client):
    async def start(self) -> DeltaClient:
        self.call = self.stub.DeltaAggregatedResources(self._requests())
        self._start_pump()
        return self

    def request(self, type_url: str, subscribe: Iterable[str] = (), unsubscribe: Iterable[str] = (),
                nonce: str = "", initial: dict[str, str] | None = None, error: str | None = None) -> None:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
        )
        if initial:
            req.initial_resource_versions.update(initial)
        if self._first:
            req.node.CopyFrom(self.node)
            self._first = False
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._out.put_nowait(req)

    def ack(self, resp: Any) -> None:
        self.request(resp.type_url, nonce=resp.nonce)

    def nack(self, resp: Any, message: str) -> None:
        self.request(resp.type_url, nonce=resp.nonce, error=message)


def names(resp: Any) -> list[str]:
    """Resource names in a SotW or Delta response."""
    if isinstance(resp, discovery_pb2.DeltaDiscoveryResponse):
        return sorted(r.name for r in resp.resources)
    out = []
    for a in resp.resources:
        from xds_control.snapshot import types as T

        if a.type_url == T.CLUSTER:
            from envoy.config.cluster.v3 import cluster_pb2
            out.append(cluster_pb2.Cluster.FromString(a.value).name)
        elif a.type_url == T.ENDPOINT:
            from envoy.config.endpoint.v3 import endpoint_pb2
            out.append(endpoint_pb2.ClusterLoadAssignment.FromString(a.value).cluster_name)
        elif a.type_url == T.LISTENER:
            from envoy.config.listener.v3 import listener_pb2
            out.append(listener_pb2.Listener.FromString(a.value).name)
        elif a.type_url == T.ROUTE:
            from envoy.config.route.v3 import route_pb2
            out.append(route_pb2.RouteConfiguration.FromString(a.value).name)
    return sorted(out)
