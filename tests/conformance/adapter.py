"""An adapter for ii/xds-test-harness: its Adapter gRPC API (SetState, ClearState, AddResource, UpdateResource,
RemoveResource) over xds-control's own xDS server.

The harness sets state through the adapter and checks what its xDS client then receives from the server under
test. Here the adapter turns each call into a new :class:`~xds_control.snapshot.Snapshot` in the
:class:`~xds_control.xds.cache.SnapshotCache` that a real :class:`~xds_control.xds.server.AdsServer` serves, so the
harness exercises the server exactly as Envoy does (ADS, Delta ADS and the non-aggregated LDS/CDS/RDS/EDS
services), not the control loop above it.

The harness names versions ("1", "2"): a type's SotW ``version_info`` and Delta ``system_version_info`` are the
version the harness last set for that type, and a resource's Delta version is the version it was set, updated or
added at. Resources carry only their names (the harness sends ``Cluster{name}``, ``Listener{name}``,
``ClusterLoadAssignment{cluster_name}``, ``RouteConfiguration{name}``); an update changes the resource's version
and content, as the harness's own example adapter does.

The Adapter's message classes are generated at run time from the harness checkout's ``api/adapter/adapter.proto``
(:func:`load_adapter_api`), so nothing of the harness is copied here.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from xds_control.snapshot import Resource, Snapshot
from xds_control.snapshot import types as T
from xds_control.snapshot.wire import any_bytes, delta_resource_bytes
from xds_control.xds.cache import SnapshotCache

#: type URL -> (message class, the field naming the resource)
KINDS: dict[str, tuple[Any, str]] = {
    T.CLUSTER: (cluster_pb2.Cluster, "name"),
    T.LISTENER: (listener_pb2.Listener, "name"),
    T.ROUTE: (route_pb2.RouteConfiguration, "name"),
    T.ENDPOINT: (endpoint_pb2.ClusterLoadAssignment, "cluster_name"),
}


def load_adapter_api(harness_src: Path, out: Path) -> tuple[ModuleType, ModuleType]:
    """Generate ``adapter_pb2`` / ``adapter_pb2_grpc`` from the harness checkout into ``out`` and import them."""
    from grpc_tools import protoc

    proto_dir = harness_src / "api" / "adapter"
    out.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{Path(protoc.__file__).parent / '_proto'}",
                      f"--python_out={out}", f"--grpc_python_out={out}", str(proto_dir / "adapter.proto")])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {proto_dir / 'adapter.proto'}")
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("adapter_pb2"), importlib.import_module("adapter_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def _resource(type_url: str, name: str, version: str, generation: int = 0) -> Resource:
    cls, key = KINDS[type_url]
    msg = cls(**{key: name})
    if generation and type_url == T.CLUSTER:
        msg.dns_refresh_rate.seconds = 5 * generation  # content changes with each update
    elif generation and type_url == T.LISTENER:
        msg.tcp_backlog_size.value = 5 * generation
    elif generation and type_url == T.ROUTE:
        msg.internal_only_headers.append(f"x-generation-{generation}")
    elif generation and type_url == T.ENDPOINT:
        msg.policy.endpoint_stale_after.seconds = 5 * generation
    body = msg.SerializeToString(deterministic=True)
    packed = any_bytes(type_url, body)
    return Resource(type_url=type_url, name=name, version=version, body=body, packed=packed,
                    delta=delta_resource_bytes(name, version, packed))


def _int_version(version: str, fallback: int) -> int:
    try:
        return int(version)
    except ValueError:
        return fallback


@dataclass
class HarnessState:
    """What the harness has set, turned into snapshots of ``cache`` (one global state: the harness uses one node)."""

    cache: SnapshotCache
    resources: dict[str, dict[str, Resource]] = field(default_factory=lambda: {t: {} for t in T.ORDER})
    type_versions: dict[str, int] = field(default_factory=dict)
    generations: dict[tuple[str, str], int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    _version: int = 0

    def publish(self, reason: str) -> None:
        self._version += 1
        self.calls.append(reason)
        self.cache.set_snapshot(Snapshot(self._version, {t: dict(r) for t, r in self.resources.items()},
                                         dict(self.type_versions), reason=reason))

    def set_state(self, version: str, anys: list[Any]) -> None:
        self.resources = {t: {} for t in T.ORDER}
        self.type_versions = {}
        self.generations = {}
        for a in anys:
            if a.type_url not in KINDS:
                continue
            cls, key = KINDS[a.type_url]
            name = getattr(cls.FromString(a.value), key)
            self.resources[a.type_url][name] = _resource(a.type_url, name, version)
            self.type_versions[a.type_url] = _int_version(version, 1)
        self.publish(f"SetState v{version}")

    def clear(self) -> None:
        self.resources = {t: {} for t in T.ORDER}
        self.type_versions = {}
        self.publish("ClearState")

    def add(self, type_url: str, name: str, version: str) -> None:
        self.resources[type_url][name] = _resource(type_url, name, version)
        self.type_versions[type_url] = _int_version(version, self.type_versions.get(type_url, 0) + 1)
        self.publish(f"AddResource {T.SHORT[type_url]} {name} v{version}")

    def update(self, type_url: str, name: str, version: str) -> None:
        if name not in self.resources[type_url]:
            raise KeyError(f"{T.SHORT[type_url]} {name!r} does not exist")
        gen = self.generations.get((type_url, name), 0) + 1
        self.generations[(type_url, name)] = gen
        self.resources[type_url][name] = _resource(type_url, name, version, gen)
        self.type_versions[type_url] = _int_version(version, self.type_versions.get(type_url, 0) + 1)
        self.publish(f"UpdateResource {T.SHORT[type_url]} {name} v{version}")

    def remove(self, type_url: str, name: str, version: str) -> None:
        self.resources[type_url].pop(name, None)
        self.type_versions[type_url] = _int_version(version, self.type_versions.get(type_url, 0) + 1)
        self.publish(f"RemoveResource {T.SHORT[type_url]} {name}")


def adapter_servicer(pb2: ModuleType, pb2_grpc: ModuleType, state: HarnessState) -> Any:
    """An ``Adapter`` servicer (grpc.aio) over ``state``; a call for an unknown type URL is INVALID_ARGUMENT."""

    class Adapter(pb2_grpc.AdapterServicer):  # type: ignore[misc,name-defined]
        async def SetState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
            state.set_state(request.version, list(request.resources))
            return pb2.SetStateResponse(success=True)

        async def ClearState(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
            state.clear()
            return pb2.clearStateResponse(response="All Clear")

        async def _one(self, request: Any, context: grpc.aio.ServicerContext, fn: Any) -> None:
            if request.typeUrl not in KINDS:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown typeUrl {request.typeUrl!r}")
            try:
                fn(request.typeUrl, request.resourceName, request.version)
            except KeyError as e:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(e))

        async def AddResource(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
            await self._one(request, context, state.add)
            return pb2.AddResourceResponse(success=True)

        async def UpdateResource(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
            await self._one(request, context, state.update)
            return pb2.UpdateResourceResponse(success=True)

        async def RemoveResource(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
            await self._one(request, context, state.remove)
            return pb2.RemoveResourceResponse(success=True)

    return Adapter()
