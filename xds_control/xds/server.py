"""Aggregated Discovery Service over grpc.aio: State-of-the-World and Delta, and the same streams as the
non-aggregated Listener, Cluster, Route and Endpoint discovery services (one type each; the type URL implicit).

The server depends only on :class:`~xds_control.xds.cache.SnapshotCache` (what to
serve), :class:`~xds_control.xds.status.SyncTracker` (where each proxy is) and
:class:`~xds_control.xds.metrics.XdsMetrics`. It follows Envoy's xds_protocol
document:

* every response carries a fresh nonce; an ACK/NACK is a request echoing it, a
  NACK is one with ``error_detail``;
* SotW: a request with a stale nonce (not the last one sent for its type) is
  ignored; a response is sent only when what the proxy subscribed to differs from
  what it was last sent (so a NACKed version is never re-sent in a loop); CDS and
  LDS carry the full state; the first request of a type with no names is a legacy
  wildcard, which ends when a later request names resources without ``*``;
* Delta: subscription changes are honoured whatever the nonce; the first request's
  ``initial_resource_versions`` say what the proxy already has (nothing it already
  holds is re-sent); deleted resources go out in ``removed_resources``;
* names requested before they exist are remembered and sent when they appear;
* make-before-break ordering per stream: CDS -> EDS -> LDS -> RDS. LDS waits for
  the ACK of CDS and EDS, RDS for LDS (at most ``ack_timeout_s`` each). In SotW,
  EDS waits for the CDS ACK and is re-sent after any CDS change; in Delta, the
  assignments of changed clusters are re-sent right after CDS (Envoy otherwise
  keeps them warming until its 15 s initial_fetch_timeout);
* one response per type in flight per stream: a slow proxy is sent only the
  latest state when it catches up (pending pushes merge);
* at most ``max_concurrent_pushes`` responses are written at once, server-wide;
* the state a client can make a stream hold is capped: at most ``max_names_per_stream`` resource names
  (10,000) and ``max_name_bytes_per_stream`` bytes of them (4 MiB), counted over every type of the stream,
  subscribed names and Delta ``initial_resource_versions`` entries (names and versions) alike. A request that
  would go over either limit is not applied: the stream ends with ``RESOURCE_EXHAUSTED`` and a message naming
  the limit, the type and the count (the proxy's last accepted config stays in force; it reconnects like after
  any stream error). Requests for unknown type URLs are ignored (logged once per stream) and hold no state;
  stale, random or future nonces are ignored as the protocol says (SotW: the request is stale; Delta: its
  subscription changes apply, nothing is ACKed).

Responses are concatenations of bytes serialized once per resource version
(see :mod:`xds_control.snapshot.wire`); SotW bodies are also shared between
streams that subscribe to the same names.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from xds_control.snapshot import Resource, Snapshot
from xds_control.snapshot import types as T
from xds_control.snapshot.wire import field_bytes, field_str
from xds_control.xds.cache import SnapshotCache
from xds_control.xds.metrics import XdsMetrics
from xds_control.xds.status import ProxyStatus, SyncTracker

log = logging.getLogger(__name__)

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
EDS_SERVICE = "envoy.service.endpoint.v3.EndpointDiscoveryService"
#: The other non-aggregated (singleton) services: (service, method suffix, the one type it carries).
SINGLETONS = (("envoy.service.listener.v3.ListenerDiscoveryService", "Listeners", T.LISTENER),
              ("envoy.service.cluster.v3.ClusterDiscoveryService", "Clusters", T.CLUSTER),
              ("envoy.service.route.v3.RouteDiscoveryService", "Routes", T.ROUTE))

# Which earlier types must be ACKed before a type is sent (make-before-break).
# EDS is never gated by CDS: Envoy holds the ACK of a CDS update until the changed clusters have warmed,
# and they warm only when their assignments arrive.
_GATES = {T.CLUSTER: (), T.ENDPOINT: (), T.LISTENER: (T.CLUSTER, T.ENDPOINT),
          T.ROUTE: (T.CLUSTER, T.ENDPOINT, T.LISTENER)}


def _identity(b: bytes) -> bytes:
    return b


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise); nothing where there is no glibc."""
    global _TRIM
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


