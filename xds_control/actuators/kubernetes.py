"""Kubernetes scaler: replicas are pods of Deployments, endpoints come from EndpointSlices.

Implements :class:`xds_control.actuators.base.Scaler` with the official ``kubernetes`` client:

* **Discovery**: one watch on ``discovery.k8s.io/v1`` EndpointSlices of the namespace, selected by
  ``kubernetes.io/service-name in (...)`` (the Services of the configured pools). The cache is built
  from a list (whose ``resourceVersion`` the watch starts from), kept current by watch events and
  ``BOOKMARK`` s, rebuilt from a fresh list when the server answers ``410 Gone`` (history compacted) and
  every ``resync_s`` anyway. Each endpoint becomes a :class:`ReplicaInfo`: id = the pod name
  (``targetRef``), state ``ready`` when ``conditions.ready`` (nil counts as true, as the API says),
  ``stopping`` (draining) when ``conditions.terminating``, ``starting`` otherwise; ``zone`` and ``node``
  from the slice's ``zone`` (the node's ``topology.kubernetes.io/zone``) and ``nodeName``.
  A terminating pod is out of ``live`` for the controller at once, so it leaves Envoy's rotation while
  Kubernetes gives it its termination grace period to finish in-flight requests.
* **Scale up** (:meth:`start_replica`): read the ``apps/v1`` Deployment ``scale`` subresource and patch
  ``spec.replicas`` + 1 with the ``resourceVersion`` it read as a precondition (a concurrent writer makes
  the server answer 409 Conflict and the read-modify-write is retried), so no increment is lost. The new
  pod has no address yet: the call returns a placeholder, and :meth:`pending` counts replicas asked for
  but not yet in any EndpointSlice (pods being scheduled have no IP), so the controller never asks twice.
* **Scale down a specific, drained replica** (:meth:`stop_replica`): set the pod's
  ``controller.kubernetes.io/pod-deletion-cost`` annotation to the minimum and then patch the scale
  to replicas - 1. Chosen over deleting the pod: a deleted pod is replaced by its ReplicaSet at once
  (deleting then scaling down races the ReplicaSet and starts a new GPU pod for nothing; scaling down
  then deleting lets the ReplicaSet remove a pod of its own choice first), whereas the deletion cost is
  the documented way to tell the ReplicaSet which pod to remove when the Deployment shrinks, and the
  Deployment stays the only owner of the replica count. The ReplicaSet ranks unscheduled and not-ready
  pods before the deletion cost, so the scale-down is deferred (the call returns, the controller asks
  again next tick) while any other pod of the Deployment is not ready. A pod asked to go is reported
  ``stopping`` until it leaves the slice, so it is never decremented twice.
* **Leadership**: every write first asks ``is_leader()``; a follower never patches anything
  (:meth:`start_replica` raises :class:`NotLeader`, :meth:`stop_replica` does nothing).

Blocking client calls run in worker threads; the watch runs in one daemon thread per scaler.
RBAC needed: ``deployments/scale`` get, patch; ``endpointslices`` list, watch; ``pods`` patch
(and for leader election ``leases`` get, create, update) -- see ``istio/rbac.yaml``.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import config as kube_config
from kubernetes import watch as kube_watch
from kubernetes.client import ApiClient, AppsV1Api, Configuration, CoreV1Api, DiscoveryV1Api
from kubernetes.client.rest import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

from xds_control.actuators.base import ReplicaFailed, ReplicaInfo, ReplicaOptions, ReplicaState

log = logging.getLogger(__name__)

__all__ = ["KubernetesScaler", "KubePool", "NotLeader", "make_api_client", "default_namespace"]

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MIN_DELETION_COST = str(-(2**31))
SERVICE_LABEL = "kubernetes.io/service-name"
MERGE_PATCH = "application/merge-patch+json"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class NotLeader(RuntimeError):
    """A write was attempted by a control-plane replica that does not hold the Lease."""


@dataclass(frozen=True)
class KubePool:
    pool: str
    deployment: str
    service: str
    #: EndpointSlice port to use (name or number); the slice's first port when None.
    target_port: str | int | None = None


def in_cluster(environ: Any = None, sa_dir: str = SA_DIR) -> bool:
    """Running in a pod: the API server's address in the environment and a service-account token mounted."""
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(os.path.join(sa_dir, "token"))


