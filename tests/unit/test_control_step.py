"""The control step on a timeline with a manual clock and plain values (no processes, no sockets).

Each test plays the world by hand: it builds the :class:`Observation` a tick would see, calls
``control_step``, passes the returned state back, and checks the actions -- the way Knative tests its
autoscaler on a timeline.
"""

from __future__ import annotations

from dataclasses import replace

from xds_control.config import parse_config, to_traffic_plan
from xds_control.control.step import (
    ControlSpec,
    ControlState,
    Observation,
    PoolObs,
    PoolSpec,
    ReplicaObs,
    ReplicaStatus,
    StepResult,
    control_step,
)
from xds_control.core.model import EndpointSample
from xds_control.core.traffic import HealthStatus
from xds_control.policies import load_policy_spec

READY, STARTING, FAILED = ReplicaStatus.READY, ReplicaStatus.STARTING, ReplicaStatus.FAILED


def threshold(**over: object):
    """A threshold policy on GPU utilisation only: up above 0.8, down below 0.4, no cooldowns in the way."""
    return load_policy_spec({
        "policy": "threshold", "min_replicas": 1, "max_replicas": 10,
        "load_index": {"alpha": 1.0, "beta": 0.0, "gamma": 0.0, "staleness_s": 1000},
        "l_high": 0.8, "l_low": 0.4, "cpu_trigger": None, "latency_trigger_s": None,
        "cooldown_up_s": 0, "cooldown_down_s": 0, "down_sustain_s": 0, "max_actions_per_minute": 60,
        **over,
    })


#: The plan of a config with one autoscaled pool "gpu" (its endpoints come from the step).
BASE = to_traffic_plan(parse_config({
    "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
    "services": [{"name": "llm", "pools": [{"name": "gpu", "autoscale": {"policy": "threshold"}}]}],
}))


def spec_for(policy, zones: tuple[str, ...] = ("a", "b")) -> ControlSpec:
    return ControlSpec((PoolSpec("llm", "gpu", policy, zones),), BASE, initial_hold_s=30.0)


def rep(i: int, status: ReplicaStatus = READY, zone: str = "a") -> ReplicaObs:
    return ReplicaObs(f"r{i}", f"127.0.0.1:{9000 + i}", status, zone=zone)


def sample(gpu: float, running: float = 1.0, now: float = 0.0) -> EndpointSample:
    return EndpointSample(gpu_util=gpu, running=running, waiting=0.0, taken_at=now)


def observe(now: float, replicas: list[ReplicaObs], gpu: float | dict[str, float], *, acked: float | None = None,
            running: float | dict[str, float] = 1.0, **kw: object) -> Observation:
    samples = {}
    for r in replicas:
        if r.status is READY:
            g = gpu[r.key] if isinstance(gpu, dict) else gpu
            q = running[r.key] if isinstance(running, dict) else running
            samples[r.key] = sample(g, q, now)
    pool_kw = {k: kw.pop(k) for k in ("pending", "source_error", "reading_error", "request_rate") if k in kw}
    if "samples" in kw:
        samples = kw.pop("samples")  # type: ignore[assignment]
    return Observation(now, {"gpu": PoolObs("gpu", tuple(replicas), samples=samples, **pool_kw)},
                       acked_through=acked, **kw)  # type: ignore[arg-type]


def weights(res: StepResult) -> dict[str, int]:
    assert res.plan is not None
    pool = res.plan.pool("gpu")
    assert pool is not None
    return {e.key: e.weight for e in pool.endpoints if e.health is HealthStatus.HEALTHY}


def health(res: StepResult) -> dict[str, HealthStatus]:
    assert res.plan is not None
    pool = res.plan.pool("gpu")
    assert pool is not None
    return {e.key: e.health for e in pool.endpoints}