class StreamLimitExceeded(Exception):
    """A request would make its stream hold more resource names than the server allows."""


class _Sub:
    """Per-stream, per-type protocol state (both variants)."""

    __slots__ = ("type_url", "requested", "legacy_wildcard", "explicit_wildcard", "names", "sent_key",
                 "inflight_nonce", "inflight_since", "expired", "last_nonce", "force", "known", "must_resend",
                 "first_pending", "slot", "slot_timer", "recent_nonces", "charge")

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.requested = False
        self.legacy_wildcard = False
        self.explicit_wildcard = False
        self.names: set[str] = set()
        #: SotW: content key of the last response sent (what the proxy was told).
        self.sent_key: tuple[tuple[str, str], ...] | None = None
        self.inflight_nonce: str | None = None
        self.inflight_since = 0.0
        #: The in-flight response was not answered within ack_timeout_s: it no longer gates anything
        #: (a late ACK is still recognised by its nonce).
        self.expired = False
        #: The nonce of the last response sent for this type ("" before any).
        self.last_nonce = ""
        #: SotW: send even if unchanged (EDS after a CDS change).
        self.force = False
        #: Delta: name -> version the proxy holds (or was last sent).
        self.known: dict[str, str] = {}
        #: Delta: names to re-send although their version did not change.
        self.must_resend: set[str] = set()
        #: Delta: the first request gets a response even when nothing differs.
        self.first_pending = False
        #: Holds one of the server-wide push slots until the response is ACKed, NACKed or timed out, or
        #: ``slot_hold_s`` passed (``slot_timer``), whichever comes first.
        self.slot = False
        self.slot_timer: asyncio.TimerHandle | None = None
        #: SotW: the last nonces sent for this type (shared nonces must not repeat on one stream).
        self.recent_nonces: deque[str] = deque(maxlen=8)
        #: What the client made this type hold: (names, bytes) of its subscribed names and Delta
        #: initial_resource_versions (counted against the per-stream caps).
        self.charge = (0, 0)

    def awaiting(self, now: float, timeout: float) -> bool:
        """An answer to the in-flight response is still expected (and so it gates later types)."""
        return self.inflight_nonce is not None and not self.expired and now - self.inflight_since < timeout

    @property
    def wildcard(self) -> bool:
        return self.legacy_wildcard or self.explicit_wildcard

    def wanted(self, snap: Snapshot) -> list[Resource]:
        res = snap.of(self.type_url)
        if self.wildcard:
            return [res[n] for n in sorted(res)]
        return [res[n] for n in sorted(self.names) if n in res]


class _Stream:
    """State shared by the reader and writer of one ADS stream."""

    def __init__(self, server: AdsServer, protocol: str, peer: str, only: str | None = None) -> None:
        self.server = server
        self.protocol = protocol
        self.peer = peer
        #: A non-aggregated stream's one type (None: ADS, every type).
        self.only = only
        self.subs: dict[str, _Sub] = {t: _Sub(t) for t in T.ORDER}
        self.proxy: ProxyStatus | None = None
        self.wake = asyncio.Event()
        self.closed = False
        self.nonce = 0
        self.error: BaseException | None = None
        #: A response to this proxy went unanswered for ack_timeout_s: until it answers again, its responses
        #: take no push slot, so a proxy that stopped reading cannot hold up the pushes to the others.
        self.slow = False
        self.unknown_logged = False

    def next_nonce(self) -> str:
        self.nonce += 1
        return str(self.nonce)

    def on_snapshot(self, _snap: Snapshot) -> None:
        self.wake.set()


