"""Sync-status bookkeeping: states, ACK/NACK, unchanged-content bumps and waiting for ACKs."""

from __future__ import annotations

import asyncio

from xds_control.snapshot import types as T
from xds_control.xds.status import ERROR, NOT_SENT, STALE, SYNCED, SyncTracker


def test_states_follow_send_ack_nack() -> None:
    t = SyncTracker(clock=lambda: 0.0)
    p = t.connect("n1", "c", "sotw", "peer")
    st = t.type_status(p, T.CLUSTER)
    assert st.state(1) == NOT_SENT
    t.sent(p, T.CLUSTER, 1, "1")
    assert st.state(1) == STALE
    t.acked(p, T.CLUSTER)
    assert st.state(1) == SYNCED and st.acked_version == 1
    assert st.state(2) == STALE  # a newer snapshot exists
    t.sent(p, T.CLUSTER, 2, "2")
    t.nacked(p, T.CLUSTER, "bad")
    assert st.state(2) == ERROR and st.acked_version == 1 and st.error_version == 2
    t.sent(p, T.CLUSTER, 3, "3")
    t.acked(p, T.CLUSTER)
    assert st.state(3) == SYNCED and st.last_error is None


def test_mark_current_moves_acked_only_when_fully_acked() -> None:
    t = SyncTracker()
    p = t.connect("n1", "c", "sotw", "peer")
    t.sent(p, T.ENDPOINT, 1, "1")
    t.acked(p, T.ENDPOINT)
    t.mark_current(p, T.ENDPOINT, 2, awaiting_ack=False)
    assert t.type_status(p, T.ENDPOINT).acked_version == 2
    t.sent(p, T.ENDPOINT, 3, "2")
    t.mark_current(p, T.ENDPOINT, 4, awaiting_ack=True)
    st = t.type_status(p, T.ENDPOINT)
    assert st.sent_version == 4 and st.acked_version == 2
    t.acked(p, T.ENDPOINT)  # the ACK of content equal to v4
    assert st.acked_version == 4


def test_nack_and_ack_listeners_are_called() -> None:
    t = SyncTracker()
    seen: list[tuple] = []
    t.on_nack_event(lambda p, ty, v, m: seen.append(("nack", p.node_id, ty, v, m)))
    t.on_ack_event(lambda p, ty, v: seen.append(("ack", p.node_id, ty, v)))
    p = t.connect("n1", "c", "delta", "peer")
    t.sent(p, T.ROUTE, 5, "1")
    t.nacked(p, T.ROUTE, "no")
    t.sent(p, T.ROUTE, 6, "2")
    t.acked(p, T.ROUTE)
    assert seen == [("nack", "n1", T.ROUTE, 5, "no"), ("ack", "n1", T.ROUTE, 6)]


async def test_wait_acked_times_out_with_pending_then_completes() -> None:
    t = SyncTracker()
    a = t.connect("a", "c", "sotw", "p")
    b = t.connect("b", "c", "sotw", "p")
    for p in (a, b):
        t.sent(p, T.CLUSTER, 1, "1")
    t.acked(a, T.CLUSTER)
    res = await t.wait_acked(1, timeout=0.05)
    assert res.acked == ("a",) and res.pending == ("b",) and not res.complete

    async def later() -> None:
        await asyncio.sleep(0.05)
        t.acked(b, T.CLUSTER)

    task = asyncio.create_task(later())
    res = await t.wait_acked(1, timeout=2)
    await task
    assert res.ok and res.acked == ("a", "b")


async def test_wait_for_a_named_proxy_that_is_not_connected() -> None:
    t = SyncTracker()
    res = await t.wait_acked(1, nodes=["ghost"], timeout=0.05)
    assert res.pending == ("ghost",)


def test_disconnect_forgets_the_stream() -> None:
    t = SyncTracker()
    p = t.connect("a", "c", "sotw", "p")
    t.sent(p, T.CLUSTER, 1, "1")
    t.disconnect(p)
    assert t.proxies() == [] and t.syncz() == []
