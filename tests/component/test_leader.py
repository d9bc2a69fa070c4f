"""Leader election on a coordination.k8s.io/v1 Lease: the real client against the fake apiserver."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakekube import FakeKube

from xds_control.actuators.kubernetes import make_api_client
from xds_control.actuators.leader import LeaseElector

pytestmark = pytest.mark.timeout(60)

TIMINGS = {"lease_duration_s": 1.5, "renew_deadline_s": 1.0, "retry_period_s": 0.1}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as k:
        yield k


def elector(kube: FakeKube, tmp_path: Path, ident: str) -> LeaseElector:
    client = make_api_client(str(kube.kubeconfig(tmp_path / f"kc-{ident}", token=f"token-{ident}")))
    return LeaseElector(client, "xds-control", "default", ident, **TIMINGS)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(*els: LeaseElector):  # type: ignore[no-untyped-def]
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


async def sample_leaders(els: list[LeaseElector], seconds: float, out: list[tuple[float, tuple[str, ...]]]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append((time.monotonic(), tuple(e.identity for e in els if e.is_leader())))
        await asyncio.sleep(0.01)


async def test_one_leader_and_handover_on_release(kube: FakeKube, tmp_path: Path) -> None:
    a, b = elector(kube, tmp_path, "a"), elector(kube, tmp_path, "b")
    async with running(a) as (ta,):
        await a.wait_leader(20)
        async with running(b):
            seen: list[tuple[float, tuple[str, ...]]] = []
            await sample_leaders([a, b], 0.8, seen)
            assert all(ids == ("a",) for _, ids in seen)
            lease = kube.leases[("default", "xds-control")]
            assert lease["spec"]["holderIdentity"] == "a" and lease["spec"]["leaseDurationSeconds"] == 2
            # Requirement (README "Leader election"): a clean stop releases the Lease, so b takes over without
            # waiting a lease period.
            t0 = time.monotonic()
            ta.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ta
            assert not a.is_leader()
            await b.wait_leader(20)
            assert time.monotonic() - t0 < TIMINGS["lease_duration_s"]
            assert kube.leases[("default", "xds-control")]["spec"]["leaseTransitions"] == 1
    assert ("create", "leases") in kube.requests and ("update", "leases") in kube.requests


async def test_cut_off_leader_stops_deciding_within_one_lease_period(kube: FakeKube, tmp_path: Path) -> None:
    a, b = elector(kube, tmp_path, "a"), elector(kube, tmp_path, "b")
    changes: list[tuple[float, bool]] = []
    a.on_change = lambda leading: changes.append((time.monotonic(), leading))
    async with running(a):  # a starts alone, so it wins the first election
        await a.wait_leader(20)
        async with running(b):
            await asyncio.sleep(0.3)
            assert not b.is_leader()
            # a can no longer reach the apiserver (its renewals fail); b still can.
            t_cut = time.monotonic()
            kube.blocked_tokens.add("token-a")
            seen: list[tuple[float, tuple[str, ...]]] = []
            sampler = asyncio.create_task(sample_leaders([a, b], 3.0, seen))
            await b.wait_leader(20)
            t_b = time.monotonic()
            await sampler
            t_a_stopped = next(t for t, ids in seen if "a" not in ids)
            # Losing the lease stops a's decisions within one lease period (in fact within the renew deadline),
            assert t_a_stopped - t_cut <= TIMINGS["lease_duration_s"]
            # b waits a full lease period after the last renewal it saw before taking over,
            assert t_b - t_cut >= TIMINGS["lease_duration_s"] - TIMINGS["retry_period_s"] - 0.05
            # and there is never a moment with two leaders.
            assert all(len(ids) <= 1 for _, ids in seen)
            assert changes and changes[-1][1] is False
            # a comes back: it sees b's lease and stays a follower.
            kube.blocked_tokens.clear()
            await asyncio.sleep(0.5)
            assert b.is_leader() and not a.is_leader()


async def test_concurrent_contenders_conflict_and_one_wins(kube: FakeKube, tmp_path: Path) -> None:
    els = [elector(kube, tmp_path, f"c{i}") for i in range(3)]
    async with running(*els):
        await asyncio.sleep(1.0)
        leaders = [e.identity for e in els if e.is_leader()]
        assert len(leaders) == 1
        assert kube.leases[("default", "xds-control")]["spec"]["holderIdentity"] == leaders[0]
