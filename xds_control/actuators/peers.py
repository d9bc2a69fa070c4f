"""What the control-plane instances share so that they drain together: one ConfigMap, read and written by each.

With leader election every instance serves xDS, but only the leader decides. Without shared state a follower
never drains what the leader drains: its proxies keep sending new requests to the endpoint being drained, the
leader's in-flight check sees that traffic and waits out the drain timeout, and the leader's ACK gate covers only
its own proxies. So every instance publishes, and every instance reads, one ConfigMap (``data`` keys):

``leader``
    ``{"identity", "seq", "drains": {pool: [endpoint keys]}}``, written by the leader only: the endpoints its
    plan drains. A follower drains exactly these (and undrains the rest): see :mod:`xds_control.control.step`.
``peer.<identity>``
    ``{"seq", "routing": {pool: [endpoint keys]}}``, each instance its own: the endpoints its proxies may still
    send new requests to (every live endpoint but the drained ones whose drain they ACKed). The leader removes a
    drained endpoint only once no live peer lists it (and its in-flight count is 0, or the drain timeout passed).

Each write is a merge patch of the writer's own keys only, so writers never conflict. ``seq`` goes up on every
write and every instance rewrites its entry at least every ``heartbeat_s``: a peer is live while its ``seq`` was
seen to change within ``peer_ttl_s`` *on the reader's own monotonic clock* (clocks of different nodes are never
compared, as in leader election). The leader deletes entries silent for three ``peer_ttl_s``.

Ramps need nothing shared: every instance sees a new pod become ready in the same EndpointSlice and ramps it
on its own proxies' ACKs.

RBAC: ``configmaps`` get, create, patch in the namespace (``istio/rbac.yaml``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

__all__ = ["PeerBoard", "KubePeerBoard"]

LEADER_KEY = "leader"
PEER_PREFIX = "peer."


class PeerBoard:
    """The port the live loop uses (a single instance needs none)."""

    def leader_drains(self) -> dict[str, frozenset[str]] | None:
        """By pool, the keys the leader drains; None when no leader has shared any yet."""
        raise NotImplementedError

    def peers_routing(self) -> dict[str, frozenset[str]] | None:
        """By pool, the keys any other live instance's proxies may still send to; None: no other live instance."""
        raise NotImplementedError

    def share(self, *, leader: bool, drains: Mapping[str, frozenset[str]],
              routing: Mapping[str, frozenset[str]]) -> None:
        """This instance's current view (written by the board's own loop, not here)."""
        raise NotImplementedError


