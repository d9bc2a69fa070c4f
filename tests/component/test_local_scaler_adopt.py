"""LocalScaler with a state file: replicas outlive their scaler, a new scaler adopts them, orphans stop.

Aspects: the state file round trip (written atomically on start/stop, read back into the same replicas:
same ids, pids, ports, READY); stale entries (dead pid, a live process that is not the replica, a port
answering under another name, malformed) dropped from the file; a replica still loading is adopted as
STARTING and becomes READY; the next id does not collide; a SIGKILLed scaler's replica stays up, then stops
by itself after ``orphan_grace_s``; close() stops adopted replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from livehelpers import ROOT, child_env

from xds_control.actuators.base import ReplicaOptions, ReplicaState
from xds_control.actuators.local import LocalScaler

FAST = ReplicaOptions(load_delay_s=0)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def entries(path: Path) -> list[dict[str, object]]:
    return json.loads(path.read_text())["replicas"]  # type: ignore[no-any-return]


async def test_state_file_round_trip_and_stale_entries(tmp_path: Path) -> None:
    state = tmp_path / "replicas.json"
    first = LocalScaler(default_profile="tiny", default_options=FAST, state_path=state, install_signal_handlers=False)
    second = LocalScaler(default_profile="tiny", state_path=state, install_signal_handlers=False)
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        a = await first.start_replica("llm")
        b = await first.start_replica("llm", options=ReplicaOptions(load_delay_s=3.0, slow_factor=2.0))
        await first.wait_ready(a.id, 20)
        # Written on every start, atomically (no temp file left beside it).
        assert {e["id"] for e in entries(state)} == {a.id, b.id}
        assert [p.name for p in tmp_path.iterdir()] == ["replicas.json"]
        data = json.loads(state.read_text())
        e_a = next(e for e in data["replicas"] if e["id"] == a.id)
        data["replicas"] += [
            {**e_a, "id": "llm-90", "pid": gone.pid},                    # the process is gone
            {**e_a, "id": "llm-91", "pid": sleeper.pid, "proc_start": None},  # alive, but not on that port
            {**e_a, "id": "llm-92", "pid": a.pid},                        # a's process, but a answers as a
            {"id": "llm-93", "pool": "llm"},                              # malformed
            "junk",
        ]
        state.write_text(json.dumps(data))

        adopted = await second.adopt()
        # The round trip: the same replicas, same pids and ports; a is ready, b (still loading) is starting.
        assert {(r.id, r.pid, r.port) for r in adopted} == {(a.id, a.pid, a.port), (b.id, b.pid, b.port)}
        by_id = {r.id: r for r in second.list()}
        assert by_id[a.id].state == ReplicaState.READY and by_id[b.id].state == ReplicaState.STARTING
        assert by_id[b.id].options.slow_factor == 2.0 and by_id[b.id].pool == "llm"
        # Stale entries are dropped from the file.
        assert {e["id"] for e in entries(state)} == {a.id, b.id}
        ready_b = await second.wait_ready(b.id, 20)
        assert ready_b.state == ReplicaState.READY and ready_b.pid == b.pid
        # New ids continue after the adopted ones (llm-2 exists).
        c = await second.start_replica("llm", options=FAST)
        assert c.id == "llm-3"
        assert {e["id"] for e in entries(state)} == {a.id, b.id, c.id}
        # Stopping an adopted replica (not a child of this scaler) ends it and rewrites the file.
        await second.stop_replica(a.id)
        assert not alive(a.pid)
        assert {e["id"] for e in entries(state)} == {b.id, c.id}
        assert sleeper.poll() is None, "a stale entry's live process must not be signalled"
    finally:
        await second.close()
        await first.close()
        sleeper.kill()
        sleeper.wait()
    assert not alive(b.pid) and not alive(c.pid)
    assert entries(state) == []


async def test_unreadable_state_file_adopts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "replicas.json"
    state.write_text("{not json")
    async with LocalScaler(default_profile="tiny", state_path=state, install_signal_handlers=False) as s:
        assert await s.adopt() == []
        r = await s.start_replica("llm", options=FAST)
        assert r.id == "llm-1" and [e["id"] for e in entries(state)] == ["llm-1"]


PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from xds_control.actuators.base import ReplicaOptions
    from xds_control.actuators.local import LocalScaler

    async def main():
        s = LocalScaler(default_profile="tiny", default_options=ReplicaOptions(load_delay_s=0),
                        state_path=sys.argv[1], orphan_grace_s=float(sys.argv[2]), install_signal_handlers=False)
        info = await s.start_replica("p")
        await s.wait_ready(info.id, 20)
        print(info.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_orphaned_replica_outlives_a_killed_scaler_then_stops_itself(tmp_path: Path) -> None:
    grace = 3.0
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "r.json"), str(grace)],
                              stdout=subprocess.PIPE, env=child_env(), cwd=ROOT)
    pid = 0
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline().decode())
        time.sleep(grace + 0.5)  # the scaler's health checks keep it alive past the grace period
        assert alive(pid), "a replica with a live scaler stopped"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        t_kill = time.monotonic()
        time.sleep(1.0)
        assert alive(pid), "the replica died with its scaler"
        while alive(pid) and time.monotonic() - t_kill < grace + 5:
            time.sleep(0.05)
        stopped_after = time.monotonic() - t_kill
        assert not alive(pid), f"the orphan still runs {stopped_after:.1f} s after its scaler died"
        # By itself, after the grace period (contact was at most ~2 s before the kill).
        assert grace - 2.5 <= stopped_after <= grace + 5, stopped_after
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if pid and alive(pid):
            os.killpg(pid, signal.SIGKILL)


async def test_replica_without_contact_stops_and_scaler_contact_counts(tmp_path: Path) -> None:
    """The replica's side alone: only requests with the control-plane header reset the timer."""
    import aiohttp

    from support.ports import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xds_control.fleet.replica", "--port", str(port), "--profile",
                             "tiny", "--load-delay", "0", "--orphan-grace-s", "1.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"listening on")
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as http:
            while time.monotonic() - t0 < 3.0:  # with contact: twice the grace period and still up
                async with http.get(f"http://127.0.0.1:{port}/health",
                                    headers={"x-xds-control-plane": "test"}) as r:
                    assert r.status == 200
                await asyncio.sleep(0.3)
            t1 = time.monotonic()
            checks = 0
            while proc.poll() is None and time.monotonic() - t1 < 6:  # Envoy-like checks do not count
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as r:
                        checks += r.status == 200
                except aiohttp.ClientConnectionError:  # it is stopping
                    pass
                await asyncio.sleep(0.2)
            assert checks >= 3
        assert proc.poll() == 0, "the replica did not stop by itself without control-plane contact"
        assert 1.2 <= time.monotonic() - t1 <= 4.0
        assert b"no control plane contact" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
