"""Leader election on a ``coordination.k8s.io/v1`` Lease, with client-go's algorithm and timings.

Every replica of the control plane runs a :class:`LeaseElector`. The holder of the Lease is the
leader: only it decides replica counts and scales (see :mod:`xds_control.actuators.kubernetes` and the
controller's follower mode). Every replica serves xDS either way.

Algorithm (client-go ``leaderelection``), every ``retry_period_s``:

1. GET the Lease (404: create it with ourselves as holder; a 409 AlreadyExists means someone else won).
2. If another identity holds it and the Lease has changed within the last ``lease_duration_s`` *as observed
   on our own monotonic clock* (a change is a new ``resourceVersion``), it is held: do nothing. Clocks
   of different nodes are never compared.
3. Otherwise PUT it with ourselves as holder, ``renewTime`` now, carrying the ``resourceVersion`` we read:
   if someone else wrote in between, the server answers 409 Conflict and we lost this round.

Safety: a leader counts as leader only while its last successful renewal is younger than
``renew_deadline_s`` (:meth:`LeaseElector.is_leader` computes this on every call, so even a stuck
renewal loop stops its decisions in time). A contender waits ``lease_duration_s`` after the last change
it saw, and ``renew_deadline_s < lease_duration_s``, so two replicas never decide at once (given clocks
that run at the same rate). Losing the Lease therefore stops decisions within one lease period. On a
clean shutdown the leader releases the Lease (empty holder, duration 1 s) so a follower takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient, CoordinationV1Api
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

__all__ = ["LeaseElector", "default_identity"]


def default_identity() -> str:
    """``$POD_NAME`` (the Downward API) or the host name, plus a random suffix (a restarted process is new)."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


def _micro_time(t: float | None = None) -> str:
    dt = datetime.fromtimestamp(time.time() if t is None else t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Contends for one Lease; :meth:`is_leader` says whether this replica may decide right now.

    Args:
        api_client: a ``kubernetes.client.ApiClient`` (kubeconfig or in-cluster).
        name, namespace: the Lease.
        identity: this replica's holder identity (unique per process).
        lease_duration_s, renew_deadline_s, retry_period_s: client-go's LeaderElectionConfig.
        on_change: called with True when this replica starts leading and False when it stops.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(self, api_client: ApiClient, name: str, namespace: str, identity: str | None = None, *,
                 lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0, retry_period_s: float = 2.0,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not retry_period_s < renew_deadline_s < lease_duration_s:
            raise ValueError("need retry_period_s < renew_deadline_s < lease_duration_s")
        self.api = CoordinationV1Api(api_client)
        self.name, self.namespace = name, namespace
        self.identity = identity or default_identity()
        self.lease_duration_s, self.renew_deadline_s, self.retry_period_s = (
            lease_duration_s, renew_deadline_s, retry_period_s)
        self.on_change = on_change
        self.clock = clock
        self._renewed_at: float | None = None  # our clock, last successful acquire/renew
        self._observed_rv: str | None = None
        self._observed_at = 0.0
        self._was_leader = False
        self.holder: str | None = None
        self.transitions = 0
        self.last_error: str | None = None
        self._stopped = False

    # -- the answer everyone asks -------------------------------------------------------------------
    def is_leader(self) -> bool:
        """True only while our last renewal is younger than ``renew_deadline_s``."""
        r = self._renewed_at
        return r is not None and not self._stopped and self.clock() - r < self.renew_deadline_s

    async def wait_leader(self, timeout_s: float | None = None) -> None:
        async def poll() -> None:
            while not self.is_leader():
                await asyncio.sleep(min(0.05, self.retry_period_s))
        await asyncio.wait_for(poll(), timeout_s)

    # -- the loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Try to acquire or renew every ``retry_period_s`` until cancelled; releases the Lease on the way out."""
        try:
            while True:
                try:
                    await asyncio.to_thread(self.try_acquire_or_renew)
                except Exception as e:  # noqa: BLE001 - an unreachable apiserver must not stop the loop
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.warning("lease %s/%s: %s", self.namespace, self.name, self.last_error)
                self._notify()
                # A leader retries sooner after a failed renewal, like client-go's renew loop.
                await asyncio.sleep(self.retry_period_s)
        finally:
            was = self.is_leader()
            self._stopped = True
            self._notify()
            if was:
                try:
                    await asyncio.to_thread(self.release)
                except Exception as e:  # noqa: BLE001
                    log.warning("lease %s/%s: release failed: %s", self.namespace, self.name, e)

    def _notify(self) -> None:
        now = self.is_leader()
        if now != self._was_leader:
            self._was_leader = now
            log.warning("lease %s/%s: %s is %s the leader", self.namespace, self.name, self.identity,
                        "now" if now else "no longer")
            if self.on_change is not None:
                try:
                    self.on_change(now)
                except Exception:  # noqa: BLE001 - a listener must not break the elector
                    log.exception("leader on_change callback failed")

    # -- one round (blocking; runs in a worker thread) ---------------------------------------------------
    def try_acquire_or_renew(self) -> bool:
        now = self.clock()
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            return self._create(now)
        spec = lease.spec
        rv = lease.metadata.resource_version
        holder = spec.holder_identity or ""
        self.holder = holder or None
        if rv != self._observed_rv:
            self._observed_rv, self._observed_at = rv, now
        duration = spec.lease_duration_seconds or self.lease_duration_s
        if holder and holder != self.identity and now < self._observed_at + duration:
            if self._renewed_at is not None:  # someone else holds it: we are certainly not leading
                self._renewed_at = None
            return False
        transitions = spec.lease_transitions or 0
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": rv},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(round(self.lease_duration_s)),
                "acquireTime": _micro_time() if holder != self.identity else _fmt(spec.acquire_time),
                "renewTime": _micro_time(),
                "leaseTransitions": transitions + (1 if holder != self.identity else 0),
            },
        }
        try:
            out = self.api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as e:
            if e.status == 409:  # someone else wrote first
                return False
            raise
        self._observed_rv, self._observed_at = out.metadata.resource_version, now
        self._renewed_at = now
        self.holder = self.identity
        self.transitions = out.spec.lease_transitions or 0
        self.last_error = None
        return True

    def _create(self, now: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.lease_duration_s)),
                     "acquireTime": _micro_time(), "renewTime": _micro_time(), "leaseTransitions": 0},
        }
        try:
            out = self.api.create_namespaced_lease(self.namespace, body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        self._observed_rv, self._observed_at = out.metadata.resource_version, now
        self._renewed_at = now
        self.holder = self.identity
        return True

    def release(self) -> None:
        """Give the Lease up (client-go ReleaseOnCancel): empty holder, 1 s duration."""
        self._renewed_at = None
        lease = self.api.read_namespaced_lease(self.name, self.namespace)
        if (lease.spec.holder_identity or "") != self.identity:
            return
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "resourceVersion": lease.metadata.resource_version},
            "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": _micro_time(),
                     "acquireTime": _fmt(lease.spec.acquire_time),
                     "leaseTransitions": lease.spec.lease_transitions or 0},
        }
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as e:
            if e.status != 409:
                raise


def _fmt(t: Any) -> str | None:
    if t is None:
        return None
    if isinstance(t, datetime):
        return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(t)