def test_scale_up_starts_replicas_spread_over_zones() -> None:
    spec = spec_for(threshold(scale_up_step=2, scale_up_percent=0.0))
    fleet = [rep(0), rep(1, zone="b")]
    res = control_step(observe(0.0, fleet, 0.95), ControlState(), spec)
    (a,) = res.pools
    assert a.decision.direction == "up" and a.decision.target_replicas == 4
    assert a.start == ("a", "b") and a.stop == () and a.reap == ()
    assert res.changed and set(weights(res)) == {r.key for r in fleet}
    assert any(e.kind == "decision" for e in res.events)
    # the next tick counts the two asked for as pending: nothing more is started
    res2 = control_step(observe(1.0, fleet, 0.6, pending=2), res.state, spec)
    assert res2.pools[0].start == ()


def test_new_replica_gets_weight_only_after_the_proxies_acked_it() -> None:
    spec = spec_for(threshold(traffic={"ramp_window_s": 10.0}))
    fleet = [rep(0), rep(1)]
    st = control_step(observe(0.0, fleet, 0.6, acked=None), ControlState(), spec).state
    fleet.append(rep(2, STARTING))
    st = control_step(observe(1.0, fleet, 0.6, acked=0.0), st, spec).state
    fleet[2] = rep(2)
    new = fleet[2].key
    res = control_step(observe(2.0, fleet, 0.6, acked=1.0), st, spec)
    assert new not in weights(res)  # ready, but no proxy has seen it yet: out of EDS
    # a plan holding it at its ramp start was published at t=2; until it is ACKed the ramp clock does not run
    for t in (3.0, 4.0, 5.0):
        res = control_step(observe(t, fleet, 0.6, acked=1.0), res.state, spec)
        w = weights(res)
        assert w.get(new, 0) <= 0.1 * max(w[fleet[0].key], 1) + 1
    # ACKed: the weight ramps, then reaches the others' weight once the 10 s window passed
    seen = []
    for t in range(6, 20):
        res = control_step(observe(float(t), fleet, 0.6, acked=float(t - 1)), res.state, spec)
        seen.append(weights(res).get(new, 0))
    assert seen == sorted(seen) and seen[0] < seen[-1]
    assert seen[-1] == weights(res)[fleet[0].key]


def test_drain_waits_for_the_ack_and_for_in_flight_requests() -> None:
    spec = spec_for(threshold(min_replicas=2))
    fleet = [rep(0), rep(1), rep(2)]
    res = control_step(observe(0.0, fleet, 0.1), ControlState(), spec)
    assert res.pools[0].decision.target_replicas == 2
    draining = [k for k, h in health(res).items() if h is HealthStatus.DRAINING]
    assert len(draining) == 1 and res.pools[0].stop == ()
    victim = next(r for r in fleet if r.key == draining[0])
    busy = {r.key: (3.0 if r.key == victim.key else 0.0) for r in fleet}
    # not ACKed yet: not removable, whatever its load
    res = control_step(observe(1.0, fleet, 0.1, running=0.0, acked=None), res.state, spec)
    assert res.pools[0].stop == ()
    # ACKed but still busy: not removable
    res = control_step(observe(2.0, fleet, 0.1, running=busy, acked=1.0), res.state, spec)
    assert res.pools[0].stop == ()
    # ACKed and idle: stop exactly that replica; the policy never counted it back into service
    res = control_step(observe(3.0, fleet, 0.1, running=0.0, acked=2.0), res.state, spec)
    assert res.pools[0].stop == (victim.id,)
    assert res.pools[0].decision.current_replicas == 2