class AdsServer:
    def __init__(
        self,
        cache: SnapshotCache,
        tracker: SyncTracker,
        metrics: XdsMetrics | None = None,
        *,
        ack_timeout_s: float = 5.0,
        max_concurrent_pushes: int = 100,
        slot_hold_s: float = 1.0,
        max_names_per_stream: int = 10_000,
        max_name_bytes_per_stream: int = 4 * 1024 * 1024,
    ) -> None:
        self.cache = cache
        self.tracker = tracker
        self.metrics = metrics or XdsMetrics()
        self.ack_timeout_s = ack_timeout_s
        #: Whether a heap trim is scheduled after streams refused for a limit (see _serve).
        self._trim_pending = False
        #: A push slot is given back after this long even without an answer (the stream still waits for the
        #: ACK up to ack_timeout_s): proxies that are slow to read delay the others by at most this.
        self.slot_hold_s = min(slot_hold_s, ack_timeout_s)
        self._push_slots = asyncio.Semaphore(max_concurrent_pushes)
        self.max_names_per_stream = max_names_per_stream
        self.max_name_bytes_per_stream = max_name_bytes_per_stream
        #: SotW responses shared by streams: key -> (body without nonce, body with nonce, nonce).
        self._bodies: OrderedDict[tuple[Any, ...], tuple[bytes, bytes, str]] = OrderedDict()
        self._nonces = itertools.count(1)
        self._streams: set[_Stream] = set()

    # -- registration -------------------------------------------------------------------------
    def _handlers(self, service: str, sotw: str, delta: str, only: str | None = None) -> grpc.GenericRpcHandler:
        """``only``: the one type a non-aggregated (singleton) service carries; None for ADS."""

        async def sotw_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for out in self._serve("sotw", requests, context, only):
                yield out

        async def delta_stream(requests: AsyncIterator[Any],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            async for out in self._serve("delta", requests, context, only):
                yield out

        return grpc.method_handlers_generic_handler(
            service,
            {
                sotw: grpc.stream_stream_rpc_method_handler(
                    sotw_stream,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=_identity,
                ),
                delta: grpc.stream_stream_rpc_method_handler(
                    delta_stream,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=_identity,
                ),
            },
        )

    def handler(self) -> grpc.GenericRpcHandler:
        return self._handlers(SERVICE, "StreamAggregatedResources", "DeltaAggregatedResources")

    def eds_handler(self) -> grpc.GenericRpcHandler:
        """The same streams as EndpointDiscoveryService (non-aggregated EDS): what an Istio sidecar patched by
        ``xds-control istio render`` opens (its ADS goes to istiod; only endpoints come from here)."""
        return self._handlers(EDS_SERVICE, "StreamEndpoints", "DeltaEndpoints", T.ENDPOINT)

    def singleton_handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """The non-aggregated services of the other types (LDS, CDS, RDS): one type per stream, the type URL
        implicit (a request may leave it empty); a request for another type on them is ignored like an unknown
        one. The same protocol as ADS otherwise, minus the cross-type ordering, which needs one stream."""
        return tuple(self._handlers(svc, f"Stream{kind}", f"Delta{kind}", t) for svc, kind, t in SINGLETONS)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((self.handler(), self.eds_handler(), *self.singleton_handlers()))

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # -- shared machinery ---------------------------------------------------------------------
    async def _serve(self, protocol: str, request_iterator: AsyncIterator[Any],
                     context: grpc.aio.ServicerContext, only: str | None = None) -> AsyncIterator[bytes]:
        st = _Stream(self, protocol, context.peer() or "", only)
        self._streams.add(st)
        unsubscribe = self.cache.subscribe(st.on_snapshot)
        self.metrics.connected.labels(protocol).inc()
        handle = self._handle_sotw if protocol == "sotw" else self._handle_delta
        reader = asyncio.create_task(self._read(st, request_iterator, handle), name=f"xds-{protocol}-reader")
        try:
            while True:
                if st.closed:
                    if isinstance(st.error, StreamLimitExceeded):
                        log.warning("ending the stream of %s: %s", st.peer, st.error)
                        context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
                        context.set_details(str(st.error))
                        if not self._trim_pending:
                            # A refused request (up to 4 MiB, ~18 MB parsed) is freed with its stream, but glibc
                            # keeps the pages: give them back once, soon after a burst of refusals.
                            self._trim_pending = True
                            asyncio.get_running_loop().call_later(0.5, self._trim)
                        return
                    if st.error is not None and not isinstance(st.error, asyncio.CancelledError):
                        log.debug("stream %s ended: %r", st.peer, st.error)
                    return
                out = self._next_response(st)
                if out is not None:
                    data, sub = out
                    # A slot is held until the proxy answers: at most max_concurrent_pushes responses are
                    # buffered or in flight server-wide, which bounds memory when a big snapshot fans out.
                    # Not for a proxy that already let a response time out (st.slow), and never for longer
                    # than slot_hold_s: slow readers must not hold up the pushes to everyone else.
                    if not st.slow:
                        await self._push_slots.acquire()
                        sub.slot = True
                        sub.slot_timer = asyncio.get_running_loop().call_later(self.slot_hold_s, self._release, sub)
                    sub.inflight_since = asyncio.get_running_loop().time()
                    yield data
                    del data, out  # don't keep a big response alive while this stream sleeps
                    continue
                st.wake.clear()
                await self._wait(st)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            for sub in st.subs.values():
                self._release(sub)
            unsubscribe()
            self._streams.discard(st)
            self.metrics.connected.labels(protocol).dec()
            if st.proxy is not None:
                self.tracker.disconnect(st.proxy)

    async def _wait(self, st: _Stream) -> None:
        """Sleep until woken (request, snapshot) or until the earliest in-flight ACK times out."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadlines = [sub.inflight_since + self.ack_timeout_s for sub in st.subs.values()
                     if sub.awaiting(now, self.ack_timeout_s)]
        if not deadlines:
            await st.wake.wait()
            return
        # Never return without awaiting: a stream loop must not spin the event loop.
        timer = loop.call_later(max(0.0, min(deadlines) - now), st.wake.set)
        try:
            await st.wake.wait()
        finally:
            timer.cancel()

    async def _read(self, st: _Stream, requests: AsyncIterator[Any], handle: Any) -> None:
        it = aiter(requests)
        try:
            async for req in it:
                handle(st, req)
                st.wake.set()
        except BaseException as e:  # noqa: BLE001 - recorded, the writer ends the stream
            # Without its traceback: its frames would hold the request and ``st`` in a reference cycle.
            st.error = e.with_traceback(None)
        finally:
            st.closed = True
            st.wake.set()
            # gRPC's request iterator is an async generator suspended at its last message: left open (a request
            # refused for a limit, a cancel) it keeps that message alive with the call (measured: a refused
            # 300,000-name request is 18 MB parsed; 70 of them stayed 1.3 GB until the call objects went).
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(BaseException):
                    await aclose()

    def _trim(self) -> None:
        self._trim_pending = False
        _malloc_trim()

    def _sub_for(self, st: _Stream, type_url: str) -> _Sub | None:
        """The stream's state for the request's type; None (logged once) for a type it does not carry."""
        if st.only is not None:
            type_url = type_url or st.only  # implicit on a singleton stream
            if type_url != st.only:
                self._unknown_type(st, type_url)
                return None
        sub = st.subs.get(type_url)
        if sub is None:
            self._unknown_type(st, type_url)
        return sub

    def _unknown_type(self, st: _Stream, type_url: str) -> None:
        if not st.unknown_logged:
            st.unknown_logged = True
            log.info("ignoring requests for unsupported type %.200r from %s (logged once per stream)", type_url,
                     st.peer)

    def _precheck(self, st: _Stream, type_url: str, count: int) -> None:
        """Reject a request whose name list alone is over the cap, before building anything from it."""
        if count > self.max_names_per_stream:
            raise StreamLimitExceeded(
                f"a {T.SHORT[type_url]} request lists {count} resource names; max_names_per_stream is "
                f"{self.max_names_per_stream}")

    def _charge(self, st: _Stream, sub: _Sub, n: int, b: int) -> None:
        """Check the stream's caps with ``sub`` holding ``n`` names of ``b`` bytes; raise before applying."""
        total_n = n + sum(o.charge[0] for o in st.subs.values() if o is not sub)
        total_b = b + sum(o.charge[1] for o in st.subs.values() if o is not sub)
        if total_n > self.max_names_per_stream:
            raise StreamLimitExceeded(
                f"{T.SHORT[sub.type_url]} would make the stream hold {total_n} resource names; "
                f"max_names_per_stream is {self.max_names_per_stream}")
        if total_b > self.max_name_bytes_per_stream:
            raise StreamLimitExceeded(
                f"{T.SHORT[sub.type_url]} would make the stream hold {total_b} bytes of resource names; "
                f"max_name_bytes_per_stream is {self.max_name_bytes_per_stream}")
        sub.charge = (n, b)

    def _connect(self, st: _Stream, node: Any) -> None:
        if st.proxy is None:
            st.proxy = self.tracker.connect(node.id or "(unknown)", node.cluster, st.protocol, st.peer)

    def _gated(self, st: _Stream, type_url: str, now: float) -> bool:
        return any(st.subs[g].awaiting(now, self.ack_timeout_s) for g in _GATES[type_url])

    def _release(self, sub: _Sub) -> None:
        if sub.slot_timer is not None:
            sub.slot_timer.cancel()
            sub.slot_timer = None
        if sub.slot:
            sub.slot = False
            self._push_slots.release()

    def _next_response(self, st: _Stream) -> tuple[bytes, _Sub] | None:
        snap = self.cache.snapshot
        if snap is None or st.proxy is None:
            return None
        now = asyncio.get_running_loop().time()
        build = self._build_sotw if st.protocol == "sotw" else self._build_delta
        for t in T.ORDER:
            sub = st.subs[t]
            if not sub.requested:
                continue
            if sub.inflight_nonce is not None and not sub.expired:
                if sub.awaiting(now, self.ack_timeout_s):
                    continue  # one response of a type in flight; the next one merges pending changes
                sub.expired = True  # no answer in time: stop gating on it and free its push slot
                self._release(sub)
                st.slow = True
                log.warning("%s did not answer %s nonce %s within %.1fs", st.proxy.node_id,
                            T.SHORT[sub.type_url], sub.inflight_nonce, self.ack_timeout_s)
            if self._gated(st, t, now):
                continue
            out = build(st, sub, snap, now)
            if out is not None:
                return out, sub
        return None

    def _sent(self, st: _Stream, sub: _Sub, snap: Snapshot, nonce: str, now: float, nbytes: int) -> None:
        sub.inflight_nonce = nonce
        sub.expired = False
        sub.last_nonce = nonce
        sub.inflight_since = now
        assert st.proxy is not None
        self.tracker.sent(st.proxy, sub.type_url, snap.version, nonce)
        short = T.SHORT[sub.type_url]
        self.metrics.pushes.labels(short).inc()
        self.metrics.push_bytes.labels(short).inc(nbytes)

    def _ack_or_nack(self, st: _Stream, sub: _Sub, error: Any | None) -> None:
        assert st.proxy is not None
        sub.inflight_nonce = None
        self._release(sub)
        st.slow = False
        short = T.SHORT[sub.type_url]
        if error is not None:
            msg = error.message or f"code {error.code}"
            self.metrics.rejects.labels(short).inc()
            log.warning("NACK from %s for %s version %s: %s", st.proxy.node_id, short,
                        self.tracker.type_status(st.proxy, sub.type_url).sent_version, msg)
            self.tracker.nacked(st.proxy, sub.type_url, msg)
        else:
            self.metrics.acks.labels(short).inc()
            self.tracker.acked(st.proxy, sub.type_url)
            self._observe_convergence(st.proxy)

    def _observe_convergence(self, proxy: ProxyStatus) -> None:
        snap = self.cache.snapshot
        if snap is None:
            return
        if all(ts.acked_version == snap.version for ts in proxy.types.values()):
            at = self.cache.set_at.get(snap.version)
            if at is not None and getattr(proxy, "_converged_version", None) != snap.version:
                proxy._converged_version = snap.version  # type: ignore[attr-defined]  # a private mark, not a field
                self.metrics.convergence.observe(max(0.0, self.tracker._clock() - at))

    # -- State of the World -------------------------------------------------------------------
    def _handle_sotw(self, st: _Stream, req: discovery_pb2.DiscoveryRequest) -> None:
        self._connect(st, req.node)
        sub = self._sub_for(st, req.type_url)
        if sub is None:
            return
        self._precheck(st, sub.type_url, len(req.resource_names))
        nonce = req.response_nonce
        if sub.requested and nonce != sub.last_nonce:
            # Stale: a request answering an older response; a newer one is on its way.
            self.metrics.stale_nonces.labels(T.SHORT[sub.type_url]).inc()
            return
        names = set(req.resource_names)
        self._charge(st, sub, len(names), sum(map(len, names)))
        if not sub.requested:
            sub.legacy_wildcard = sub.type_url in T.WILDCARD_TYPES and not names
        elif names and "*" not in names:
            sub.legacy_wildcard = False
        sub.explicit_wildcard = "*" in names
        names.discard("*")
        sub.names = names
        sub.requested = True
        if nonce and sub.inflight_nonce == nonce:
            self._ack_or_nack(st, sub, req.error_detail if req.HasField("error_detail") else None)

    def _build_sotw(self, st: _Stream, sub: _Sub, snap: Snapshot, now: float) -> bytes | None:
        wanted = sub.wanted(snap)
        key = tuple((r.name, r.version) for r in wanted)
        assert st.proxy is not None
        if key == sub.sent_key and not sub.force:
            self.tracker.mark_current(st.proxy, sub.type_url, snap.version, sub.inflight_nonce is not None)
            return None
        if sub.type_url == T.CLUSTER:
            old = dict(sub.sent_key or ())
            if any(old.get(n) != v for n, v in key if n in old):
                # Changed clusters re-warm: Envoy needs their assignments again.
                st.subs[T.ENDPOINT].force = True
        version = snap.type_version(sub.type_url)
        body_key = (snap.version, sub.type_url, "*" if sub.wildcard else key)
        entry = self._bodies.get(body_key)
        if entry is None:
            body = (field_str(1, version) + b"".join(field_bytes(2, r.packed) for r in wanted)
                    + field_str(4, sub.type_url))
            nonce = self._new_nonce(snap)
            entry = (body, body + field_str(5, nonce), nonce)
            self._bodies[body_key] = entry
            self._trim_bodies(snap.version)
        body, out, nonce = entry
        if nonce in sub.recent_nonces:
            # This stream got this very response before: it needs a nonce of its own.
            nonce = self._new_nonce(snap)
            out = body + field_str(5, nonce)
        # Otherwise every stream subscribing to the same names shares one bytes object (nonces only
        # have to be unique within a stream), so a fan-out copies nothing.
        sub.recent_nonces.append(nonce)
        sub.sent_key = key
        sub.force = False
        self._sent(st, sub, snap, nonce, now, len(out))
        return out

    def _new_nonce(self, snap: Snapshot) -> str:
        return f"{snap.version}-{next(self._nonces)}"

    def _trim_bodies(self, current: int) -> None:
        while self._bodies:
            oldest = next(iter(self._bodies))
            if oldest[0] >= current - 1 and len(self._bodies) <= 256:
                break
            self._bodies.popitem(last=False)

    # -- Delta ------------------------------------------------------------------------------------
    def _handle_delta(self, st: _Stream, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        self._connect(st, req.node)
        sub = self._sub_for(st, req.type_url)
        if sub is None:
            return
        first = not sub.requested
        self._precheck(st, sub.type_url,
                       len(req.resource_names_subscribe) + (len(req.initial_resource_versions) if first else 0))
        subscribe = set(req.resource_names_subscribe)
        unsubscribe = set(req.resource_names_unsubscribe)
        added = subscribe - unsubscribe - sub.names - {"*"}
        dropped = unsubscribe & sub.names
        n = sub.charge[0] + len(added) - len(dropped)
        b = sub.charge[1] + sum(map(len, added)) - sum(map(len, dropped))
        if first:
            n += len(req.initial_resource_versions)
            b += sum(len(k) + len(v) for k, v in req.initial_resource_versions.items())
        self._charge(st, sub, n, b)
        if not sub.requested:
            sub.requested = True
            sub.first_pending = True
            sub.known = dict(req.initial_resource_versions)
            sub.legacy_wildcard = sub.type_url in T.WILDCARD_TYPES and not subscribe
        elif subscribe and sub.legacy_wildcard and "*" not in subscribe:
            # Naming resources ends the legacy wildcard; "*" must be subscribed explicitly to keep it.
            sub.legacy_wildcard = False
        if "*" in subscribe:
            sub.explicit_wildcard = True
        if "*" in unsubscribe:
            sub.explicit_wildcard = False
            sub.legacy_wildcard = False
        sub.names |= subscribe - {"*"}
        sub.names -= unsubscribe
        for n in unsubscribe:
            # The proxy forgot it; if a wildcard still covers it, it is sent again.
            sub.known.pop(n, None)
        if subscribe:
            # A (re-)subscription asks for the current state even if we think it is known.
            for n in subscribe - {"*"}:
                if n not in req.initial_resource_versions:
                    sub.known.pop(n, None)
        nonce = req.response_nonce
        if nonce and nonce == sub.inflight_nonce:
            self._ack_or_nack(st, sub, req.error_detail if req.HasField("error_detail") else None)

    def _build_delta(self, st: _Stream, sub: _Sub, snap: Snapshot, now: float) -> bytes | None:
        res = snap.of(sub.type_url)
        wanted = sub.wanted(snap)
        updates = [r for r in wanted if sub.known.get(r.name) != r.version or r.name in sub.must_resend]
        removed = sorted(n for n in sub.known if n not in res and (sub.wildcard or n in sub.names))
        assert st.proxy is not None
        if not updates and not removed and not sub.first_pending:
            self.tracker.mark_current(st.proxy, sub.type_url, snap.version, sub.inflight_nonce is not None)
            return None
        if sub.type_url == T.CLUSTER:
            changed = {r.name for r in updates if r.name in sub.known}
            eds = st.subs[T.ENDPOINT]
            eds.must_resend |= changed & (eds.names | (set(res) if eds.wildcard else set()))
        for r in updates:
            sub.known[r.name] = r.version
            sub.must_resend.discard(r.name)
        for n in removed:
            del sub.known[n]
        sub.first_pending = False
        nonce = st.next_nonce()
        out = b"".join(
            [field_str(1, snap.type_version(sub.type_url))]
            + [field_bytes(2, r.delta) for r in updates]
            + [field_str(4, sub.type_url)]
            + [field_str(6, n) for n in removed]
            + [field_str(5, nonce)]
        )
        self._sent(st, sub, snap, nonce, now, len(out))
        return out
