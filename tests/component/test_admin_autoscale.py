"""The admin API acting on autoscaled pools: real controller, real local replicas (emulated vLLM processes).

Pause/resume, replica bounds (a scale-up follows), policy parameters validated like the config, an
operator drain that ends with the replica stopped and replaced, a weight override in the published plan,
decisions with explanations and the event feed naming who acted.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.admin import Served, md, pb, token_config
from support.ports import free_port

from xds_control.core.traffic import HealthStatus


def autoscaled_config(tick_s: float = 0.2, initial: int = 1, min_replicas: int = 1) -> dict:
    return {
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": free_port()}],
        "services": [{"name": "llm", "tenant": "team-a", "pools": [{
            "name": "gpu",
            "autoscale": {
                "policy": "threshold", "initial_replicas": initial,
                "overrides": {"min_replicas": min_replicas, "max_replicas": 3, "gpu_mem_trigger": 0.99,
                              "traffic": {"warmup_s": 0, "ramp_window_s": 0, "drain_timeout_s": 5}},
                "replica": {"profile": "tiny", "load_delay_s": 0},
            },
        }]}],
        "controller": {"tick_s": tick_s},
        "xds": {"debounce_ms": 0, "max_delay_ms": 0, "ack_timeout_s": 2},
        "admin": {"port": 0, "tokens": token_config()},
    }


def wait_for(pred, timeout: float = 20.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def serving(s) -> list:  # type: ignore[no-untyped-def]
    eps = s.ListEndpoints(pb.ListEndpointsRequest(service="llm"), metadata=md("a-viewer")).endpoints
    return [e for e in eps if e.phase == "serving" and e.weight > 0]


def code_of(fn, *a, **kw) -> grpc.RpcError | None:  # type: ignore[no-untyped-def]
    try:
        fn(*a, **kw)
    except grpc.RpcError as e:
        return e
    return None


def test_operate_an_autoscaled_pool() -> None:
    with Served(autoscaled_config()) as sv:
        s, op = sv.stub, md("a-operator")
        first = wait_for(lambda: serving(s), what="a serving replica")[0]
        pool = s.ListServices(pb.ListServicesRequest(), metadata=md("a-viewer")).services[0].pools[0]
        assert (pool.autoscaled, pool.policy, pool.min_replicas, pool.max_replicas) == (True, "threshold", 1, 3)
        assert first.state == "ready" and first.load_index >= 0
        d = wait_for(lambda: s.ListDecisions(pb.ListDecisionsRequest(service="llm"), metadata=md("a-viewer")).decisions)
        assert d[-1].policy == "threshold" and d[-1].explanation and d[-1].current == 1

        # pause / resume, with preconditions
        s.PauseAutoscaling(pb.ServiceRef(service="llm", reason="maintenance"), metadata=op)
        assert s.GetStatus(pb.GetStatusRequest(), metadata=op).policies[0].paused
        e = code_of(s.PauseAutoscaling, pb.ServiceRef(service="llm"), metadata=op)
        assert e is not None and e.code() == grpc.StatusCode.FAILED_PRECONDITION
        wait_for(lambda: s.ListDecisions(pb.ListDecisionsRequest(limit=1), metadata=op).decisions[-1]
                 .explanation.startswith("autoscaling paused by an operator"), what="a paused decision")
        s.ResumeAutoscaling(pb.ServiceRef(service="llm"), metadata=op)
        e = code_of(s.ResumeAutoscaling, pb.ServiceRef(service="llm"), metadata=op)
        assert e is not None and e.code() == grpc.StatusCode.FAILED_PRECONDITION

        # policy parameters: validated like the config (field named), admin role, applied
        for overrides, field in (({"l_high": 5}, "overrides.l_high"), ({"nope": 1}, "overrides.nope"),
                                 ({"traffic": {"warmup_s": -1}}, "overrides.traffic.warmup_s")):
            r = pb.SetPolicyRequest(service="llm")
            r.overrides.update(overrides)
            e = code_of(s.SetPolicy, r, metadata=md("a-admin"))
            assert e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT, overrides
            assert e.details().startswith(field + ": "), e.details()
        e = code_of(s.SetPolicy, pb.SetPolicyRequest(service="llm", policy="/etc/passwd"), metadata=md("a-admin"))
        assert e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith("policy: ")
        r = pb.SetPolicyRequest(service="llm", reason="less eager")
        r.overrides.update({"l_high": 0.9})
        s.SetPolicy(r, metadata=md("a-admin"))
        assert sv.run(lambda: sv.cp.controller.runtimes["gpu"].spec.l_high) == 0.9

        # replica bounds: invalid named; min 2 scales up
        e = code_of(s.SetReplicaBounds, pb.SetReplicaBoundsRequest(service="llm", min_replicas=3, max_replicas=2),
                    metadata=op)
        assert e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith("min_replicas")
        s.SetReplicaBounds(pb.SetReplicaBoundsRequest(service="llm", min_replicas=2), metadata=op)
        two = wait_for(lambda: len(serving(s)) == 2 and serving(s), what="two serving replicas")
        # a config-independent pin: the operator's spec survives a config reload
        sv.run(lambda: sv.cp.controller.set_config(sv.cp.config))
        assert sv.run(lambda: sv.cp.controller.runtimes["gpu"].spec.min_replicas) == 2

        # weight override on an autoscaled endpoint shows in the published plan
        keep, victim = two[0].address, two[1].address
        s.SetWeightOverride(pb.SetWeightOverrideRequest(service="llm", endpoint=keep, weight=77), metadata=op)
        wait_for(lambda: any(e.key == keep and e.weight == 77 for e in sv.cp.cache.snapshot.plan.pool("gpu").endpoints),
                 what="the pinned weight in the plan")

        # drain: DRAINING, then stopped and replaced; acting on it meanwhile is a failed precondition
        s.DrainEndpoint(pb.EndpointRef(service="llm", endpoint=victim, reason="bad GPU"), metadata=op)
        e = code_of(s.SetWeightOverride, pb.SetWeightOverrideRequest(service="llm", endpoint=victim, weight=3),
                    metadata=op)
        assert e is not None and e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
        wait_for(lambda: victim not in {e.address for e in serving(s)} and len(serving(s)) == 2,
                 what="the drained replica replaced")
        assert all(not (e.key == victim and e.health is HealthStatus.HEALTHY)
                   for e in sv.cp.cache.snapshot.plan.pool("gpu").endpoints)
        evs = list(s.WatchEvents(pb.WatchEventsRequest(), metadata=md("a-viewer")))
        kinds = [e.kind for e in evs]
        assert {"scale_up", "scale_down", "action"} <= set(kinds)
        downs = [e for e in evs if e.kind == "scale_down"]
        assert victim in {e.endpoint for e in downs} and all(e.service == "llm" for e in downs)
        actions = [(json_format.MessageToDict(e.detail)["action"], e.actor) for e in evs if e.kind == "action"]
        assert ("drain", "a-operator (tenant team-a, operator)") in actions
        assert ("set_policy", "a-admin (tenant team-a, admin)") in actions
        assert [a for a, _ in actions] == ["pause", "resume", "set_policy", "set_replica_bounds", "weight_set", "drain"]


@pytest.fixture(scope="module")
def idle_autoscaled():
    # One tick at start (tick_s 600) and no replicas: fuzzed bounds can never start processes.
    with Served(autoscaled_config(tick_s=600, initial=0, min_replicas=0)) as sv:
        yield sv


_num = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
                 st.booleans(), st.none())
_over = st.dictionaries(
    st.one_of(st.sampled_from(["min_replicas", "max_replicas", "l_high", "l_low", "cooldown_up_s", "traffic",
                               "load_index", "scale_up_step"]), st.text(max_size=15)),
    st.one_of(_num, st.dictionaries(st.sampled_from(["warmup_s", "ramp_window_s", "alpha", "weighting", "x"]), _num,
                                    max_size=3)),
    max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.one_of(st.sampled_from(["", "threshold", "hpa", "kpa", "predictive", "comprehensive"]),
                        st.text(max_size=30)),
       overrides=_over, bounds=st.tuples(st.none() | st.integers(0, 2**32 - 1), st.none() | st.integers(0, 2**32 - 1)))
def test_fuzzed_policy_and_bounds(idle_autoscaled, policy, overrides, bounds) -> None:
    s = idle_autoscaled.stub
    r = pb.SetPolicyRequest(service="llm", policy=policy)
    r.overrides.update(overrides)
    b = pb.SetReplicaBoundsRequest(service="llm")
    if bounds[0] is not None:
        b.min_replicas = bounds[0]
    if bounds[1] is not None:
        b.max_replicas = bounds[1]
    for call, req in ((s.SetPolicy, r), (s.SetReplicaBounds, b)):
        e = code_of(call, req, metadata=md("root"), timeout=10)
        if e is None:
            continue
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (req, e.code(), e.details())
        field = e.details().split(":", 1)[0]
        assert field and " " not in field, e.details()
    assert s.GetStatus(pb.GetStatusRequest(), metadata=md("root")).policies[0].pool == "gpu"
