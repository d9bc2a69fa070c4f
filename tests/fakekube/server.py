"""A small, faithful kube-apiserver stand-in: exactly the REST paths xds-control uses.

No kube-apiserver can be installed on these machines, so the real ``kubernetes``
client talks to this HTTP server on 127.0.0.1 instead. It implements, with the
behaviour documented in the Kubernetes API reference and API concepts pages:

=========================================================================  ===================
``GET   /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale``            read the Scale
``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale``            merge / strategic merge
``PATCH /api/v1/namespaces/{ns}/pods/{name}``                               annotations only
``GET   /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices``          list and ``watch=true``
``GET   /apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}``        read
``POST  /apis/coordination.k8s.io/v1/namespaces/{ns}/leases``               create
``PUT   /apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}``        replace
``GET   /api/v1/namespaces/{ns}/configmaps/{name}``                         read
``POST  /api/v1/namespaces/{ns}/configmaps``                                create
``PATCH /api/v1/namespaces/{ns}/configmaps/{name}``                         merge / strategic merge
=========================================================================  ===================

Behaviour kept from the real server:

* one cluster-wide, monotonically increasing ``resourceVersion``; every write bumps it;
* optimistic concurrency: a write carrying ``metadata.resourceVersion`` that is not the
  object's current one is refused with ``409 Conflict`` (Status reason ``Conflict``);
  creating an existing lease is ``409 AlreadyExists``; a missing object is ``404 NotFound``;
* list returns ``metadata.resourceVersion`` of the collection; ``watch=true`` streams
  newline-delimited JSON events (chunked) after the given ``resourceVersion``, with
  ``labelSelector`` (``k=v``, ``k!=v``, ``k in (a,b)``), ``timeoutSeconds`` (the server ends
  the watch) and ``allowWatchBookmarks`` (``BOOKMARK`` events carrying only
  ``metadata.resourceVersion``);
* a watch from a ``resourceVersion`` older than the retained history (see :meth:`FakeKube.compact`)
  gets HTTP 200 and a single ``ERROR`` event with a ``410`` Status (reason ``Expired``): the
  client must relist;
* EndpointSlices are derived from pods like the EndpointSlice controller does: one slice per
  service and port set, endpoints with ``conditions.ready/serving/terminating``, ``nodeName``,
  ``zone`` and a Pod ``targetRef``; pods without an IP are not listed;
* scaling a deployment creates pods, or terminates the ones the ReplicaSet controller would pick
  (a simplification of its ranking: unscheduled, then not ready, then lower
  ``controller.kubernetes.io/pod-deletion-cost``, then newer). Terminating pods stay in their
  slice with ``ready=false, terminating=true`` for ``termination_s``.

Every request is recorded in :attr:`FakeKube.requests` as ``(verb, resource)`` so tests can
check the RBAC rules against what the client really did.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (``null`` deletes). For the maps patched here (scale spec, pod
    annotations) a strategic merge patch has the same effect."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def parse_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """Equality- and set-based label selectors (``a=b,c!=d,e in (f,g),h notin (i),j,!k``)."""
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text or ""):
        part = part.strip().strip(",").strip()
        if not part:
            continue
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", part)
        if m:
            key, op, vals = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                reqs.append(lambda l, k=key, vs=vals: l.get(k) in vs)
            else:
                reqs.append(lambda l, k=key, vs=vals: l.get(k) not in vs)
        elif "!=" in part:
            k, v = (s.strip() for s in part.split("!=", 1))
            reqs.append(lambda l, k=k, v=v: l.get(k) != v)
        elif "=" in part:
            k, v = (s.strip() for s in part.replace("==", "=").split("=", 1))
            reqs.append(lambda l, k=k, v=v: l.get(k) == v)
        elif part.startswith("!"):
            k = part[1:].strip()
            reqs.append(lambda l, k=k: k not in l)
        else:
            reqs.append(lambda l, k=part: k in l)
    return lambda labels: all(r(labels) for r in reqs)


@dataclass
class Pod:
    name: str
    namespace: str
    deployment: str
    ip: str | None
    port: int
    node: str
    zone: str
    created: float
    ready: bool = False
    deletion_cost: int = 0
    terminating: bool = False
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    resource_version: str = "0"

    def manifest(self) -> dict[str, Any]:
        ann = {DELETION_COST: str(self.deletion_cost)} if self.deletion_cost else {}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                             "resourceVersion": self.resource_version, "labels": {"app": self.deployment},
                             "annotations": ann},
                "spec": {"nodeName": self.node, "containers": [{"name": "server", "image": "inference-server"}]},
                "status": {"podIP": self.ip, "phase": "Running" if self.ip else "Pending"}}


@dataclass
class Deployment:
    name: str
    namespace: str
    service: str
    replicas: int
    port: int
    port_name: str
    zones: tuple[str, ...]
    nodes: tuple[str, ...]
    ready_after_s: float | None
    termination_s: float
    address: Callable[[int], tuple[str, int]] | None
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    resource_version: str = "0"
    created: int = 0


class FakeKube:
    """The fake apiserver. ``with FakeKube() as kube:`` starts it on a free loopback port."""

    def __init__(self, *, bookmark_interval_s: float = 1.0, token: str | None = "test-token",
                 tls: tuple[Path, Path] | None = None) -> None:
        #: (certificate chain, key) to serve HTTPS like a real apiserver (see :func:`make_tls`); plain HTTP if None.
        self.tls = tls
        self.bookmark_interval_s = bookmark_interval_s
        self.token = token
        #: Further accepted bearer tokens (one per simulated client).
        self.extra_tokens: set[str] = set()
        self._cond = threading.Condition(threading.RLock())
        self._rv = 100
        self.deployments: dict[tuple[str, str], Deployment] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        #: (rv, namespace, event type, object) of EndpointSlice changes, oldest first.
        self._events: list[tuple[int, str, str, dict[str, Any]]] = []
        self._compacted = 0
        self.requests: list[tuple[str, str]] = []
        #: (verb, resource, bearer token) of every request, for telling clients apart.
        self.requests_by: list[tuple[str, str, str]] = []
        #: Bearer tokens whose requests get 503 (a client cut off from the apiserver).
        self.blocked_tokens: set[str] = set()
        #: Called (without the lock) after every scale read, before the answer is sent: lets a test
        #: play a concurrent writer.
        self.on_scale_read: Callable[[str], None] | None = None
        self.conflicts = 0
        #: ``ip:port`` of every pod that began terminating, in order.
        self.terminated: list[str] = []
        self._watch_generation = 0
        #: Status code every lease request gets (e.g. 503 for an apiserver the leader cannot reach).
        self.lease_failure: int | None = None
        self.open_watches = 0
        self._timers: set[threading.Timer] = set()
        self._ips = itertools.count(2)
        self._stopping = False
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> FakeKube:
        kube = self

        class Handler(_Handler):
            fake = kube

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakekube", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for t in self._timers:
                t.cancel()
            self._timers.clear()
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        deadline = time.monotonic() + 3
        while self.open_watches and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig for this server; a ``token`` other than the default one is accepted from now on."""
        if token is not None and token != self.token:
            self.extra_tokens.add(token)
        return kubeconfig_for(self.url, path, token or self.token)

    # -- the simulated cluster ----------------------------------------------------------------------------
    def _bump(self) -> str:
        self._rv += 1
        return str(self._rv)

    def add_deployment(self, name: str, *, namespace: str = "default", service: str | None = None,
                       replicas: int = 0, port: int = 8000, port_name: str = "http",
                       zones: tuple[str, ...] = ("zone-a", "zone-b"), nodes: tuple[str, ...] = ("node-1", "node-2"),
                       ready_after_s: float | None = None, termination_s: float = 0.3,
                       address: Callable[[int], tuple[str, int]] | None = None) -> Deployment:
        """A Deployment whose pods back ``service``. ``address(i)`` gives the i-th pod's IP and port
        (default: 127.0.1.N and ``port``); ``ready_after_s`` None = pods become ready only by :meth:`set_ready`."""
        with self._cond:
            d = Deployment(name, namespace, service or name, 0, port, port_name, tuple(zones), tuple(nodes),
                           ready_after_s, termination_s, address, resource_version=self._bump())
            self.deployments[(namespace, name)] = d
            self._set_replicas(d, replicas)
            return d

    def pods_of(self, deployment: str, namespace: str = "default") -> list[Pod]:
        with self._cond:
            return sorted((p for p in self.pods.values() if p.deployment == deployment and p.namespace == namespace),
                          key=lambda p: p.created)

    def replicas(self, deployment: str, namespace: str = "default") -> int:
        with self._cond:
            return self.deployments[(namespace, deployment)].replicas

    def set_ready(self, pod: str, ready: bool = True, namespace: str = "default") -> None:
        with self._cond:
            p = self.pods.get((namespace, pod))
            if p is not None and not p.terminating and p.ready != ready:
                p.ready = ready
                p.resource_version = self._bump()
                self._sync_slices(p.namespace, self.deployments[(namespace, p.deployment)].service)

    def terminate(self, pod: str, namespace: str = "default") -> None:
        """A pod goes away for reasons of its own (eviction, node drain); the Deployment replaces it."""
        with self._cond:
            p = self.pods[(namespace, pod)]
            d = self.deployments[(namespace, p.deployment)]
            self._begin_termination(p, d)
            self._reconcile(d)

    def compact(self) -> None:
        """Forget the watch history (etcd compaction) and end every open watch (as an apiserver restart
        does): a client that resumes from a resourceVersion it saw before gets 410 Gone."""
        with self._cond:
            self._compacted = int(self._bump())
            self._events.clear()
            self._watch_generation += 1
            self._cond.notify_all()

    def set_scale(self, deployment: str, replicas: int, namespace: str = "default") -> None:
        """Another writer (kubectl scale) changes the replica count."""
        with self._cond:
            self._set_replicas(self.deployments[(namespace, deployment)], replicas)

    def _set_replicas(self, d: Deployment, n: int) -> None:
        d.replicas = n
        d.resource_version = self._bump()
        self._reconcile(d)

    def _reconcile(self, d: Deployment) -> None:
        active = [p for p in self.pods.values() if p.deployment == d.name and p.namespace == d.namespace
                  and not p.terminating]
        for _ in range(d.replicas - len(active)):
            i = d.created
            d.created += 1
            ip, port = d.address(i) if d.address else (f"127.0.1.{next(self._ips) % 250 + 2}", d.port)
            p = Pod(f"{d.name}-{uuid.uuid4().hex[:5]}", d.namespace, d.name, ip, port,
                    d.nodes[i % len(d.nodes)] if d.nodes else "", d.zones[i % len(d.zones)] if d.zones else "",
                    created=time.time() + i * 1e-6, resource_version=self._bump())
            self.pods[(d.namespace, p.name)] = p
            if d.ready_after_s is not None:
                self._later(d.ready_after_s, self.set_ready, p.name, True, d.namespace)
        if len(active) > d.replicas:
            # The ReplicaSet controller's choice (simplified ActivePodsWithRanks): unscheduled first, then
            # not ready, then the lowest deletion cost, then the newest.
            ranked = sorted(active, key=lambda p: (p.ip is not None, p.ready, p.deletion_cost, -p.created))
            for p in ranked[: len(active) - d.replicas]:
                self._begin_termination(p, d)
        self._sync_slices(d.namespace, d.service)

    def _begin_termination(self, p: Pod, d: Deployment) -> None:
        if p.terminating:
            return
        p.terminating, p.ready = True, False
        self.terminated.append(f"{p.ip}:{p.port}")
        p.resource_version = self._bump()
        self._later(d.termination_s, self._remove_pod, p.namespace, p.name)

    def _remove_pod(self, namespace: str, name: str) -> None:
        with self._cond:
            p = self.pods.pop((namespace, name), None)
            if p is not None:
                self._sync_slices(namespace, self.deployments[(namespace, p.deployment)].service)

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        if self._stopping:
            return

        def run() -> None:
            self._timers.discard(t)
            if not self._stopping:
                fn(*args)

        t = threading.Timer(delay, run)
        t.daemon = True
        self._timers.add(t)
        t.start()

    def _sync_slices(self, namespace: str, service: str) -> None:
        """Rebuild the service's EndpointSlices (one per port) and emit the watch events."""
        deps = {d.name for d in self.deployments.values() if d.namespace == namespace and d.service == service}
        by_port: dict[int, list[Pod]] = {}
        for p in sorted(self.pods.values(), key=lambda p: p.created):
            if p.namespace == namespace and p.deployment in deps and p.ip:
                by_port.setdefault(p.port, []).append(p)
        port_name = next((d.port_name for d in self.deployments.values()
                          if d.namespace == namespace and d.service == service), "http")
        wanted = {f"{service}-{port}": (port, pods) for port, pods in by_port.items()}
        for (ns, name), old in list(self.slices.items()):
            if ns == namespace and old["metadata"]["labels"]["kubernetes.io/service-name"] == service \
                    and name not in wanted:
                del self.slices[(ns, name)]
                gone = copy.deepcopy(old)
                gone["metadata"]["resourceVersion"] = self._bump()
                self._emit(namespace, "DELETED", gone)
        for name, (port, pods) in wanted.items():
            endpoints = [{
                "addresses": [p.ip],
                "conditions": {"ready": p.ready, "serving": p.ready or p.terminating, "terminating": p.terminating},
                "nodeName": p.node,
                **({"zone": p.zone} if p.zone else {}),
                "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name, "uid": p.uid},
            } for p in pods]
            old = self.slices.get((namespace, name))
            if old is not None and old["endpoints"] == endpoints:
                continue
            obj = {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": namespace,
                             "uid": old["metadata"]["uid"] if old else str(uuid.uuid4()),
                             "resourceVersion": self._bump(), "creationTimestamp": _now(),
                             "labels": {"kubernetes.io/service-name": service,
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
            }
            self.slices[(namespace, name)] = obj
            self._emit(namespace, "MODIFIED" if old else "ADDED", copy.deepcopy(obj))

    def _emit(self, namespace: str, kind: str, obj: dict[str, Any]) -> None:
        self._events.append((int(obj["metadata"]["resourceVersion"]), namespace, kind, obj))
        self._cond.notify_all()

    # -- REST handlers (called with the request parsed) ---------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, str], body: Any,
               content_type: str) -> tuple[int, Any]:
        m = re.fullmatch(r"/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale", path)
        if m:
            self.requests.append(({"GET": "get", "PATCH": "patch", "PUT": "update"}.get(method, method),
                                  "deployments/scale"))
            return self._scale(method, m.group(1), m.group(2), body, content_type)
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)", path)
        if m and method == "PATCH":
            self.requests.append(("patch", "pods"))
            return self._patch_pod(m.group(1), m.group(2), body, content_type)
        m = re.fullmatch(r"/apis/coordination.k8s.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?", path)
        if m:
            verb = {"GET": "get", "POST": "create", "PUT": "update"}.get(method, method)
            self.requests.append((verb, "leases"))
            if self.lease_failure:
                return self.lease_failure, _status(self.lease_failure, "ServiceUnavailable", "injected failure")
            return self._lease(method, m.group(1), m.group(2), body)
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?", path)
        if m:
            self.requests.append(({"GET": "get", "POST": "create", "PATCH": "patch"}.get(method, method),
                                  "configmaps"))
            return self._configmap(method, m.group(1), m.group(2), body, content_type)
        return 404, _status(404, "NotFound", f"the server could not find the requested resource ({method} {path})")

    def _create(self, store: dict[tuple[str, str], dict[str, Any]], ns: str, body: Any, resource: str, group: str,
                api_version: str, kind: str) -> tuple[int, Any]:
        """POST of a new object into ``store`` (the caller holds the lock): 422 without a name, 409 if it exists."""
        name = ((body or {}).get("metadata") or {}).get("name")
        if not name:
            return 422, _status(422, "Invalid", "metadata.name: Required value")
        if (ns, name) in store:
            full = f"{resource}.{group}" if group else resource
            extra = {"group": group} if group else {}
            return 409, _status(409, "AlreadyExists", f'{full} "{name}" already exists', name=name, kind=resource,
                                **extra)
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion=self._bump(),
                               creationTimestamp=_now())
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", kind)
        store[(ns, name)] = obj
        return 201, obj

    def _configmap(self, method: str, ns: str, name: str | None, body: Any, ctype: str) -> tuple[int, Any]:
        with self._cond:
            if method == "POST" and name is None:
                return self._create(self.configmaps, ns, body, "configmaps", "", "v1", "ConfigMap")
            cur = self.configmaps.get((ns, name or ""))
            if cur is None:
                return 404, _status(404, "NotFound", f'configmaps "{name}" not found', name=name, kind="configmaps")
            if method == "GET":
                return 200, cur
            if method == "PATCH":
                if not any(t in ctype for t in ("merge-patch+json", "strategic-merge-patch+json")):
                    return 415, _status(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
                new = merge_patch(cur, body)
                new["metadata"] = {**cur["metadata"], "resourceVersion": self._bump()}
                self.configmaps[(ns, name or "")] = new
                return 200, new
            return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")

    def _scale(self, method: str, ns: str, name: str, body: Any, ctype: str) -> tuple[int, Any]:
        with self._cond:
            d = self.deployments.get((ns, name))
            if d is None:
                return 404, _status(404, "NotFound", f'deployments.apps "{name}" not found', name=name,
                                    group="apps", kind="deployments")
            if method == "PATCH":
                if not any(t in ctype for t in ("merge-patch+json", "strategic-merge-patch+json")):
                    return 415, _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                                        f"format - accepted media types include: application/merge-patch+json, "
                                        f"application/strategic-merge-patch+json ({ctype})")
                rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
                if rv is not None and rv != d.resource_version:
                    self.conflicts += 1
                    return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on deployments.apps '
                                        f'"{name}": the object has been modified; please apply your changes to '
                                        f'the latest version and try again', name=name, group="apps",
                                        kind="deployments")
                new = merge_patch(self._scale_obj(d), body)
                replicas = (new.get("spec") or {}).get("replicas", 0)
                if not isinstance(replicas, int) or replicas < 0:
                    return 422, _status(422, "Invalid", f"Scale.autoscaling \"{name}\" is invalid: "
                                        f"spec.replicas: Invalid value: {replicas!r}: must be greater than or "
                                        f"equal to 0")
                if replicas != d.replicas:
                    self._set_replicas(d, replicas)
            elif method != "GET":
                return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")
            return 200, self._scale_obj(d)

    def _scale_obj(self, d: Deployment) -> dict[str, Any]:
        ready = sum(1 for p in self.pods.values() if p.deployment == d.name and p.namespace == d.namespace
                    and p.ready)
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": d.name, "namespace": d.namespace, "uid": d.uid,
                             "resourceVersion": d.resource_version},
                "spec": {"replicas": d.replicas},
                "status": {"replicas": ready, "selector": f"app={d.name}"}}

    def _patch_pod(self, ns: str, name: str, body: Any, ctype: str) -> tuple[int, Any]:
        with self._cond:
            p = self.pods.get((ns, name))
            if p is None:
                return 404, _status(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")
            rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
            if rv is not None and rv != p.resource_version:
                return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on pods "{name}": the object '
                                    f'has been modified; please apply your changes to the latest version and try '
                                    f'again', name=name, kind="pods")
            new = merge_patch(p.manifest(), body)
            cost = (new["metadata"].get("annotations") or {}).get(DELETION_COST, "0")
            try:
                p.deletion_cost = int(cost)
            except ValueError:
                return 422, _status(422, "Invalid", f"metadata.annotations[{DELETION_COST}]: Invalid value: "
                                    f"{cost!r}: must be a 32bit integer")
            p.resource_version = self._bump()
            return 200, p.manifest()

    def _lease(self, method: str, ns: str, name: str | None, body: Any) -> tuple[int, Any]:
        with self._cond:
            if method == "POST" and name is None:
                return self._create(self.leases, ns, body, "leases", "coordination.k8s.io", "coordination.k8s.io/v1",
                                    "Lease")
            cur = self.leases.get((ns, name or ""))
            if cur is None:
                return 404, _status(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found', name=name,
                                    group="coordination.k8s.io", kind="leases")
            if method == "GET":
                return 200, cur
            if method == "PUT":
                rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
                if rv is not None and rv != cur["metadata"]["resourceVersion"]:
                    self.conflicts += 1
                    return 409, _status(409, "Conflict", f'Operation cannot be fulfilled on leases.coordination.k8s.io '
                                        f'"{name}": the object has been modified; please apply your changes to the '
                                        f'latest version and try again', name=name,
                                        group="coordination.k8s.io", kind="leases")
                obj = copy.deepcopy(body)
                obj["metadata"].update(namespace=ns, name=name, uid=cur["metadata"]["uid"],
                                       resourceVersion=self._bump(),
                                       creationTimestamp=cur["metadata"].get("creationTimestamp"))
                obj.setdefault("apiVersion", "coordination.k8s.io/v1")
                obj.setdefault("kind", "Lease")
                self.leases[(ns, name)] = obj
                return 200, obj
            return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")

    # -- list and watch of EndpointSlices -------------------------------------------------------------------
    def list_slices(self, ns: str, selector: str) -> dict[str, Any]:
        match = parse_selector(selector)
        with self._cond:
            items = [copy.deepcopy(o) for (n, _), o in sorted(self.slices.items())
                     if n == ns and match(o["metadata"].get("labels", {}))]
            return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                    "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def watch_slices(self, ns: str, query: dict[str, str], write: Callable[[dict[str, Any]], None]) -> None:
        match = parse_selector(query.get("labelSelector", ""))
        bookmarks = query.get("allowWatchBookmarks") == "true"
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else 1800.0
        deadline = time.monotonic() + timeout
        rv_text = query.get("resourceVersion") or ""
        with self._cond:
            if rv_text in ("", "0"):
                since = self._rv
                initial = [copy.deepcopy(o) for (n, _), o in sorted(self.slices.items())
                           if n == ns and match(o["metadata"].get("labels", {}))]
            else:
                since = int(rv_text)
                initial = []
                if since < self._compacted:
                    write({"type": "ERROR", "object": _status(
                        410, "Expired", f"too old resource version: {since} ({self._compacted})")})
                    return
        for o in initial:
            write({"type": "ADDED", "object": o})
        next_bookmark = time.monotonic() + self.bookmark_interval_s
        generation = self._watch_generation
        while True:
            with self._cond:
                if self._stopping or generation != self._watch_generation:
                    return
                now = time.monotonic()
                if now >= deadline:
                    return
                pending = [(rv, kind, o) for rv, n, kind, o in self._events
                           if rv > since and n == ns and match(o["metadata"].get("labels", {}))]
                newest = self._rv
                if not pending:
                    if bookmarks and now >= next_bookmark:
                        pass
                    else:
                        self._cond.wait(min(0.2, deadline - now, max(0.0, next_bookmark - now) + 0.001))
                        continue
            for rv, kind, o in pending:
                write({"type": kind, "object": o})
                since = rv
            if bookmarks and time.monotonic() >= next_bookmark:
                since = max(since, newest)
                write({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                                      "metadata": {"resourceVersion": str(newest)}}})
                next_bookmark = time.monotonic() + self.bookmark_interval_s


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    fake: FakeKube

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        # The auth scheme is case-insensitive (RFC 7235): the in-cluster loader sends "bearer".
        if self.fake.token is None or (scheme.lower() == "bearer" and (
                token == self.fake.token or token in self.fake.extra_tokens)):
            return True
        self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        return False

    def _dispatch(self) -> None:
        if not self._authorized():
            return
        token = (self.headers.get("Authorization") or "").partition(" ")[2]
        if token in self.fake.blocked_tokens:
            self._send(503, _status(503, "ServiceUnavailable", "injected: this client cannot reach the apiserver"))
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError as e:
            self._send(400, _status(400, "BadRequest", f"invalid JSON: {e}"))
            return
        m = re.fullmatch(r"/apis/discovery.k8s.io/v1/namespaces/([^/]+)/endpointslices", url.path)
        if m and self.command == "GET":
            if query.get("watch") in ("true", "1"):
                self.fake.requests.append(("watch", "endpointslices"))
                self.fake.requests_by.append(("watch", "endpointslices", token))
                self._watch(m.group(1), query)
            else:
                self.fake.requests.append(("list", "endpointslices"))
                self.fake.requests_by.append(("list", "endpointslices", token))
                self._send(200, self.fake.list_slices(m.group(1), query.get("labelSelector", "")))
            return
        n_before = len(self.fake.requests)
        code, obj = self.fake.handle(self.command, url.path, query, body, self.headers.get("Content-Type", ""))
        if self.fake.on_scale_read is not None and self.command == "GET" and url.path.endswith("/scale"):
            self.fake.on_scale_read(url.path)
        for verb, res in self.fake.requests[n_before:]:
            self.fake.requests_by.append((verb, res, token))
        self._send(code, obj)

    def _watch(self, ns: str, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(event: dict[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        self.fake.open_watches += 1
        try:
            self.fake.watch_slices(ns, query, write)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            self.fake.open_watches -= 1
            self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_PATCH = _dispatch
    do_DELETE = _dispatch


def kubeconfig_for(server: str, path: Path, token: str | None = "test-token", namespace: str = "default") -> Path:
    """Write a kubeconfig for ``server`` (what ``kubectl config`` would write) and return its path."""
    user: dict[str, Any] = {"token": token} if token else {}
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": user}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": namespace}}],
    }
    path.write_text(json.dumps(cfg))
    return path


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away cluster CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, tls.crt, tls.key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fakekube-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = (directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths
