"""Per-proxy sync status (like Istio's syncz) and waiting for ACKs.

For every connected stream and every type it has requested, the tracker knows the
snapshot version whose content was last sent, the one last ACKed, and the last
NACK. Versions are snapshot versions (ints): when a newer snapshot leaves the
content a stream would get unchanged, the server calls :meth:`mark_current`, so
"ACKed version >= V" means "holds exactly what snapshot V says".

States per (proxy, type), relative to the cache's current snapshot version ``cur``:

* ``NOT_SENT`` — requested, nothing sent yet;
* ``ERROR``    — the last response was rejected (NACK); the proxy keeps its last good config;
* ``STALE``    — sent or pending, not yet ACKed at ``cur``;
* ``SYNCED``   — ACKed at ``cur``.

Single-threaded asyncio: all methods run on the event loop; none blocks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from xds_control.snapshot import types as T

SYNCED, STALE, NOT_SENT, ERROR = "SYNCED", "STALE", "NOT_SENT", "ERROR"


@dataclass
class TypeStatus:
    type_url: str
    sent_version: int | None = None
    sent_nonce: str = ""
    sent_at: float | None = None
    acked_version: int | None = None
    acked_at: float | None = None
    #: The version ACKed before the last ACK (what the proxy held when it accepted ``acked_version``).
    prev_acked_version: int | None = None
    #: The error_detail message of the last NACK, cleared by the next ACK.
    last_error: str | None = None
    error_version: int | None = None
    error_at: float | None = None
    sends: int = 0
    acks: int = 0
    nacks: int = 0

    def state(self, current: int | None) -> str:
        if self.last_error is not None:
            return ERROR
        if self.sent_version is None:
            return NOT_SENT
        if current is not None and self.acked_version is not None and self.acked_version >= current:
            return SYNCED
        return STALE


@dataclass
class ProxyStatus:
    stream_id: int
    node_id: str
    node_cluster: str
    protocol: str  # "sotw" | "delta"
    peer: str
    connected_at: float
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def acked_at_least(self, version: int, types: Iterable[str] | None = None) -> bool:
        wanted = set(types) if types is not None else None
        for t, st in self.types.items():
            if wanted is not None and t not in wanted:
                continue
            if st.acked_version is None or st.acked_version < version:
                return False
        return True

    def rejected_at_least(self, version: int, types: Iterable[str] | None = None) -> str | None:
        wanted = set(types) if types is not None else None
        for t, st in self.types.items():
            if wanted is not None and t not in wanted:
                continue
            if st.last_error is not None and (st.error_version or 0) >= version:
                return f"{T.SHORT.get(t, t)}: {st.last_error}"
        return None


@dataclass(frozen=True)
class AckResult:
    """Outcome of :meth:`SyncTracker.wait_acked`. ``complete`` is True when no proxy is pending."""

    version: int
    acked: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]
    pending: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.pending

    @property
    def ok(self) -> bool:
        return not self.pending and not self.rejected


@dataclass(eq=False)
class _Waiter:
    version: int
    types: frozenset[str] | None
    nodes: frozenset[str] | None
    pending: set[int]
    missing: set[str]
    selected: set[int]
    event: asyncio.Event

    def done(self, p: ProxyStatus) -> bool:
        return (p.rejected_at_least(self.version, self.types) is not None
                or p.acked_at_least(self.version, self.types))

    def check(self) -> None:
        if not self.pending and not self.missing:
            self.event.set()


NackListener = Callable[[ProxyStatus, str, int, str], None]
AckListener = Callable[[ProxyStatus, str, int], None]


class SyncTracker:
    """Records sends, ACKs and NACKs; lets callers wait until proxies hold a version."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._proxies: dict[int, ProxyStatus] = {}
        self._ids = itertools.count(1)
        self._waiters: set[_Waiter] = set()
        self._nack_listeners: list[NackListener] = []
        self._ack_listeners: list[AckListener] = []
        #: version -> monotonic time it was set in the cache, for convergence metrics.
        self.version_set_at: dict[int, float] = {}
        self.current_version: int | None = None

    # -- listeners ---------------------------------------------------------------------------
    def on_nack_event(self, fn: NackListener) -> None:
        self._nack_listeners.append(fn)

    def on_ack_event(self, fn: AckListener) -> None:
        self._ack_listeners.append(fn)

    def _touch(self, p: ProxyStatus) -> None:
        """Re-check only the waiters that wait for ``p``: O(waiters), never O(proxies)."""
        for w in self._waiters:
            if p.stream_id in w.pending and w.done(p):
                w.pending.discard(p.stream_id)
                w.check()

    # -- stream lifecycle --------------------------------------------------------------------
    def connect(self, node_id: str, node_cluster: str, protocol: str, peer: str) -> ProxyStatus:
        sid = next(self._ids)
        p = ProxyStatus(sid, node_id, node_cluster, protocol, peer, self._clock())
        self._proxies[sid] = p
        for w in self._waiters:
            if w.nodes is not None and node_id in w.nodes:
                w.missing.discard(node_id)
                w.pending.add(sid)
                w.selected.add(sid)
        return p

    def disconnect(self, proxy: ProxyStatus) -> None:
        self._proxies.pop(proxy.stream_id, None)
        for w in self._waiters:
            if proxy.stream_id in w.pending:
                w.pending.discard(proxy.stream_id)
                w.selected.discard(proxy.stream_id)
                if w.nodes is not None and not any(q.node_id == proxy.node_id for q in self._proxies.values()):
                    w.missing.add(proxy.node_id)
                w.check()

    def type_status(self, proxy: ProxyStatus, type_url: str) -> TypeStatus:
        st = proxy.types.get(type_url)
        if st is None:
            st = proxy.types[type_url] = TypeStatus(type_url)
        return st

    # -- events from the server --------------------------------------------------------------
    def sent(self, proxy: ProxyStatus, type_url: str, version: int, nonce: str) -> None:
        st = self.type_status(proxy, type_url)
        st.sent_version, st.sent_nonce, st.sent_at = version, nonce, self._clock()
        st.sends += 1

    def acked(self, proxy: ProxyStatus, type_url: str) -> None:
        st = self.type_status(proxy, type_url)
        st.prev_acked_version = st.acked_version
        st.acked_version, st.acked_at = st.sent_version, self._clock()
        st.acks += 1
        st.last_error = None
        for fn in self._ack_listeners:
            fn(proxy, type_url, st.acked_version or 0)
        self._touch(proxy)

    def nacked(self, proxy: ProxyStatus, type_url: str, message: str) -> None:
        st = self.type_status(proxy, type_url)
        st.last_error = message or "(no message)"
        st.error_version = st.sent_version
        st.error_at = self._clock()
        st.nacks += 1
        for fn in self._nack_listeners:
            fn(proxy, type_url, st.sent_version or 0, st.last_error)
        self._touch(proxy)

    def mark_current(self, proxy: ProxyStatus, type_url: str, version: int, awaiting_ack: bool) -> None:
        """The stream's content for ``type_url`` is unchanged in snapshot ``version``."""
        st = self.type_status(proxy, type_url)
        if st.sent_version is None or st.sent_version >= version:
            return
        fully_acked = st.acked_version is not None and st.acked_version == st.sent_version and not awaiting_ack
        st.sent_version = version
        if st.last_error is not None:
            st.error_version = version
        elif fully_acked:
            st.acked_version = version
            self._touch(proxy)

    # -- queries ------------------------------------------------------------------------------
    def proxies(self) -> list[ProxyStatus]:
        return sorted(self._proxies.values(), key=lambda p: (p.node_id, p.stream_id))

    def _select(self, nodes: Iterable[str] | None) -> list[ProxyStatus]:
        if nodes is None:
            return list(self._proxies.values())
        wanted = set(nodes)
        return [p for p in self._proxies.values() if p.node_id in wanted]

    def result(self, version: int, nodes: Iterable[str] | None = None,
               types: Iterable[str] | None = None, streams: set[int] | None = None) -> AckResult:
        types = tuple(types) if types is not None else None
        acked, rejected, pending = [], [], []
        for p in self._select(nodes):
            if streams is not None and p.stream_id not in streams:
                continue
            err = p.rejected_at_least(version, types)
            if err is not None:
                rejected.append((p.node_id, err))
            elif p.acked_at_least(version, types):
                acked.append(p.node_id)
            else:
                pending.append(p.node_id)
        return AckResult(version, tuple(sorted(acked)), tuple(sorted(rejected)), tuple(sorted(pending)))

    async def wait_acked(
        self,
        version: int,
        nodes: Iterable[str] | None = None,
        timeout: float | None = None,
        types: Iterable[str] | None = None,
    ) -> AckResult:
        """Wait until every selected proxy has ACKed (or rejected) ``version``.

        ``nodes`` selects proxies by node id; when None, the streams connected when the
        wait starts are selected (a proxy connecting later gets the newest version on
        its own). ``types`` restricts the check (all requested types when None). Named
        proxies that are not connected count as pending until they connect and ACK.
        Returns when nothing is pending or ``timeout`` seconds passed; the result says
        who is where. Cost: each ACK re-checks only the waiters waiting for its proxy.
        """
        node_set = frozenset(nodes) if nodes is not None else None
        type_set = frozenset(types) if types is not None else None
        selected = {p.stream_id for p in self._select(node_set)}
        w = _Waiter(version, type_set, node_set, set(), set(), selected, asyncio.Event())
        w.pending = {sid for sid in selected if not w.done(self._proxies[sid])}
        w.missing = set(node_set or ()) - {p.node_id for p in self._proxies.values()}
        if w.pending or w.missing:
            self._waiters.add(w)
            try:
                await asyncio.wait_for(w.event.wait(), timeout)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(w)
        res = self.result(version, node_set, type_set, streams=w.selected)
        if w.missing:
            res = AckResult(res.version, res.acked, res.rejected, tuple(sorted(set(res.pending) | w.missing)))
        return res

    def syncz(self) -> list[dict[str, object]]:
        """A JSON-ready view like Istio's /debug/syncz."""
        cur = self.current_version
        out: list[dict[str, object]] = []
        for p in self.proxies():
            out.append(
                {
                    "node": p.node_id,
                    "cluster": p.node_cluster,
                    "stream": p.stream_id,
                    "protocol": p.protocol,
                    "peer": p.peer,
                    "types": {
                        T.SHORT.get(t, t): {
                            "state": st.state(cur),
                            "sent": st.sent_version,
                            "nonce": st.sent_nonce,
                            "acked": st.acked_version,
                            "error": st.last_error,
                            "error_version": st.error_version,
                        }
                        for t, st in sorted(
                            p.types.items(), key=lambda kv: T.ORDER.index(kv[0]) if kv[0] in T.ORDER else 9
                        )
                    },
                }
            )
        return out
