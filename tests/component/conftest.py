"""Fixtures for the live-path component tests: replica processes and a real Prometheus.

Every process started here is stopped by the fixture that started it (SIGTERM,
then SIGKILL), and reaped. Helpers live in ``livehelpers.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from livehelpers import PROMETHEUS, PrometheusProc, ReplicaProc


@pytest.fixture
def start_replica() -> Iterator[Callable[..., ReplicaProc]]:
    """Factory: ``start_replica("--load-delay", "0", ready=True)``; all are stopped at teardown."""
    started: list[ReplicaProc] = []

    def start(*args: str, ready: bool = True) -> ReplicaProc:
        a = list(args)
        if "--load-delay" not in a:
            a += ["--load-delay", "0"]
        r = ReplicaProc(*a)
        started.append(r)
        if ready:
            r.wait_ready()
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def start_prometheus() -> Iterator[Callable[[list[str]], PrometheusProc]]:
    if PROMETHEUS is None:
        pytest.skip("prometheus binary not installed (apt-get install -y --no-install-recommends prometheus)")
    started: list[PrometheusProc] = []

    def start(targets: list[str]) -> PrometheusProc:
        p = PrometheusProc(targets)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