def incluster_client(environ: Any = None, sa_dir: str = SA_DIR) -> ApiClient:
    """The pod's service account: ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, its token
    (re-read when it rotates) and the cluster CA, all from ``sa_dir``."""
    c = Configuration()
    InClusterConfigLoader(token_filename=os.path.join(sa_dir, "token"), cert_filename=os.path.join(sa_dir, "ca.crt"),
                          environ=os.environ if environ is None else environ).load_and_set(c)
    return ApiClient(configuration=c)


def make_api_client(kubeconfig: str | None = None, context: str | None = None, *, environ: Any = None,
                    sa_dir: str = SA_DIR) -> ApiClient:
    """A kubeconfig file when given; else the in-cluster service account when running in a pod;
    else the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)."""
    if kubeconfig:
        return kube_config.new_client_from_config(config_file=os.path.expanduser(kubeconfig), context=context)
    if in_cluster(environ, sa_dir):
        return incluster_client(environ, sa_dir)
    return kube_config.new_client_from_config(context=context)


def default_namespace(kubeconfig: str | None = None, context: str | None = None, *, environ: Any = None,
                      sa_dir: str = SA_DIR) -> str:
    """The service account's namespace in-cluster, else the kubeconfig context's, else ``default``."""
    if not kubeconfig and in_cluster(environ, sa_dir):
        try:
            with open(os.path.join(sa_dir, "namespace")) as f:
                return f.read().strip() or "default"
        except OSError:
            return "default"
    try:
        path = os.path.expanduser(kubeconfig) if kubeconfig else None
        contexts, active = kube_config.list_kube_config_contexts(config_file=path)
        if context:
            active = next((c for c in contexts if c["name"] == context), active)
        return (active.get("context") or {}).get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no kubeconfig: the API default
        return "default"


