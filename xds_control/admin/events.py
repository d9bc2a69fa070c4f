"""The event feed behind ``WatchEvents``: a bounded, sequence-numbered log with async waiting.

:class:`EventLog` is a ``deque`` of dicts fed by the control plane's event subscription
(``ControlPlanePort.subscribe_events``) and the admin's own actions: every ``append`` stamps a sequence number
(``seq``, from 1, never reused while the process lives) and wakes the watchers. A watcher resumes with
"events after seq N"; if the log no longer holds N+1, it is told so (a ``gap`` event) instead of silently
skipping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any


class EventLog(deque):
    def __init__(self, items: Iterable[dict[str, Any]] = (), maxlen: int = 20000) -> None:
        super().__init__(maxlen=maxlen)
        self.seq = 0
        self._waiters: set[asyncio.Future[None]] = set()
        for it in items:
            self.append(dict(it))

    def append(self, event: dict[str, Any]) -> None:
        self.seq += 1
        event["seq"] = self.seq
        event.setdefault("at", time.time())
        super().append(event)
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    @property
    def first_seq(self) -> int:
        """The oldest sequence number still held (``seq + 1`` when empty)."""
        return self[0]["seq"] if self else self.seq + 1

    def after(self, seq: int) -> Iterator[dict[str, Any]]:
        """Events with a sequence number above ``seq``, oldest first (a snapshot: safe while appending)."""
        if seq >= self.seq:
            return iter(())
        start = max(0, len(self) - (self.seq - seq))
        return iter([self[i] for i in range(start, len(self))])

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event with a sequence number above ``seq`` exists."""
        while self.seq <= seq:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.add(fut)
            try:
                await fut
            finally:
                self._waiters.discard(fut)