def test_draining_replicas_are_neither_counted_nor_in_the_policy_ready_set() -> None:
    # HPA on GPU, target 0.7: 4 serving at 0.7 and 2 draining. Counting the drained two (or their idle
    # samples) would make HPA ask for more and undrain what it just drained.
    hpa = load_policy_spec({"policy": "hpa", "min_replicas": 1, "max_replicas": 10,
                            "metrics": [{"signal": "gpu_util", "type": "Pods", "target": 0.7}],
                            "behavior": {"scale_down": {"stabilization_window_s": 0}}})
    spec = spec_for(hpa)
    fleet = [rep(i) for i in range(6)]
    res = control_step(observe(0.0, fleet, 0.45), ControlState(), spec)
    target = res.pools[0].decision.target_replicas
    assert target == 4
    drained = {k for k, h in health(res).items() if h is HealthStatus.DRAINING}
    assert len(drained) == 2
    gpu = {r.key: (0.0 if r.key in drained else 0.7) for r in fleet}
    for t in (15.0, 30.0, 45.0):
        res = control_step(observe(t, fleet, gpu, running={r.key: 1.0 for r in fleet}), res.state, spec)
        d = res.pools[0].decision
        assert d.current_replicas == 4 and d.target_replicas == 4, d.explanation
        assert {k for k, h in health(res).items() if h is HealthStatus.DRAINING} == drained


def test_lost_signals_hold_count_weights_and_policy_state() -> None:
    spec = spec_for(threshold(traffic={"weighting": "headroom"}))
    fleet = [rep(0), rep(1), rep(2)]
    res = control_step(observe(0.0, fleet, {fleet[0].key: 0.7, fleet[1].key: 0.5, fleet[2].key: 0.6}),
                       ControlState(), spec)
    before = weights(res)
    pstate = res.state.pools["gpu"].policy_state
    # the source fails: idle-looking data must not scale down, move weights or feed the policy
    res = control_step(observe(1.0, fleet, 0.0, source_error="prometheus: connection refused"), res.state, spec)
    a = res.pools[0]
    assert a.signals_lost and "connection refused" in a.decision.explanation
    assert a.decision.target_replicas == 3 and a.start == () and a.stop == ()
    assert weights(res) == before and not res.changed
    assert res.state.pools["gpu"].policy_state is pstate
    assert [e.kind for e in res.events] == ["signals_lost"]
    # every ready reading failing is the same
    res = control_step(observe(2.0, fleet, 0.0, samples={r.key: None for r in fleet}, reading_error="timeout"),
                       res.state, spec)
    assert res.pools[0].signals_lost and res.events == ()  # reported once, not every tick
    res = control_step(observe(3.0, fleet, 0.6), res.state, spec)
    assert res.pools[0].signals_lost is None and [e.kind for e in res.events] == ["signals_restored"]


def test_pause_and_follower_hold_the_count() -> None:
    spec = spec_for(threshold())
    fleet = [rep(0), rep(1)]
    res = control_step(observe(0.0, fleet, 0.95, paused=frozenset({"gpu"})), ControlState(), spec)
    a = res.pools[0]
    assert a.decision.target_replicas == 2 and a.start == () and "paused" in a.decision.explanation
    res = control_step(observe(1.0, fleet, 0.95, is_leader=False), ControlState(), spec)
    a = res.pools[0]
    assert a.decision.target_replicas == 2 and a.start == ()
    assert a.decision.explanation.startswith("follower")
    assert set(weights(res)) == {r.key for r in fleet}  # it plans the same endpoints
    # a follower never stops a drained replica either
    three = [rep(0), rep(1), rep(2)]
    res = control_step(observe(0.0, three, 0.1), ControlState(), spec)  # the leader drains one
    res = control_step(observe(1.0, three, 0.1, running=0.0, acked=0.5, is_leader=False), res.state, spec)
    assert res.pools[0].stop == () and res.pools[0].start == ()


def test_crashed_replica_is_reaped_and_replaced() -> None:
    spec = spec_for(threshold())
    fleet = [rep(0), rep(1), rep(2)]
    res = control_step(observe(0.0, fleet, 0.6), ControlState(), spec)
    fleet[1] = replace(fleet[1], status=FAILED, reason="exit -9")
    res = control_step(observe(1.0, fleet, 0.6), res.state, spec)
    a = res.pools[0]
    assert a.reap == ("r1",) and len(a.start) == 1
    assert fleet[1].key not in health(res)  # out of rotation at once


