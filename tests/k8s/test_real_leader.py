"""Lease leader election against a real API server: each elector is its own service account (a real token), allowed
the Lease by its own RoleBinding. A leader is cut off by deleting its RoleBinding: its renewals are then refused
(403) by the real RBAC authorizer while the other elector still reaches the server.

Nothing of leader election is tested on tests/fakekube: the real server does all of it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from k8s.cluster import Cluster

from xds_control.actuators.kubernetes import make_api_client
from xds_control.actuators.leader import LeaseElector

pytestmark = pytest.mark.timeout(90)

TIMINGS = {"lease_duration_s": 1.5, "renew_deadline_s": 1.0, "retry_period_s": 0.1}


def elector(cluster: Cluster, ns: str, tmp_path: Path, ident: str) -> LeaseElector:
    cluster.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ident}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": f"lease-{ident}"},
         "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "verbs": ["get", "create", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": f"lease-{ident}"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"lease-{ident}"},
         "subjects": [{"kind": "ServiceAccount", "name": ident, "namespace": ns}]},
    ], ns)
    kc = cluster.sa_kubeconfig(tmp_path / f"kc-{ident}", ns, ident)
    return LeaseElector(make_api_client(str(kc)), "xds-control", ns, ident, **TIMINGS)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(*els: LeaseElector) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(e.run(), name=f"elector-{e.identity}") for e in els]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for e in els:
            e.api.api_client.close()


async def sample(els: list[LeaseElector], seconds: float, out: list[tuple[float, tuple[str, ...]]]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append((time.monotonic(), tuple(e.identity for e in els if e.is_leader())))
        await asyncio.sleep(0.01)


def lease(cluster: Cluster, ns: str) -> dict:  # type: ignore[type-arg]
    return cluster.admin("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/xds-control")  # type: ignore[no-any-return]


async def test_one_leader_and_handover_on_release(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    a, b = elector(cluster, ns, tmp_path, "a"), elector(cluster, ns, tmp_path, "b")
    async with running(a) as (ta,):
        await a.wait_leader(20)
        async with running(b):
            seen: list[tuple[float, tuple[str, ...]]] = []
            await sample([a, b], 0.8, seen)
            assert all(ids == ("a",) for _, ids in seen)
            spec = lease(cluster, ns)["spec"]
            assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 2
            # README "Leader election": a clean stop releases the Lease, so b takes over without waiting a lease period.
            t0 = time.monotonic()
            ta.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ta
            assert not a.is_leader()
            await b.wait_leader(20)
            assert time.monotonic() - t0 < TIMINGS["lease_duration_s"]
            assert lease(cluster, ns)["spec"]["leaseTransitions"] == 1


async def test_cut_off_leader_stops_deciding_within_one_lease_period(cluster: Cluster, ns: str,
                                                                   tmp_path: Path) -> None:
    a, b = elector(cluster, ns, tmp_path, "a"), elector(cluster, ns, tmp_path, "b")
    changes: list[tuple[float, bool]] = []
    a.on_change = lambda leading: changes.append((time.monotonic(), leading))
    async with running(a):
        await a.wait_leader(20)
        async with running(b):
            await asyncio.sleep(0.3)
            assert not b.is_leader()
            # a loses its access to the Lease: the real authorizer refuses its renewals from now on.
            t_cut = time.monotonic()
            cluster.admin("DELETE", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/lease-a")
            seen: list[tuple[float, tuple[str, ...]]] = []
            sampler = asyncio.create_task(sample([a, b], 3.0, seen))
            await b.wait_leader(20)
            t_b = time.monotonic()
            await sampler
            t_a_stopped = next(t for t, ids in seen if "a" not in ids)
            assert t_a_stopped - t_cut <= TIMINGS["lease_duration_s"]
            assert t_b - t_cut >= TIMINGS["lease_duration_s"] - TIMINGS["retry_period_s"] - 0.05
            assert all(len(ids) <= 1 for _, ids in seen)  # never two leaders
            assert changes and changes[-1][1] is False
            assert a.last_error is not None and "403" in a.last_error, a.last_error
            assert lease(cluster, ns)["spec"]["holderIdentity"] == "b"


async def test_concurrent_contenders_conflict_and_one_wins(cluster: Cluster, ns: str, tmp_path: Path) -> None:
    els = [elector(cluster, ns, tmp_path, f"c{i}") for i in range(3)]
    async with running(*els):
        await asyncio.sleep(1.5)
        leaders = [e.identity for e in els if e.is_leader()]
        assert len(leaders) == 1
        assert lease(cluster, ns)["spec"]["holderIdentity"] == leaders[0]
