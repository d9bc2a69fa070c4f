"""Planning: weights (largest remainder, hotspot cap), coordination transitions, localities, outlier, pools."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xds_control.core.model import Decision, ServiceSignals, SignalFrame
from xds_control.core.model import EndpointPhase as P
from xds_control.core.traffic import EndpointPlan, HealthStatus, Locality, PoolPlan
from xds_control.loadindex import LoadIndexSpec, compute_load
from xds_control.planning import (
    ALLOWED,
    CoordinationTable,
    advance,
    apply_to_pool,
    capped_allocation,
    endpoint_weights,
    largest_remainder,
    locality_plan,
    outlier_plan,
    plan_service,
    select_drains,
)
from xds_control.policies.specs import OutlierSpec, TrafficSpec

FAST = settings(max_examples=150, deadline=None)


# --- weights ------------------------------------------------------------------------------------
@FAST
@given(hnp.arrays(np.float64, st.integers(1, 60), elements=st.floats(0, 1e4, allow_nan=False)))
def test_largest_remainder_keeps_the_total_and_moves_each_value_by_less_than_one(x):
    total = int(round(float(x.sum())))
    out = largest_remainder(x, total)
    assert out.sum() == total
    assert np.all(np.abs(out - x) < 1.0 + 1e-6)
    assert out.dtype == np.int64


def test_largest_remainder_gives_units_to_largest_fractions():
    assert largest_remainder(np.array([1.2, 1.5, 1.3]), 4).tolist() == [1, 2, 1]
    assert largest_remainder(np.array([3.0, 3.0, 4.0]), 10).tolist() == [3, 3, 4]


@FAST
@given(
    hnp.arrays(np.float64, st.integers(1, 80), elements=st.floats(0.01, 5.0)),
    st.floats(1.0, 4.0),
    st.integers(1, 200),
)
def test_capped_allocation_sums_respects_bounds_and_keeps_order(h, cap, scale):
    hi = math.floor(cap * scale)
    w = capped_allocation(h, float(scale * h.size), 1.0, float(hi))
    assert w.sum() == pytest.approx(scale * h.size, rel=1e-9, abs=1e-6)
    assert np.all(w >= 1.0 - 1e-9) and np.all(w <= hi + 1e-9)
    order = np.argsort(h, kind="stable")
    assert np.all(np.diff(w[order]) >= -1e-6)


phases = st.sampled_from([int(p) for p in P])


@FAST
@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.int8, n, elements=phases),
            hnp.arrays(np.bool_, n),
            hnp.arrays(np.float64, n, elements=st.floats(0.0, 2.5)),
            hnp.arrays(np.float64, n, elements=st.floats(0.0, 100.0) | st.just(float("nan"))),
        )
    ),
    st.sampled_from(["equal", "headroom"]),
    st.floats(1.0, 3.0),
    st.integers(1, 150),
    st.sampled_from([0.0, 30.0]),
)
def test_endpoint_weight_invariants(arrays, weighting, cap, scale, ramp):
    phase, ready, load, elapsed = arrays
    spec = TrafficSpec(weighting=weighting, hotspot_cap=cap, weight_scale=scale, ramp_window_s=ramp)
    w = endpoint_weights(phase, ready, load, elapsed, spec)
    rot = ready & ((phase == P.RAMPING) | (phase == P.SERVING))
    assert np.all(w[~rot] == 0)  # never weight on non-ready or non-serving endpoints
    assert np.all(w[rot] >= 1)  # Envoy rejects 0
    assert np.all(w <= math.floor(cap * scale))  # hotspot cap
    if not (phase[rot] == P.RAMPING).any() or ramp == 0:
        assert w.sum() == scale * int(rot.sum())  # weights sum to scale x serving endpoints


def test_headroom_weights_follow_load_and_respect_the_cap():
    spec = TrafficSpec(weighting="headroom", hotspot_cap=2.0, weight_scale=100)
    phase = np.full(4, P.SERVING, dtype=np.int8)
    w = endpoint_weights(phase, np.ones(4, bool), np.array([0.2, 0.6, 1.0, 1.5]), np.zeros(4), spec)
    assert w.sum() == 400 and w[0] > w[1] > w[2] >= w[3] >= 1
    w = endpoint_weights(phase, np.ones(4, bool), np.array([0.0, 1.0, 1.0, 1.0]), np.zeros(4), spec)
    assert w[0] == 200  # the idle one is capped at 2x the mean, not given everything
    assert w.sum() == 400


def test_ramping_endpoints_get_a_growing_fraction():
    spec = TrafficSpec(ramp_window_s=60.0, ramp_min_fraction=0.1)
    phase = np.array([P.SERVING, P.RAMPING, P.RAMPING, P.RAMPING], dtype=np.int8)
    w = endpoint_weights(phase, np.ones(4, bool), None, np.array([0.0, np.nan, 30.0, 60.0]), spec)
    assert w.tolist() == [100, 10, 50, 100]


# --- coordination -------------------------------------------------------------------------------
SPEC = TrafficSpec(warmup_s=5.0, ramp_window_s=60.0, drain_timeout_s=300.0)


def table1(phase: P, since: float = 0.0, acked_at: float = float("nan")) -> CoordinationTable:
    return CoordinationTable(("e:1",), np.array([phase], np.int8), np.array([since]), np.array([acked_at]))


@pytest.mark.parametrize(
    "phase,since,acked_at,ready,in_flight,acked_through,now,drain,undrain,expected",
    [
        (P.PENDING, 0, np.nan, True, np.nan, None, 1, False, False, P.WARMING),
        (P.PENDING, 0, np.nan, False, np.nan, None, 1, False, False, P.PENDING),
        (P.WARMING, 0, np.nan, True, 0, None, 4, False, False, P.WARMING),  # warm-up not over
        (P.WARMING, 0, np.nan, True, 0, None, 5, False, False, P.RAMPING),
        (P.WARMING, 0, np.nan, False, 0, None, 9, False, False, P.PENDING),
        (P.RAMPING, 10, np.nan, True, 0, None, 500, False, False, P.RAMPING),  # never ACKed: no progress
        (P.RAMPING, 10, 20, True, 0, 10, 79, False, False, P.RAMPING),  # ramp 59 s of 60
        (P.RAMPING, 10, 20, True, 0, 10, 80, False, False, P.SERVING),
        (P.RAMPING, 10, 20, False, 0, 10, 30, False, False, P.PENDING),
        (P.RAMPING, 10, 20, True, 4, 10, 30, True, False, P.DRAINING),
        (P.SERVING, 0, 0, False, 0, 0, 30, False, False, P.PENDING),
        (P.SERVING, 0, 0, True, 4, 0, 30, True, False, P.DRAINING),
        (P.DRAINING, 50, np.nan, True, 0, 40, 60, False, False, P.DRAINING),  # drain not ACKed yet
        (P.DRAINING, 50, 55, True, 3, 50, 60, False, False, P.DRAINING),  # requests in flight
        (P.DRAINING, 50, 55, True, 0, 50, 60, False, False, P.REMOVABLE),
        (P.DRAINING, 50, 55, True, np.nan, 50, 354, False, False, P.DRAINING),  # unknown in-flight
        (P.DRAINING, 50, 55, True, np.nan, 50, 355, False, False, P.REMOVABLE),  # drain timeout
        (P.DRAINING, 50, 55, True, 3, 50, 60, False, True, P.SERVING),  # undrained for scale-up
        (P.DRAINING, 50, 55, False, 3, 50, 60, False, True, P.DRAINING),  # not ready: stays draining
        (P.PENDING, 10, np.nan, False, np.nan, 10, 20, True, False, P.REMOVABLE),  # never served
        (P.PENDING, 10, np.nan, False, np.nan, 5, 20, True, False, P.PENDING),  # Envoy may still route to it
        (P.REMOVABLE, 0, np.nan, True, 0, 100, 200, False, True, P.REMOVABLE),  # terminal
    ],
)
def test_every_coordination_transition(
    phase, since, acked_at, ready, in_flight, acked_through, now, drain, undrain, expected
):
    t = table1(phase, since, acked_at)
    new, transitions = advance(
        t, np.array([ready]), np.array([in_flight], float), acked_through, float(now), SPEC,
        np.array([drain]), np.array([undrain]),
    )
    assert P(int(new.phase[0])) == expected
    assert int(t.phase[0]) == phase  # input table untouched
    if expected != phase:
        assert transitions[0].src == phase and transitions[0].dst == expected and transitions[0].reason
    else:
        assert transitions == ()


def test_the_ramp_clock_starts_at_the_first_ack_seen():
    t = table1(P.RAMPING, since=10.0)
    t, _ = advance(t, np.array([True]), np.array([0.0]), 10.0, 25.0, SPEC)
    assert t.acked_at[0] == 25.0
    t, _ = advance(t, np.array([True]), np.array([0.0]), 10.0, 84.0, SPEC)
    assert P(int(t.phase[0])) == P.RAMPING
    t, _ = advance(t, np.array([True]), np.array([0.0]), 10.0, 85.0, SPEC)
    assert P(int(t.phase[0])) == P.SERVING


@settings(max_examples=120, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.booleans(), min_size=6, max_size=6),  # ready
            st.lists(st.sampled_from([0.0, 1.0, 5.0, float("nan")]), min_size=6, max_size=6),  # in flight
            st.booleans(),  # does the proxy ACK the previous plan?
            st.integers(0, 8),  # target replicas
            st.sampled_from([1.0, 10.0, 200.0]),  # time step
        ),
        min_size=1,
        max_size=25,
    )
)
def test_random_histories_only_make_allowed_transitions_and_never_remove_undrained(steps):
    keys = tuple(f"e{i}:1" for i in range(6))
    table = CoordinationTable.adopt(keys, np.array([True, True, True, False, False, False]), 0.0)
    now, last_plan, acked_through = 0.0, None, None
    for ready, in_flight, ack, target, dt in steps:
        now += dt
        if ack and last_plan is not None:
            acked_through = last_plan
        ready_a, fl = np.array(ready), np.array(in_flight)
        drain, undrain = select_drains(table, target, fl, ready_a)
        before = table
        table, transitions = advance(table, ready_a, fl, acked_through, now, SPEC, drain, undrain)
        for tr in transitions:
            assert (tr.src, tr.dst) in ALLOWED
            i = keys.index(tr.key)
            if tr.dst == P.REMOVABLE:
                assert acked_through is not None and acked_through >= before.since[i]  # Envoy knew
                if tr.src == P.DRAINING:
                    drained = fl[i] == 0 or (now - before.acked_at[i] >= SPEC.drain_timeout_s)
                    assert drained
                else:
                    assert not (fl[i] > 0)
        # weight only on ready RAMPING/SERVING endpoints
        w = endpoint_weights(table.phase, ready_a, None, now - table.acked_at, SPEC)
        assert np.all((w > 0) <= (ready_a & ((table.phase == P.RAMPING) | (table.phase == P.SERVING))))
        last_plan = now


def test_drain_victims_prefer_unready_then_fewest_in_flight():
    keys = tuple(f"e{i}:1" for i in range(5))
    t = CoordinationTable(keys, np.array([P.SERVING, P.SERVING, P.PENDING, P.SERVING, P.DRAINING], np.int8),
                          np.zeros(5), np.zeros(5))
    drain, undrain = select_drains(t, 2, np.array([5.0, 1.0, np.nan, 3.0, 0.0]), np.ones(5, bool))
    assert drain.tolist() == [False, True, True, False, False]
    drain, undrain = select_drains(t, 5, np.zeros(5), np.ones(5, bool))
    assert undrain.tolist() == [False, False, False, False, True] and not drain.any()


# --- plan_service end to end ---------------------------------------------------------------------
def fleet(n, now, ready=True, running=1.0, locality=0, localities=("",), gpu=0.5):
    f = SignalFrame.from_arrays([f"10.0.0.{i}:8000" for i in range(n)], gpu_util=gpu, running=running,
                                waiting=0.0, ready=ready, taken_at=now, locality=locality, localities=localities)
    return ServiceSignals("svc", f, current_replicas=n)


def decision(sig, target, now, spec=LoadIndexSpec()):
    rep = compute_load(sig.frame, spec, now)
    return Decision("test", "svc", now, sig.current_replicas, target, "test", load=rep)


def test_scale_down_drains_first_and_removes_only_after_ack_and_idle():
    tspec = TrafficSpec()
    s = fleet(5, 0.0, running=[4.0, 0.0, 2.0, 5.0, 3.0])
    r = plan_service(decision(s, 3, 0.0), s, None, tspec, 0.0, acked_through=None)
    draining = [k for k, p in zip(r.keys, r.phase, strict=True) if p == P.DRAINING]
    assert draining == ["10.0.0.1:8000", "10.0.0.2:8000"]  # fewest in flight
    assert r.scaler_replicas == 5 and r.removable == ()
    assert r.weight[1] == 0 and r.weight[2] == 0 and r.weight[0] == 100
    # next tick: Envoy ACKed the draining plan; e1 idle, e2 still busy
    s2 = fleet(5, 2.0, running=[4.0, 0.0, 2.0, 5.0, 3.0])
    r2 = plan_service(decision(s2, 3, 2.0), s2, r.table, tspec, 2.0, acked_through=0.0)
    assert r2.removable == ("10.0.0.1:8000",)
    assert r2.scaler_replicas == 3 + 1  # e2 still draining
    pool = apply_to_pool(PoolPlan("p"), r2)
    healths = {e.key: (e.health, e.weight) for e in pool.endpoints}
    assert "10.0.0.1:8000" not in healths
    assert healths["10.0.0.2:8000"] == (HealthStatus.DRAINING, 1)


def test_scale_up_undrains_warm_endpoints_before_new_pods():
    tspec = TrafficSpec()
    s = fleet(4, 0.0)
    r = plan_service(decision(s, 2, 0.0), s, None, tspec, 0.0)
    assert int(np.count_nonzero(r.phase == P.DRAINING)) == 2
    r2 = plan_service(decision(s, 4, 1.0), s, r.table, tspec, 1.0)
    assert int(np.count_nonzero(r2.phase == P.SERVING)) == 4
    assert {t.reason for t in r2.transitions} == {"undrained for scale-up"}


def test_new_endpoints_warm_then_ramp_after_ack():
    tspec = TrafficSpec(ramp_window_s=60.0)
    s = fleet(2, 0.0)
    r = plan_service(decision(s, 3, 0.0), s, None, tspec, 0.0)
    s3 = fleet(3, 10.0, ready=[True, True, False])
    r = plan_service(decision(s3, 3, 10.0), s3, r.table, tspec, 10.0, 0.0)
    assert P(int(r.phase[2])) == P.PENDING and r.weight[2] == 0
    s3 = fleet(3, 20.0)
    r = plan_service(decision(s3, 3, 20.0), s3, r.table, tspec, 20.0, 10.0)
    assert P(int(r.phase[2])) == P.WARMING and r.weight[2] == 0
    r = plan_service(decision(s3, 3, 22.0), s3, r.table, tspec, 22.0, 20.0)
    assert P(int(r.phase[2])) == P.RAMPING and r.weight[2] == 10  # min fraction until ACKed
    r = plan_service(decision(s3, 3, 52.0), s3, r.table, tspec, 52.0, 22.0)  # ACK seen at 52
    assert r.weight[2] == 10
    r = plan_service(decision(s3, 3, 82.0), s3, r.table, tspec, 82.0, 52.0)
    assert r.weight[2] == 50
    r = plan_service(decision(s3, 3, 112.0), s3, r.table, tspec, 112.0, 82.0)
    assert P(int(r.phase[2])) == P.SERVING and r.weight.tolist() == [100, 100, 100]


@pytest.mark.parametrize(
    "loads,expected",
    [
        ({"r/a/": 0.5, "r/b/": 0.5, "r/c/": 0.5}, (("r/a/", 0), ("r/b/", 1), ("r/c/", 2))),
        ({"r/a/": 0.9, "r/b/": 0.5, "r/c/": 0.5}, (("r/a/", 0), ("r/b/", 0), ("r/c/", 1))),
        ({"r/a/": 0.9, "r/b/": 0.95, "r/c/": 0.5}, (("r/a/", 0), ("r/b/", 0), ("r/c/", 0))),
        ({"r/b/": 0.5, "r/c/": 0.5}, (("r/a/", 0), ("r/b/", 0), ("r/c/", 1))),  # no ready in local
    ],
    ids=["local-has-room", "local-saturated-spills-to-next", "two-saturated", "local-empty"],
)
def test_locality_spill_only_when_local_is_saturated(loads, expected):
    spec = TrafficSpec(weighting="headroom", local_locality="r/a/", spill_threshold=0.85)
    locs = ("r/a/", "r/b/", "r/c/")
    _, prio = locality_plan(np.array([0, 1, 2]), locs, np.array([100, 100, 100]), loads, spec)
    assert prio == expected


def test_locality_weights_follow_endpoint_headroom():
    spec = TrafficSpec(weighting="headroom")
    lw, prio = locality_plan(np.array([0, 0, 1]), ("z1", "z2"), np.array([150, 50, 100]), {}, spec)
    assert lw == (("z1", 133), ("z2", 67)) and prio is None
    lw, _ = locality_plan(np.array([0, 0, 1]), ("z1", "z2"), np.array([150, 50, 100]), {}, TrafficSpec())
    assert lw is None  # equal weighting leaves Envoy's defaults


@pytest.mark.parametrize("n,expected", [(3, 34), (10, 10), (50, 10), (0, 10)])
def test_outlier_detection_can_always_eject_one_host(n, expected):
    od = outlier_plan(OutlierSpec(), n)
    assert od.max_ejection_percent == expected
    assert od.failure_percentage_threshold == 85 and od.success_rate_stdev_factor == 1900
    assert outlier_plan(None, n) is None


def test_apply_to_pool_replaces_without_mutating_the_input_pool():
    e0 = EndpointPlan("10.0.0.0", 8000, Locality("r", "a"), weight=7)
    pool = PoolPlan("p", endpoints=(e0,), slow_start_window_s=5.0)
    s = fleet(2, 0.0, locality=[0, 1], localities=("r/a/", "r/b/"))
    r = plan_service(decision(s, 2, 0.0), s, None, TrafficSpec(weighting="headroom"), 0.0)
    new = apply_to_pool(pool, r)
    assert pool.endpoints == (e0,) and new is not pool
    assert [e.key for e in new.endpoints] == ["10.0.0.0:8000", "10.0.0.1:8000"]
    assert new.endpoints[0].locality == Locality("r", "a") and new.endpoints[1].locality == Locality("r", "b")
    assert all(e.weight == 100 and e.health is HealthStatus.HEALTHY for e in new.endpoints)
    assert new.outlier_detection is not None and new.slow_start_window_s == 5.0
    assert new.locality_weights == (("r/a/", 100), ("r/b/", 100))


def test_plan_explanation_counts_phases():
    s = fleet(3, 0.0)
    r = plan_service(decision(s, 3, 0.0), s, None, TrafficSpec(), 0.0)
    assert "serving 3" in r.explanation and "target 3" in r.explanation


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["equal", "headroom"]),
    st.sampled_from([0.0, 20.0]),
    st.lists(
        st.tuples(
            st.lists(st.booleans(), min_size=8, max_size=8),
            st.lists(st.sampled_from([0.0, 2.0, float("nan")]), min_size=8, max_size=8),
            st.lists(st.floats(0.0, 2.0), min_size=8, max_size=8),
            st.integers(0, 10),
            st.booleans(),
        ),
        min_size=1,
        max_size=15,
    ),
)
def test_plan_and_pool_invariants_over_random_histories(weighting, ramp, steps):
    tspec = TrafficSpec(weighting=weighting, ramp_window_s=ramp, drain_timeout_s=30.0)
    table, now, last, acked = None, 0.0, None, None
    for ready, fl, gpu, target, ack in steps:
        now += 5.0
        if ack:
            acked = last
        s = fleet(8, now, ready=ready, running=fl, gpu=gpu)
        prev = table
        r = plan_service(decision(s, target, now), s, table, tspec, now, acked)
        ready_a = np.array(ready)
        rot = ready_a & ((r.phase == P.RAMPING) | (r.phase == P.SERVING))
        assert np.all((r.weight > 0) == rot)
        assert r.scaler_replicas == target + int(np.count_nonzero(r.phase == P.DRAINING))
        if prev is not None:
            for k in r.removable:
                i = r.keys.index(k)
                assert P(int(prev.phase[i])) in (P.DRAINING, P.PENDING, P.WARMING, P.REMOVABLE)
        pool = apply_to_pool(PoolPlan("p"), r)
        by_key = {k: i for i, k in enumerate(r.keys)}
        for e in pool.endpoints:
            i = by_key[e.key]
            assert e.weight >= 1
            if e.health is HealthStatus.HEALTHY:
                assert rot[i]
            else:
                assert e.health is HealthStatus.DRAINING and r.phase[i] == P.DRAINING
        assert not {e.key for e in pool.endpoints} & set(r.removable)
        table, last = r.table, now