class KubernetesScaler:
    """Implements :class:`xds_control.actuators.base.Scaler` on Deployments and EndpointSlices.

    Args:
        api_client: ``kubernetes.client.ApiClient`` (see :func:`make_api_client`).
        namespace: where the Deployments and Services are.
        pools: one :class:`KubePool` per autoscaled pool.
        is_leader: asked before every write (leader election); always True by default.
        resync_s: relist this often whatever the watch says.
        watch_timeout_s: ``timeoutSeconds`` of one watch request (the watch then resumes from the last
            resourceVersion seen).
        stop_timeout_s: a pod asked to go but still not terminating after this long may be asked again.
        owns_client: close ``api_client`` in :meth:`close`.
    """

    def __init__(self, api_client: ApiClient, namespace: str, pools: builtins.list[KubePool], *,
                 is_leader: Callable[[], bool] = lambda: True, resync_s: float = 300.0,
                 watch_timeout_s: int = 60, stop_timeout_s: float = 120.0, owns_client: bool = False) -> None:
        self.api_client = api_client
        self.apps = AppsV1Api(api_client)
        self.core = CoreV1Api(api_client)
        self.discovery = DiscoveryV1Api(api_client)
        self.namespace = namespace
        self.pools = {p.pool: p for p in pools}
        self._pool_of_service = {p.service: p for p in pools}
        self.is_leader = is_leader
        self.resync_s = resync_s
        self.watch_timeout_s = watch_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.owns_client = owns_client
        self._lock = threading.Lock()
        self._slices: dict[str, dict[str, Any]] = {}
        self._first_seen: dict[str, float] = {}
        self._ready_at: dict[str, float] = {}
        self._desired: dict[str, int] = {}
        #: pool -> number of our own scale writes so far (a concurrent re-read never overwrites a newer write).
        self._desired_gen: dict[str, int] = {}
        self._stop_requested: dict[str, float] = {}
        self._placeholders = 0
        self._rv: str | None = None
        self._listed_at = 0.0
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: kube_watch.Watch | None = None
        self.relists = 0
        self.watch_events = 0
        self.last_error: str | None = None
        self._closed = False

    @classmethod
    def from_config(cls, kcfg: Any, is_leader: Callable[[], bool] = lambda: True) -> KubernetesScaler:
        """Build from a :class:`xds_control.config.kubernetes.KubernetesConfig`."""
        client = make_api_client(kcfg.kubeconfig, kcfg.context)
        ns = kcfg.namespace or default_namespace(kcfg.kubeconfig, kcfg.context)
        pools = [KubePool(name, p.deployment, p.service_name, p.target_port) for name, p in kcfg.pools.items()]
        return cls(client, ns, pools, is_leader=is_leader, resync_s=kcfg.resync_s,
                   watch_timeout_s=kcfg.watch_timeout_s, stop_timeout_s=kcfg.stop_timeout_s, owns_client=True)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self, timeout_s: float = 30.0) -> None:
        """List the slices and the scales, then keep watching. Returns once the first list is in."""
        await asyncio.to_thread(self._relist)
        for p in self.pools.values():
            await asyncio.to_thread(self._read_desired, p)
        self._thread = threading.Thread(target=self._watch_loop, name="kube-endpointslice-watch", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()
            resp = getattr(w, "_resp", None)
            if resp is not None:
                try:
                    resp.shutdown()  # unblocks the watch thread's read at once (urllib3 >= 2.3)
                except Exception:  # noqa: BLE001
                    pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        if self.owns_client:
            self.api_client.close()

    async def __aenter__(self) -> KubernetesScaler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the Scaler API ------------------------------------------------------------------------------------
    def list(self) -> builtins.list[ReplicaInfo]:
        now = time.monotonic()
        out: dict[str, ReplicaInfo] = {}
        with self._lock:
            for stopped, t in builtins.list(self._stop_requested.items()):
                if now - t > self.stop_timeout_s:
                    del self._stop_requested[stopped]
            # IPv4 slices first (a dual-stack pod is in one slice per family); FQDN slices carry no IP for Envoy.
            for sl in sorted(self._slices.values(), key=lambda o: o.get("addressType") != "IPv4"):
                if sl.get("addressType") == "FQDN":
                    continue
                svc = ((sl.get("metadata") or {}).get("labels") or {}).get(SERVICE_LABEL)
                pool = self._pool_of_service.get(svc or "")
                if pool is None:
                    continue
                port = _pick_port(sl.get("ports") or [], pool.target_port)
                if port is None:
                    continue
                for ep in sl.get("endpoints") or []:
                    addrs = ep.get("addresses") or []
                    if not addrs:
                        continue
                    ref = ep.get("targetRef") or {}
                    rid: str = ref["name"] if ref.get("kind", "Pod") == "Pod" and ref.get("name") else \
                        f"{addrs[0]}:{port}"
                    cond = ep.get("conditions") or {}
                    if cond.get("terminating") or rid in self._stop_requested:
                        state = ReplicaState.STOPPING
                    elif cond.get("ready", True) is not False:
                        state = ReplicaState.READY
                    else:
                        state = ReplicaState.STARTING
                    seen = self._first_seen.setdefault(rid, time.time())
                    if state == ReplicaState.READY:
                        self._ready_at.setdefault(rid, time.time())
                    prev = out.get(rid)
                    if prev is not None and prev.state == ReplicaState.READY:
                        continue
                    out[rid] = ReplicaInfo(
                        id=rid, pool=pool.pool, profile="", address=addrs[0], port=port, pid=None, state=state,
                        started_at=seen, ready_at=self._ready_at.get(rid) if state == ReplicaState.READY else None,
                        reason="terminating" if state == ReplicaState.STOPPING else "",
                        zone=ep.get("zone") or "", node=ep.get("nodeName") or "",
                    )
            present = set(out)
            for rid in builtins.list(self._first_seen):
                if rid not in present:
                    self._first_seen.pop(rid, None)
                    self._ready_at.pop(rid, None)
                    self._stop_requested.pop(rid, None)
        return sorted(out.values(), key=lambda r: (r.started_at, r.id))

    def pending(self, pool: str, replicas: builtins.list[ReplicaInfo] | None = None) -> int:
        """Replicas the Deployment should have that are not in any EndpointSlice yet (no pod IP).

        ``replicas``: count against this :meth:`list` result, the one the caller counted live replicas from (a
        pod appearing between two lists would otherwise count in neither: the controller scaled 1 -> 2 twice)."""
        want = self._desired.get(pool)
        if want is None:
            return 0
        infos = self.list() if replicas is None else replicas
        have = sum(1 for r in infos if r.pool == pool and r.state != ReplicaState.STOPPING)
        return max(0, want - have)

    async def start_replica(self, pool: str, profile: str | None = None,
                            options: ReplicaOptions | None = None) -> ReplicaInfo:
        """Scale the pool's Deployment up by one. Returns a placeholder (the pod has no address yet)."""
        p = self._pool(pool)
        n = await asyncio.to_thread(self._scale_by, p, +1)
        self._placeholders += 1
        return ReplicaInfo(id=f"{p.deployment}#{n}", pool=pool, profile=profile or "", address="", port=0,
                           pid=None, state=ReplicaState.STARTING, started_at=time.time(),
                           reason=f"scaled {p.deployment} to {n}")

    async def stop_replica(self, replica_id: str, timeout_s: float | None = None) -> None:
        """Remove this pod (drained by the controller): deletion cost to the minimum, then scale - 1."""
        if not self.is_leader():
            log.info("not the leader: not stopping %s", replica_id)
            return
        infos = self.list()
        info = next((r for r in infos if r.id == replica_id), None)
        if info is None or info.state == ReplicaState.STOPPING:
            return
        p = self._pool(info.pool)
        busy = [r.id for r in infos if r.pool == info.pool and r.id != replica_id and r.state == ReplicaState.STARTING]
        if busy or self.pending(info.pool):
            log.info("%s: deferring the removal of %s while %s are not ready (the ReplicaSet would remove a "
                     "not-ready pod first)", p.deployment, replica_id, busy or "new pods")
            return
        await asyncio.to_thread(self._annotate, replica_id)
        with self._lock:
            self._stop_requested[replica_id] = time.monotonic()
        try:
            await asyncio.to_thread(self._scale_by, p, -1)
        except BaseException:
            with self._lock:
                self._stop_requested.pop(replica_id, None)
            raise

    async def wait_ready(self, replica_id: str, timeout_s: float | None = None) -> ReplicaInfo:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = next((r for r in self.list() if r.id == replica_id), None)
            if info is not None and info.state == ReplicaState.READY:
                return info
            if info is not None and info.state == ReplicaState.STOPPING:
                raise ReplicaFailed(info)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"replica {replica_id} not ready after {timeout_s} s")
            await asyncio.sleep(0.05)

    # -- writes (worker threads) -----------------------------------------------------------------------------
    def _pool(self, pool: str) -> KubePool:
        p = self.pools.get(pool)
        if p is None:
            raise KeyError(f"pool {pool!r} has no Kubernetes deployment (kubernetes.pools)")
        return p

    def _read_desired(self, p: KubePool) -> int:
        # A read that started before one of our own scale writes finished must not overwrite what that write
        # set (the watch thread re-reads while the controller scales: the stale 1 made it scale 1 -> 2 twice).
        with self._lock:
            gen = self._desired_gen.get(p.pool, 0)
        scale = self.apps.read_namespaced_deployment_scale(p.deployment, self.namespace)
        n = int(scale.spec.replicas or 0)
        with self._lock:
            if self._desired_gen.get(p.pool, 0) == gen:
                self._desired[p.pool] = n
            return self._desired.get(p.pool, n)

    def _scale_by(self, p: KubePool, delta: int, attempts: int = 8) -> int:
        """Read-modify-write of ``spec.replicas`` with the resourceVersion as precondition; retried on 409."""
        for _ in range(attempts):
            if not self.is_leader():
                raise NotLeader(f"not the leader: refusing to scale {p.deployment}")
            scale = self.apps.read_namespaced_deployment_scale(p.deployment, self.namespace)
            n = max(0, int(scale.spec.replicas or 0) + delta)
            body = {"metadata": {"resourceVersion": scale.metadata.resource_version}, "spec": {"replicas": n}}
            try:
                out = self.apps.patch_namespaced_deployment_scale(p.deployment, self.namespace, body,
                                                                  _content_type=MERGE_PATCH)
            except ApiException as e:
                if e.status == 409:
                    log.info("%s: scale changed under us (409 Conflict); retrying", p.deployment)
                    continue
                raise
            with self._lock:
                self._desired[p.pool] = int(out.spec.replicas or 0)
                self._desired_gen[p.pool] = self._desired_gen.get(p.pool, 0) + 1
            log.info("%s: scaled to %d", p.deployment, self._desired[p.pool])
            return self._desired[p.pool]
        raise RuntimeError(f"{p.deployment}: scale kept changing under us ({attempts} conflicts)")

    def _annotate(self, pod: str) -> None:
        if not self.is_leader():
            raise NotLeader(f"not the leader: refusing to annotate {pod}")
        self.core.patch_namespaced_pod(pod, self.namespace,
                                       {"metadata": {"annotations": {DELETION_COST: MIN_DELETION_COST}}},
                                       _content_type=MERGE_PATCH)

    # -- discovery (the watch thread) --------------------------------------------------------------------------
    def _selector(self) -> str:
        return f"{SERVICE_LABEL} in ({','.join(sorted(self._pool_of_service))})"

    def _relist(self) -> None:
        resp = self.discovery.list_namespaced_endpoint_slice(self.namespace, label_selector=self._selector(),
                                                             _preload_content=False)
        try:
            data = json.loads(resp.data)
        finally:
            resp.release_conn()
        with self._lock:
            self._slices = {o["metadata"]["name"]: o for o in data.get("items") or []}
            self._rv = (data.get("metadata") or {}).get("resourceVersion")
            self._listed_at = time.monotonic()
        self.relists += 1
        self._synced.set()

    def _watch_loop(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if self._rv is None or time.monotonic() - self._listed_at > self.resync_s:
                    self._relist()
                    for p in self.pools.values():
                        self._read_desired(p)
                self._watch_once()
                backoff = 0.2
            except ApiException as e:
                if self._stop.is_set():
                    return
                if e.status == 410:  # our resourceVersion was compacted away: relist
                    log.info("EndpointSlice watch: 410 Gone, relisting")
                    self._rv = None
                    continue
                self.last_error = f"{e.status} {e.reason}"
                log.warning("EndpointSlice watch failed: %s; retrying in %.1f s", self.last_error, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as e:  # noqa: BLE001 - connection errors: keep trying
                if self._stop.is_set():
                    return
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("EndpointSlice watch failed: %s; retrying in %.1f s", self.last_error, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _watch_once(self) -> None:
        w = kube_watch.Watch()
        self._watch = w
        timeout = int(max(1, min(self.watch_timeout_s, self.resync_s - (time.monotonic() - self._listed_at))))
        try:
            for ev in w.stream(self.discovery.list_namespaced_endpoint_slice, self.namespace,
                               label_selector=self._selector(), resource_version=self._rv,
                               allow_watch_bookmarks=True, timeout_seconds=timeout,
                               _request_timeout=(5, timeout + 10)):
                if self._stop.is_set():
                    w.stop()
                    break
                kind, obj = ev["type"], ev["raw_object"]
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                self.watch_events += 1
                with self._lock:
                    if kind in ("ADDED", "MODIFIED"):
                        self._slices[obj["metadata"]["name"]] = obj
                    elif kind == "DELETED":
                        self._slices.pop(obj["metadata"]["name"], None)
                    if rv:
                        self._rv = rv
        finally:
            self._watch = None


def _pick_port(ports: builtins.list[dict[str, Any]], want: str | int | None) -> int | None:
    if not ports:
        return None
    if want is None:
        return ports[0].get("port")
    for p in ports:
        if (isinstance(want, int) and p.get("port") == want) or p.get("name") == str(want):
            return p.get("port")
    return None
