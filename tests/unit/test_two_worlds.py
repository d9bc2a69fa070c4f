"""Same observations, same behaviour: the live loop and the simulator drive one control step.

A trace runs through the simulator (the real engine) with :class:`StepController`; every tick's observation
and actions are recorded. Then the live :class:`~xds_control.runtime.loop.Controller` -- the one ``serve``
runs, with a real publisher, snapshot cache and sync tracker -- is driven tick by tick with a manual clock
by a world that replays those recordings through the scaler and signal-source ports. The live loop must
build exactly the observation the simulator's adapter built and take exactly the same actions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from xds_control.actuators.base import ReplicaInfo, ReplicaState
from xds_control.config import parse_config
from xds_control.control.step import Observation, ReplicaStatus
from xds_control.fleet.trace import surge
from xds_control.runtime.loop import Controller
from xds_control.signals.base import EndpointReading, SignalReport
from xds_control.signals.envoy_stats import RateReport
from xds_control.sim import policies as pol
from xds_control.sim.controller import Action, FleetObservation
from xds_control.sim.engine import SimConfig, simulate
from xds_control.xds.cache import SnapshotCache
from xds_control.xds.publisher import Publisher
from xds_control.xds.status import SyncTracker

_STATE = {ReplicaStatus.STARTING: ReplicaState.STARTING, ReplicaStatus.READY: ReplicaState.READY,
          ReplicaStatus.FAILED: ReplicaState.FAILED}


@dataclass
class Tick:
    obs: Observation
    action: Action


def record(policy: str, failure_at: float | None = None) -> list[Tick]:
    """Run a surge through the simulator, keeping each step's observation and action."""
    ctl = pol.make_controller(policy)
    ticks: list[Tick] = []
    inner_obs = ctl.observation
    inner_step = ctl.step

    def observation(o: FleetObservation) -> Any:
        got = inner_obs(o)
        ticks.append(Tick(got[0], Action()))
        return got

    def step(o: FleetObservation) -> Action:
        act = inner_step(o)
        ticks[-1].action = act
        return act

    ctl.observation = observation  # type: ignore[method-assign]
    ctl.step = step  # type: ignore[method-assign]
    tr = surge(2, 14, duration_s=240, ramp_start_s=60, ramp_s=20, hold_s=60, seed=4,
               input_tokens=(300, 1500), output_tokens=(20, 200))
    simulate(tr, ctl, SimConfig(seed=0, warmup_s=10.0, failure_at=failure_at))
    return ticks


@dataclass
class ReplayWorld:
    """The scaler, signal-source and request-rate ports, answering from one recorded observation."""

    obs: Observation | None = None
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    name: str = "replay"

    # scaler
    def list(self) -> list[ReplicaInfo]:
        assert self.obs is not None
        out = []
        for r in self.obs.pools["llm"].replicas:
            host, _, port = r.key.rpartition(":")
            out.append(ReplicaInfo(id=r.id, pool="llm", profile="tiny", address=host, port=int(port), pid=None,
                                   state=_STATE[r.status], started_at=0.0, zone=r.zone))
        return out

    async def start_replica(self, pool: str, profile: str | None = None, options: Any = None) -> ReplicaInfo:
        n = len(self.started)
        return ReplicaInfo(id=f"new-{n}", pool=pool, profile=profile or "", address="127.0.0.1", port=1 + n,
                           pid=None, state=ReplicaState.STARTING, started_at=0.0)

    async def stop_replica(self, replica_id: str, timeout_s: float | None = None) -> None:
        self.stopped.append(replica_id)

    async def close(self) -> None:
        pass

    # signals
    async def read(self, endpoints: Any, now: float) -> SignalReport:
        assert self.obs is not None
        samples = self.obs.pools["llm"].samples
        return SignalReport("replay", now, {k: EndpointReading(k, samples.get(k)) for k in endpoints})

    async def read_rates(self, pools: Any, now: float) -> RateReport:
        assert self.obs is not None
        return RateReport("replay", now, {p: self.obs.pools[p].request_rate for p in pools})


def live_controller(policy: str, world: ReplayWorld, clock: list[float]) -> Controller:
    cfg = parse_config({
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "autoscale": {
            "policy": policy, "replica": {"profile": "tiny", "zones": ["zone-a", "zone-b"]}}}]}],
    })
    tracker = SyncTracker()
    publisher = Publisher(SnapshotCache(), tracker)
    c = Controller(cfg, publisher, tracker, world, world, rates=world, clock=lambda: clock[0])
    # record what the live loop starts: the zone of each start
    inner = c._start_replica

    async def start(rt: Any, zone: str) -> Any:
        world.started.append(zone)
        return await inner(rt, zone)

    c._start_replica = start  # type: ignore[method-assign]
    return c


@pytest.mark.parametrize("policy,failure_at", [("comprehensive", None), ("kpa", None), ("comprehensive", 120.0),
                                                ("threshold", None)])
async def test_the_live_loop_does_what_the_simulator_did(policy: str, failure_at: float | None) -> None:
    ticks = record(policy, failure_at)
    assert any(t.action.start for t in ticks), "the surge should make the policy start replicas"
    if failure_at is not None:  # the crash is seen, reaped and replaced through the same step
        assert any(r.status is ReplicaStatus.FAILED for t in ticks for r in t.obs.pools["llm"].replicas)
    world = ReplayWorld()
    clock = [0.0]
    c = live_controller(policy, world, clock)
    for i, t in enumerate(ticks):
        world.obs = t.obs
        clock[0] = t.obs.now
        observed, _ = await c.observe(t.obs.now)
        assert observed == t.obs, f"tick {i} at {t.obs.now}: the live loop observed something else"
        n_start, n_stop = len(world.started), len(world.stopped)
        # observe() already advanced the ACKs; tick() observes again the same world
        await c.tick()
        await asyncio.sleep(0)  # let the spawned stop tasks run
        started = tuple(world.started[n_start:])
        stopped = tuple(world.stopped[n_stop:])
        assert started == t.action.start, f"tick {i} at {t.obs.now}: starts differ"
        assert stopped == tuple(str(x) for x in t.action.stop), f"tick {i} at {t.obs.now}: stops differ"
        if c.history and c.history[-1].now == t.obs.now:
            assert c.history[-1].target == t.action.target_replicas
    await c.close()
