"""WatchEvents never skips silently: a watcher resuming behind the buffered events gets a ``gap`` event first.

Driven on the real servicer over a real control plane's port, with a small event log (5 events) so the buffer
really wraps; the same code path serves a slow watcher that fell more than the log's length behind.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from support.cp import config_dict, running
from support.ports import free_port

from xds_control.admin.auth import ANONYMOUS, PRINCIPAL
from xds_control.admin.events import EventLog
from xds_control.admin.service import AdminServicer
from xds_control.runtime.admin_port import RuntimeAdminPort


class _Context:
    async def abort(self, code: Any, message: str) -> None:  # pragma: no cover - a failure path
        raise AssertionError(f"aborted: {code} {message}")


async def _watch(servicer: AdminServicer, after: int) -> list[Any]:
    req = SimpleNamespace(service="", kinds=[], after_seq=after, follow=False)
    return [ev async for ev in servicer.WatchEvents(req, _Context())]


async def test_a_watcher_behind_the_buffer_gets_a_gap_then_the_rest_in_order() -> None:
    async with running(config_dict(listener_port=free_port())) as cp:
        log = EventLog(maxlen=5)
        servicer = AdminServicer(RuntimeAdminPort(cp), log)
        for i in range(12):
            log.append({"kind": "note", "message": f"event {i + 1}"})
        PRINCIPAL.set(ANONYMOUS)
        got = await _watch(servicer, after=2)  # events 3..7 were dropped from the 5-event buffer
        assert got[0].kind == "gap" and got[0].seq == 7 and "3..7" in got[0].message
        assert [e.seq for e in got[1:]] == [8, 9, 10, 11, 12]
        # resuming within the buffer: no gap, nothing missed, nothing twice
        got = await _watch(servicer, after=9)
        assert [(e.kind, e.seq) for e in got] == [("note", 10), ("note", 11), ("note", 12)]
        # up to date: nothing
        assert await _watch(servicer, after=12) == []
