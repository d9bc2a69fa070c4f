"""Shadow policies (``autoscale.shadow``): they decide on the live signals every step and never actuate.

The step is played on a timeline by hand (as in test_control_step.py); the config tests check resolution and
that bad lists name ``shadow[i]`` and the value.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from xds_control.config import parse_config, to_traffic_plan
from xds_control.config.policy import resolve_policy
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
from xds_control.core.errors import ConfigError
from xds_control.core.model import Decision, EndpointSample
from xds_control.policies import PolicySpec, load_policy_spec

READY = ReplicaStatus.READY

BASE = to_traffic_plan(parse_config({
    "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
    "services": [{"name": "llm", "pools": [{"name": "gpu", "autoscale": {"policy": "threshold"}}]}],
}))


def threshold(**over: object) -> PolicySpec:
    """Threshold on GPU utilisation only: up above ``l_high`` (0.8), down below ``l_low`` (0.4), no cooldowns."""
    return load_policy_spec({
        "policy": "threshold", "min_replicas": 1, "max_replicas": 10,
        "load_index": {"alpha": 1.0, "beta": 0.0, "gamma": 0.0, "staleness_s": 1000},
        "l_high": 0.8, "l_low": 0.4, "cpu_trigger": None, "latency_trigger_s": None,
        "cooldown_up_s": 0, "cooldown_down_s": 0, "down_sustain_s": 0, "max_actions_per_minute": 60,
        **over,
    })


def hpa(**over: object) -> PolicySpec:
    """HPA on GPU utilisation, target 0.5, with a 30 s scale-down stabilization window (state that matters)."""
    return load_policy_spec({"policy": "hpa", "min_replicas": 1, "max_replicas": 10,
                             "metrics": [{"signal": "gpu_util", "type": "Pods", "target": 0.5}],
                             "behavior": {"scale_down": {"stabilization_window_s": 30}}, **over})


def spec_for(policy: PolicySpec, *shadows: tuple[str, PolicySpec]) -> ControlSpec:
    return ControlSpec((PoolSpec("llm", "gpu", policy, ("a",), shadows=tuple(shadows)),), BASE, initial_hold_s=30.0)


def fleet(n: int) -> list[ReplicaObs]:
    return [ReplicaObs(f"r{i}", f"127.0.0.1:{9000 + i}", READY, zone="a") for i in range(n)]


def observe(now: float, replicas: list[ReplicaObs], gpu: float, **kw: object) -> Observation:
    samples = {r.key: EndpointSample(gpu_util=gpu, running=1.0, waiting=0.0, taken_at=now) for r in replicas}
    pool_kw = {k: kw.pop(k) for k in ("source_error", "request_rate") if k in kw}
    return Observation(now, {"gpu": PoolObs("gpu", tuple(replicas), samples=samples, **pool_kw)},  # type: ignore[arg-type]
                       acked_through=now - 1, **kw)  # type: ignore[arg-type]


#: A timeline: (now, replicas, GPU utilisation); the fleet is played by hand, so every run sees the same world.
TIMELINE = [(0.0, 2, 0.95), (1.0, 2, 0.9), (3.0, 3, 0.7), (6.0, 3, 0.1), (7.0, 3, 0.1), (10.0, 2, 0.3),
            (12.0, 2, 0.6)]


def seen(d: Decision) -> tuple:  # type: ignore[type-arg]
    """What a decision says (Decision compares by identity)."""
    return (d.policy, d.now, d.current_replicas, d.target_replicas, d.explanation, d.reasons, d.mode, d.load_index)


def run(spec: ControlSpec, timeline=TIMELINE, **kw: object) -> list[StepResult]:  # type: ignore[no-untyped-def]
    out: list[StepResult] = []
    state = ControlState()
    for now, n, gpu in timeline:
        res = control_step(observe(now, fleet(n), gpu, **kw), state, spec)
        out.append(res)
        state = res.state
    return out


def test_a_shadow_decides_as_the_real_policy_would_and_never_actuates() -> None:
    with_shadow = run(spec_for(threshold(), ("hpa-tuned", hpa())))
    alone = run(spec_for(threshold()))
    as_real = run(spec_for(hpa()))
    for a, b, c in zip(with_shadow, alone, as_real, strict=True):
        pa, pb_, pc = a.pools[0], b.pools[0], c.pools[0]
        # the plan, starts, stops and events are exactly those of the real policy alone
        assert a.plan == b.plan and a.changed == b.changed and a.events == b.events
        assert (pa.start, pa.stop, pa.reap) == (pb_.start, pb_.stop, pb_.reap)
        assert seen(pa.decision) == seen(pb_.decision)
        # the shadow saw the same signals and carried its own state: it decides as HPA would as the real policy
        ((name, d),) = pa.shadows
        assert name == "hpa-tuned" and d.policy == "hpa"
        assert seen(d) == seen(pc.decision)
        assert a.state.pools["gpu"].shadows["hpa-tuned"].last_decision is d
    targets = [r.pools[0].shadows[0][1].target_replicas for r in with_shadow]
    real = [r.pools[0].decision.target_replicas for r in with_shadow]
    assert targets != real  # the two policies disagree on this timeline, so the comparison means something
    # HPA syncs every 15 s: the t=1 shadow knew it synced at t=0 (state carried), a fresh HPA would decide now
    shadow_t1 = with_shadow[1].pools[0].shadows[0][1]
    assert shadow_t1.explanation.endswith("next sync in 14.0s"), shadow_t1.explanation
    fresh = control_step(observe(1.0, fleet(2), 0.9), ControlState(), spec_for(hpa())).pools[0].decision
    assert fresh.target_replicas == 4 and "next sync" not in fresh.explanation
    assert with_shadow[0].state.pools["gpu"].shadows["hpa-tuned"].policy_state is not None


def test_pause_and_follower_do_not_hold_shadows() -> None:
    spec = spec_for(threshold(), ("eager", threshold(l_high=0.5)))
    for kw in ({"paused": frozenset({"gpu"})}, {"is_leader": False}):
        (res,) = run(spec, [(0.0, 2, 0.95)], **kw)
        a = res.pools[0]
        assert a.decision.target_replicas == 2 and a.start == ()
        ((_, d),) = a.shadows
        assert d.target_replicas > 2 and "paused" not in d.explanation and "follower" not in d.explanation


def test_shadows_hold_their_state_while_signals_are_lost() -> None:
    spec = spec_for(threshold(), ("hpa", hpa()))
    res = run(spec, [(0.0, 2, 0.95), (1.0, 2, 0.9)])[-1]
    before = res.state.pools["gpu"].shadows["hpa"]
    lost = control_step(observe(2.0, fleet(2), 0.0, source_error="prometheus: connection refused"), res.state, spec)
    a = lost.pools[0]
    ((_, d),) = a.shadows
    after = lost.state.pools["gpu"].shadows["hpa"]
    assert after.policy_state is before.policy_state  # not fed the stale (idle-looking) data
    assert d.mode == "hold" and d.target_replicas == 2 and d.now == 2.0
    assert "signals lost" in d.explanation and "connection refused" in d.explanation
    # the same world with the signals back continues from the state held: what it decided at t=1
    back = control_step(observe(3.0, fleet(2), 0.9), lost.state, spec)
    ref = control_step(observe(3.0, fleet(2), 0.9), res.state, spec)
    assert back.pools[0].shadows[0][1].target_replicas == ref.pools[0].shadows[0][1].target_replicas
    assert back.pools[0].shadows[0][1].explanation == ref.pools[0].shadows[0][1].explanation


def test_lost_signals_before_any_shadow_decision_hold_within_the_shadow_bounds() -> None:
    spec = spec_for(threshold(), ("big", threshold(min_replicas=4, max_replicas=6)))
    (res,) = run(spec, [(0.0, 2, 0.5)], source_error="down")
    ((_, d),) = res.pools[0].shadows
    assert d.target_replicas == 4 and d.mode == "hold" and d.policy == "threshold"
    assert res.state.pools["gpu"].shadows["big"].policy_state is None


def test_replica_seconds_integral_by_hand() -> None:
    # "fixed4" always wants 4; "eager" varies. Ticks at 0, 1, 3, 6 with 2, 2, 3, 3 replicas; t=3 has lost signals.
    timeline = [(0.0, 2, 0.95), (1.0, 2, 0.6), (3.0, 3, 0.6), (6.0, 3, 0.2)]
    spec = spec_for(threshold(), ("fixed4", threshold(min_replicas=4, max_replicas=4)),
                    ("eager", threshold(l_high=0.5)))
    state = ControlState()
    eager_targets = []
    for now, n, gpu in timeline:
        kw = {"source_error": "down"} if now == 3.0 else {}
        res = control_step(observe(now, fleet(n), gpu, **kw), state, spec)
        state = res.state
        eager_targets.append(dict(res.pools[0].shadows)["eager"].target_replicas)
    fixed = state.pools["gpu"].shadows["fixed4"]
    assert fixed.would_replica_seconds == pytest.approx(4 * 6)  # 4 replicas for 6 s
    assert fixed.actual_replica_seconds == pytest.approx(2 * 1 + 2 * 2 + 3 * 3)  # current 2, 2, 3 for 1, 2, 3 s
    eager = state.pools["gpu"].shadows["eager"]
    t = [x[0] for x in timeline]
    assert eager.would_replica_seconds == pytest.approx(sum(eager_targets[k] * (t[k + 1] - t[k]) for k in range(3)))
    assert eager.actual_replica_seconds == fixed.actual_replica_seconds
    assert eager_targets[0] > 2 and eager_targets[2] == 3  # up on 0.95; held at the count while signals were lost


def test_shadows_follow_the_spec_a_removed_one_is_dropped_a_new_policy_starts_fresh() -> None:
    two = spec_for(threshold(), ("a", hpa()), ("b", threshold(l_high=0.5)))
    res = run(two, TIMELINE[:2])[-1]
    assert list(res.state.pools["gpu"].shadows) == ["a", "b"]
    with pytest.raises(TypeError):
        res.state.pools["gpu"].shadows["c"] = res.state.pools["gpu"].shadows["a"]  # type: ignore[index]
    # "a" now names a KPA: fresh policy state, integrals kept (same name, same pool); "b" is gone
    kpa = load_policy_spec({"policy": "kpa", "min_replicas": 1, "max_replicas": 10})
    res2 = control_step(observe(2.0, fleet(2), 0.9), res.state, spec_for(threshold(), ("a", kpa)))
    (ss_name, ss), = res2.state.pools["gpu"].shadows.items()
    assert ss_name == "a" and ss.policy == "kpa" and type(ss.policy_state).__name__.lower().startswith("kpa")
    assert ss.would_replica_seconds > res.state.pools["gpu"].shadows["a"].would_replica_seconds
    # no shadows: nothing reported, nothing kept
    res3 = control_step(observe(3.0, fleet(2), 0.9), res2.state, spec_for(threshold()))
    assert res3.pools[0].shadows == () and dict(res3.state.pools["gpu"].shadows) == {}


def test_no_shadow_runs_while_the_step_holds_at_start() -> None:
    spec = spec_for(threshold(), ("a", hpa()))
    starting = [replace(fleet(1)[0], status=ReplicaStatus.STARTING)]
    res = control_step(observe(0.0, starting, 0.5), ControlState(), spec)
    assert res.plan is None and res.pools == () and res.state.pools == {}


# -- config --------------------------------------------------------------------------------------------------

def config(autoscale: dict) -> dict:  # type: ignore[type-arg]
    return {"listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
            "services": [{"name": "llm", "pools": [{"name": "gpu", "autoscale": autoscale}]}]}


def test_shadows_are_resolved_once_at_load(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("policy: threshold\nl_high: 0.55\n")
    cfg = parse_config(config({"policy": "threshold", "shadow": ["hpa", "threshold", str(f)]}))
    auto = cfg.services[0].pools[0].autoscale
    assert auto is not None
    names = [n for n, _ in auto.shadows]
    assert names == ["hpa", "threshold", str(f)]  # the main policy as a shadow is allowed
    specs = dict(auto.shadows)
    assert specs["hpa"] == resolve_policy("hpa") and specs["threshold"] == auto.spec
    assert specs[str(f)].policy == "threshold" and specs[str(f)].l_high == 0.55
    assert parse_config(config({"policy": "kpa"})).services[0].pools[0].autoscale.shadows == ()  # type: ignore[union-attr]


@pytest.mark.parametrize(("shadow", "expect"), [
    (["hpa", "nope"], ["autoscale: shadow[1] = 'nope'", "neither a preset nor a readable YAML file"]),
    (["kpa", "hpa", "kpa"], ["autoscale.shadow: shadow[2] = 'kpa': listed twice (shadow[0])"]),
    (["hpa"] * 9, ["autoscale.shadow: at most 8 shadow policies, got 9"]),
    ("hpa", ["autoscale.shadow: 'hpa' is invalid", "list"]),
    ([3], ["autoscale.shadow[0]: 3 is invalid"]),
])
def test_bad_shadow_lists_name_the_item_and_the_value(shadow: object, expect: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(config({"policy": "threshold", "shadow": shadow}))
    for part in expect:
        assert part in str(e.value), str(e.value)


def test_a_bad_shadow_file_names_the_item_and_the_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("policy: threshold\nl_high: 7\n")
    with pytest.raises(ConfigError) as e:
        parse_config(config({"policy": "threshold", "shadow": ["hpa", str(f)]}))
    msg = str(e.value)
    assert f"shadow[1] = {str(f)!r}" in msg and "l_high = 7" in msg, msg