def configmap_manifest(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    """A ConfigMap of ours (labelled as managed by xds-control) holding ``data``."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "xds-control"}},
            "data": data}


def _encode(m: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
    return {p: sorted(ks) for p, ks in sorted(m.items())}


def _decode(m: Any) -> dict[str, frozenset[str]]:
    if not isinstance(m, dict):
        return {}
    return {str(p): frozenset(str(k) for k in ks) for p, ks in m.items() if isinstance(ks, list)}


class KubePeerBoard(PeerBoard):
    """:class:`PeerBoard` on a ConfigMap; :meth:`run` is the loop (a task of the control plane)."""

    def __init__(self, api_client: ApiClient, namespace: str, name: str, identity: str, *,
                 period_s: float = 0.5, heartbeat_s: float = 2.0, peer_ttl_s: float = 8.0,
                 request_timeout_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = CoreV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.period_s, self.heartbeat_s, self.peer_ttl_s = period_s, heartbeat_s, peer_ttl_s
        self.request_timeout_s = request_timeout_s
        self.clock = clock
        self._data: dict[str, str] = {}
        #: data key -> (its last value, when it was first seen with that value, on our clock)
        self._seen: dict[str, tuple[str, float]] = {}
        self._want: tuple[bool, dict[str, list[str]], dict[str, list[str]]] | None = None
        self._written: tuple[bool, dict[str, list[str]], dict[str, list[str]]] | None = None
        self._last_write = -float("inf")
        self._seq = 0
        #: Successful reads so far (tests and logs).
        self.reads = 0
        self.last_error: str | None = None

    @property
    def own_key(self) -> str:
        return PEER_PREFIX + self.identity

    # -- what the loop reads -------------------------------------------------------------------------------------
    def leader_drains(self) -> dict[str, frozenset[str]] | None:
        raw = self._data.get(LEADER_KEY)
        if raw is None:
            return None
        try:
            return _decode(json.loads(raw).get("drains"))
        except (ValueError, AttributeError):
            return None

    def live_peers(self) -> list[str]:
        now = self.clock()
        return sorted(k[len(PEER_PREFIX):] for k, (_, at) in self._seen.items()
                      if k.startswith(PEER_PREFIX) and k != self.own_key and now - at < self.peer_ttl_s)

    def peers_routing(self) -> dict[str, frozenset[str]] | None:
        peers = self.live_peers()
        if not peers:
            return None
        out: dict[str, set[str]] = {}
        for ident in peers:
            try:
                routing = _decode(json.loads(self._data.get(PEER_PREFIX + ident, "{}")).get("routing"))
            except (ValueError, AttributeError):
                continue
            for p, ks in routing.items():
                out.setdefault(p, set()).update(ks)
        return {p: frozenset(ks) for p, ks in out.items()}

    def share(self, *, leader: bool, drains: Mapping[str, frozenset[str]],
              routing: Mapping[str, frozenset[str]]) -> None:
        self._want = (leader, _encode(drains) if leader else {}, _encode(routing))

    # -- the loop -------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sync_once)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the API server may be away; we try again next period
                msg = f"{type(e).__name__}: {e}"[:300]
                if msg != self.last_error:
                    log.warning("peer board %s/%s: %s", self.namespace, self.name, msg)
                self.last_error = msg
            await asyncio.sleep(self.period_s)

    def sync_once(self) -> None:
        """Read the ConfigMap; write this instance's entries when they changed or the heartbeat is due."""
        now = self.clock()
        try:
            cm = self.api.read_namespaced_config_map(self.name, self.namespace,
                                                     _request_timeout=self.request_timeout_s)
            data = dict(cm.data or {})
        except ApiException as e:
            if e.status != 404:
                raise
            data = {}
            self._create()
        self.reads += 1
        self.last_error = None
        for k, v in data.items():
            prev = self._seen.get(k)
            if prev is None or prev[0] != v:
                self._seen[k] = (v, now)
        for k in [k for k in self._seen if k not in data]:
            del self._seen[k]
        self._data = data
        want = self._want
        if want is None:
            return
        if want == self._written and now - self._last_write < self.heartbeat_s:
            return
        leader, drains, routing = want
        self._seq += 1
        patch: dict[str, str | None] = {self.own_key: json.dumps({"seq": self._seq, "routing": routing},
                                                                 sort_keys=True)}
        if leader:
            patch[LEADER_KEY] = json.dumps({"identity": self.identity, "seq": self._seq, "drains": drains},
                                           sort_keys=True)
            for k, (_, at) in self._seen.items():
                if k.startswith(PEER_PREFIX) and k != self.own_key and now - at > 3 * self.peer_ttl_s:
                    patch[k] = None  # an instance gone for good
        self.api.patch_namespaced_config_map(self.name, self.namespace, {"data": patch},
                                             _request_timeout=self.request_timeout_s)
        self._written, self._last_write = want, now
        for k, v in patch.items():
            if v is None:
                self._data.pop(k, None)
                self._seen.pop(k, None)
            else:
                self._data[k] = v

    def _create(self) -> None:
        body = configmap_manifest(self.name, self.namespace, {})
        try:
            self.api.create_namespaced_config_map(self.namespace, body, _request_timeout=self.request_timeout_s)
        except ApiException as e:
            if e.status != 409:  # another instance created it first
                raise
