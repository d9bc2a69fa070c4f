"""The snapshot cache: the only thing the xDS server reads configuration from.

Contract (after go-control-plane's ConfigWatcher): the server never builds
resources and the cache never touches gRPC. ``set_snapshot`` accepts only
snapshots with a higher version than the current one (they were checked
consistent when built); every subscriber callback runs synchronously, on the
event loop, right after the swap and must only schedule work (set an event).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from xds_control.snapshot import Snapshot

Subscriber = Callable[[Snapshot], None]


class SnapshotCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshot: Snapshot | None = None
        self._subscribers: set[Subscriber] = set()
        self._clock = clock
        #: version -> monotonic time it became current (kept for the last 64 versions).
        self.set_at: dict[int, float] = {}

    @property
    def snapshot(self) -> Snapshot | None:
        """The current snapshot, or None before the first one (the server then sends nothing)."""
        return self._snapshot

    def set_snapshot(self, snap: Snapshot) -> None:
        cur = self._snapshot
        if cur is not None and snap.version <= cur.version:
            raise ValueError(f"snapshot version {snap.version} is not newer than the current {cur.version}")
        self._snapshot = snap
        self.set_at[snap.version] = self._clock()
        if len(self.set_at) > 64:
            for v in sorted(self.set_at)[:-64]:
                del self.set_at[v]
        for fn in list(self._subscribers):
            fn(snap)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn`` on every new snapshot; returns the function that unsubscribes."""
        self._subscribers.add(fn)
        return lambda: self._subscribers.discard(fn)