def test_initial_hold_until_the_fleet_present_at_start_is_ready() -> None:
    spec = spec_for(threshold())
    fleet = [rep(0), rep(1, STARTING)]
    res = control_step(observe(0.0, fleet, 0.6), ControlState(), spec)
    assert res.plan is None and res.pools == () and "starting" in res.held
    res = control_step(observe(5.0, fleet, 0.6, pending=1), res.state, spec)
    assert res.plan is None
    fleet[1] = rep(1)
    res = control_step(observe(6.0, fleet, 0.6), res.state, spec)
    assert res.plan is not None and res.changed and len(weights(res)) == 2
    # later, a starting replica does not hold the plan any more
    res = control_step(observe(7.0, [*fleet, rep(2, STARTING)], 0.6), res.state, spec)
    assert res.plan is not None


def test_initial_hold_gives_up_after_initial_hold_s() -> None:
    spec = spec_for(threshold())
    fleet = [rep(0), rep(1, STARTING)]
    st = control_step(observe(0.0, fleet, 0.6), ControlState(), spec).state
    res = control_step(observe(31.0, fleet, 0.6), st, spec)
    assert res.plan is not None and any(e.kind == "hold_expired" for e in res.events)


def test_operator_pin_and_drain_are_applied_to_the_plan() -> None:
    spec = spec_for(threshold())
    fleet = [rep(0), rep(1), rep(2)]
    k0, k1 = fleet[0].key, fleet[1].key
    res = control_step(observe(0.0, fleet, 0.6, pins={("gpu", k0): 7}, drains=frozenset({("gpu", k1)})),
                       ControlState(), spec)
    assert weights(res)[k0] == 7 and health(res)[k1] is HealthStatus.DRAINING
    # the forced drain counts as leaving: a replacement starts
    assert len(res.pools[0].start) == 1


def test_changed_only_when_the_plan_changes() -> None:
    spec = spec_for(threshold())
    fleet = [rep(0), rep(1)]
    res = control_step(observe(0.0, fleet, 0.6), ControlState(), spec)
    assert res.changed
    res = control_step(observe(1.0, fleet, 0.6), res.state, spec)
    assert not res.changed and res.plan is not None


def test_a_new_policy_starts_from_fresh_state() -> None:
    fleet = [rep(0), rep(1)]
    res = control_step(observe(0.0, fleet, 0.6), ControlState(), spec_for(threshold()))
    kpa = load_policy_spec({"policy": "kpa", "min_replicas": 1, "max_replicas": 10})
    res2 = control_step(observe(1.0, fleet, 0.6), res.state, spec_for(kpa))
    assert res2.state.pools["gpu"].policy == "kpa"
    assert type(res2.state.pools["gpu"].policy_state).__name__.lower().startswith("kpa")


def test_request_rate_reaches_the_policy() -> None:
    # predictive on the gateway rate: 2 replicas whose own rps says 1/s each, the gateway says 12/s
    pred = load_policy_spec({"policy": "predictive", "min_replicas": 1, "max_replicas": 50,
                             "demand_signal": "rps", "rps_per_replica": 1.0})
    fleet = [rep(0), rep(1)]
    obs = observe(0.0, fleet, 0.5, request_rate=12.0)
    obs.pools["gpu"].samples.update({r.key: replace(sample(0.5), rps=1.0) for r in fleet})
    with_rate = control_step(obs, ControlState(), spec_for(pred)).pools[0].decision
    obs2 = observe(0.0, fleet, 0.5)
    obs2.pools["gpu"].samples.update({r.key: replace(sample(0.5), rps=1.0) for r in fleet})
    without = control_step(obs2, ControlState(), spec_for(pred)).pools[0].decision
    assert with_rate.target_replicas > without.target_replicas



