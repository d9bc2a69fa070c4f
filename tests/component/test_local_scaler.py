"""LocalScaler with real replica processes.

Aspects: start -> ready -> serve -> stop; crash reaped and reported failed; ready
timeout; close() leaves no process; a parent that dies by SIGTERM, SIGKILL or
Ctrl-C leaves no orphan.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import aiohttp
import pytest

from livehelpers import ROOT, child_env

from xds_control.actuators.base import ReplicaFailed, ReplicaOptions, ReplicaState, Scaler
from xds_control.actuators.local import LocalScaler

FAST = ReplicaOptions(load_delay_s=0.2)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_start_ready_serve_stop() -> None:
    events: list[tuple[str, ReplicaState]] = []
    s = LocalScaler(default_profile="tiny", default_options=FAST, on_change=lambda i: events.append((i.id, i.state)))
    assert isinstance(s, Scaler)
    pids: list[int] = []
    try:
        a = await s.start_replica("pool-a")
        b = await s.start_replica("pool-a", options=ReplicaOptions(slow_factor=2.0))
        pids = [a.pid, b.pid]
        assert a.state == ReplicaState.STARTING and a.port != b.port and a.address == "127.0.0.1"
        ra, rb = await asyncio.gather(s.wait_ready(a.id, 10), s.wait_ready(b.id, 10))
        assert ra.state == rb.state == ReplicaState.READY
        assert ra.ready_at is not None and ra.ready_at - ra.started_at >= 0.2
        assert {i.id for i in s.list()} == {a.id, b.id}
        async with aiohttp.ClientSession() as http, \
                http.post(ra.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}) as r:
            assert r.status == 200 and r.headers["x-xds-replica"] == a.id
        t = time.monotonic()
        await s.stop_replica(a.id)
        # Requirement (stop_replica: SIGTERM, then SIGKILL after stop_timeout_s, 10 s): the replica exits on
        # SIGTERM by itself, so the stop never waits for the SIGKILL.
        assert time.monotonic() - t < 3.0
        assert not alive(a.pid)
        assert [i.id for i in s.list()] == [b.id]
        assert (a.id, ReplicaState.STOPPING) in events and (b.id, ReplicaState.READY) in events
    finally:
        await s.close()
    assert s.list() == []
    assert not any(alive(p) for p in pids)


async def test_crashed_replica_is_reaped_and_reported_failed() -> None:
    async with LocalScaler(default_profile="tiny", default_options=FAST, health_interval_s=0.05) as s:
        a = await s.start_replica("p")
        await s.wait_ready(a.id, 10)
        os.kill(a.pid, signal.SIGKILL)
        deadline = time.monotonic() + 3
        while s.get(a.id).state != ReplicaState.FAILED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        info = s.get(a.id)
        assert info.state == ReplicaState.FAILED and info.exit_code == -signal.SIGKILL
        assert not alive(a.pid)  # reaped, not a zombie
        assert a.id in [i.id for i in s.list()]  # stays visible until acknowledged
        await s.stop_replica(a.id)
        assert s.list() == []


async def test_replica_that_exits_at_start_fails_with_its_log() -> None:
    async with LocalScaler(default_profile="tiny") as s:
        a = await s.start_replica("p", options=ReplicaOptions(slow_factor=-1))  # rejected: exit 2
        with pytest.raises(ReplicaFailed) as e:
            await s.wait_ready(a.id, 10)
        assert e.value.info.exit_code == 2 and "--slow-factor" in e.value.info.reason


async def test_not_ready_in_time_is_killed_and_failed() -> None:
    async with LocalScaler(default_profile="tiny", ready_timeout_s=0.8) as s:
        a = await s.start_replica("p", options=ReplicaOptions(load_delay_s=30))
        with pytest.raises(ReplicaFailed) as e:
            await s.wait_ready(a.id, 10)
        assert "not ready after" in e.value.info.reason
        assert not alive(a.pid)


PARENT = textwrap.dedent(
    """
    import asyncio, signal, sys
    # Ctrl-C in a terminal: a runner that started the tests in the background (SIGINT ignored, inherited) must not
    # turn it into a no-op
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from xds_control.actuators.base import ReplicaOptions
    from xds_control.actuators.local import LocalScaler

    async def main():
        async with LocalScaler(default_profile="tiny", default_options=ReplicaOptions(load_delay_s=0)) as s:
            infos = [await s.start_replica("p") for _ in range(2)]
            for i in infos:
                await s.wait_ready(i.id, 20)
            print(" ".join(str(i.pid) for i in infos), flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "ctrl-c", "sigkill"])
def test_parent_death_leaves_no_orphans(sig: int) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, env=child_env(), cwd=ROOT)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().decode()
        pids = [int(x) for x in line.split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        parent.send_signal(sig)
        parent.wait(15)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), f"orphans after {signal.Signals(sig).name}: {pids}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
