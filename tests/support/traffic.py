"""Blocking HTTP traffic through Envoy, for counting splits and failures."""

from __future__ import annotations

import collections
import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Tally:
    by_body: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_body.values()) + len(self.failures)


def _one(conn: http.client.HTTPConnection, path: str, tally: Tally) -> http.client.HTTPConnection:
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        if r.status == 200:
            tally.by_body[body] += 1
        else:
            tally.failures.append(f"{r.status} {body[:80]}")
        return conn
    except (OSError, http.client.HTTPException) as e:
        tally.failures.append(repr(e))
        conn.close()
        return http.client.HTTPConnection("127.0.0.1", conn.port, timeout=10)


def send(port: int, n: int, path: str = "/") -> Tally:
    tally = Tally()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(n):
        conn = _one(conn, path, tally)
    conn.close()
    return tally


class Load:
    """Closed-loop background traffic on a few keep-alive connections until stop()."""

    def __init__(self, port: int, connections: int = 2, path: str = "/") -> None:
        self.port, self.path = port, path
        self.tally = Tally()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(connections)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            conn = _one(conn, self.path, self.tally)
            time.sleep(0.001)
        conn.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self.tally

    def __exit__(self, *exc: object) -> None:
        self.stop()