# -- several control-plane instances: the follower follows the leader's drains; the leader waits for its peers --
def test_follower_drains_exactly_what_the_leader_shares_and_undrains_the_rest() -> None:
    spec = spec_for(threshold(min_replicas=1))
    fleet = [rep(0), rep(1), rep(2)]
    k1 = fleet[1].key
    # a follower whose own policy would shrink to 1 (idle fleet) drains nothing the leader does not drain
    res = control_step(observe(0.0, fleet, 0.1, is_leader=False, leader_drains={}), ControlState(), spec)
    assert all(h is HealthStatus.HEALTHY for h in health(res).values()), health(res)
    assert res.pools[0].draining == frozenset() and res.pools[0].routing == {r.key for r in fleet}
    # the leader shares k1 as draining: the follower drains it (and only it), and stops nothing itself
    res = control_step(observe(1.0, fleet, 0.1, running=0.0, acked=0.0, is_leader=False,
                               leader_drains={"gpu": frozenset({k1})}), res.state, spec)
    assert health(res)[k1] is HealthStatus.DRAINING
    assert [k for k, h in health(res).items() if h is HealthStatus.DRAINING] == [k1]
    assert res.pools[0].draining == {k1} and k1 in res.pools[0].routing  # its proxies have not ACKed yet
    assert res.pools[0].stop == () and res.pools[0].start == ()
    # its proxies ACKed the plan that drains k1: k1 leaves what it routes to
    res = control_step(observe(2.0, fleet, 0.1, running={r.key: 1.0 for r in fleet}, acked=1.0, is_leader=False,
                               leader_drains={"gpu": frozenset({k1})}), res.state, spec)
    assert res.pools[0].routing == {fleet[0].key, fleet[2].key}
    # the leader undrained k1 (a scale-up reuses it): so does the follower
    res = control_step(observe(3.0, fleet, 0.1, acked=2.0, is_leader=False, leader_drains={"gpu": frozenset()}),
                       res.state, spec)
    assert health(res)[k1] is HealthStatus.HEALTHY and res.pools[0].draining == frozenset()


def test_leader_removes_a_drained_replica_only_once_no_peer_routes_to_it() -> None:
    spec = spec_for(threshold(min_replicas=2))
    fleet = [rep(0), rep(1), rep(2)]
    everyone = frozenset(r.key for r in fleet)
    res = control_step(observe(0.0, fleet, 0.1, peers_routing={"gpu": everyone}), ControlState(), spec)
    (victim_key,) = res.pools[0].draining
    victim = next(r for r in fleet if r.key == victim_key)
    # ACKed by its own proxies and idle, but a peer's proxies may still send to it: not removable
    for t in (1.0, 2.0):
        res = control_step(observe(t, fleet, 0.1, running=0.0, acked=t - 1, peers_routing={"gpu": everyone}),
                           res.state, spec)
        assert res.pools[0].stop == ()
    # the peer's proxies ACKed the drain (it shares it no longer routes there), in-flight 0: stopped
    res = control_step(observe(3.0, fleet, 0.1, running=0.0, acked=2.0,
                               peers_routing={"gpu": everyone - {victim_key}}), res.state, spec)
    assert res.pools[0].stop == (victim.id,)


def test_leader_gives_up_on_a_silent_peer_after_the_drain_timeout() -> None:
    spec = spec_for(threshold(min_replicas=2, traffic={"drain_timeout_s": 10.0}))
    fleet = [rep(0), rep(1), rep(2)]
    everyone = frozenset(r.key for r in fleet)
    res = control_step(observe(0.0, fleet, 0.1, peers_routing={"gpu": everyone}), ControlState(), spec)
    (victim_key,) = res.pools[0].draining
    res = control_step(observe(1.0, fleet, 0.1, running=0.0, acked=0.0, peers_routing={"gpu": everyone}),
                       res.state, spec)
    assert res.pools[0].stop == ()
    res = control_step(observe(11.5, fleet, 0.1, running=0.0, acked=1.0, peers_routing={"gpu": everyone}),
                       res.state, spec)
    assert [r.key for r in fleet if r.id in res.pools[0].stop] == [victim_key]
