"""The admin API against a running control plane: every read and act call, auth matrix, watch, fuzzing.

Real gRPC over 127.0.0.1 on free ports; the control plane runs on its own event-loop thread
(``support.admin.Served``) so that blocking clients and hypothesis can drive it.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.admin import Served, md, pb, token_config
from support.cp import config_dict

from xds_control.admin.service import SERVICE_NAME

A1, A2, A3, B1 = "127.0.0.1:18101", "127.0.0.1:18102", "127.0.0.1:18103", "127.0.0.1:18201"


def two_tenants() -> dict:
    cfg = config_dict(pools={"p1": [18101, 18102], "p2": [18103]}, tenant="team-a")
    cfg["services"].append({"name": "chat", "tenant": "team-b", "hosts": ["chat.example"],
                            "pools": [{"name": "c1", "endpoints": [{"address": "127.0.0.1", "port": 18201}]}]})
    cfg["admin"] = {"port": 0, "tokens": token_config()}
    return cfg


@pytest.fixture(scope="module")
def served():
    with Served(two_tenants()) as s:
        yield s


def code_of(fn, *a, **kw) -> grpc.StatusCode:
    try:
        fn(*a, **kw)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def error_of(fn, *a, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*a, **kw)
    return ei.value


# -- Read ----------------------------------------------------------------------------------------------
def test_status_services_endpoints_plan_dump(served) -> None:
    s = served.stub
    st_ = s.GetStatus(pb.GetStatusRequest(), metadata=md("root"))
    assert st_.version >= 1 and st_.leader and st_.caller == "root (tenant *, admin)"
    svcs = s.ListServices(pb.ListServicesRequest(), metadata=md("root"))
    assert {(x.name, x.tenant) for x in svcs.services} == {("llm", "team-a"), ("chat", "team-b")}
    p1 = next(p for p in svcs.services[0].pools if p.name == "p1")
    assert (p1.policy, p1.replicas, p1.in_rotation, p1.autoscaled) == ("static", 2, 2, False)
    eps = s.ListEndpoints(pb.ListEndpointsRequest(service="llm"), metadata=md("a-viewer"))
    assert sorted(e.address for e in eps.endpoints) == [A1, A2, A3]
    assert all(e.health == "HEALTHY" and e.weight == 1 and e.state == "static" for e in eps.endpoints)
    plan = s.GetPlan(pb.GetPlanRequest(), metadata=md("a-viewer"))
    assert {p.name for p in plan.pools} == {"p1", "p2"} and plan.reason == ""  # tenant view: no global reason
    dump = s.GetConfigDump(pb.GetConfigDumpRequest(), metadata=md("root"))
    assert [t.type for t in dump.types] == ["CDS", "EDS", "LDS", "RDS"]
    eds = s.GetConfigDump(pb.GetConfigDumpRequest(type="endpoints"), metadata=md("a-viewer"))
    assert [t.type for t in eds.types] == ["EDS"] and sorted(r.name for r in eds.types[0].resources) == ["p1", "p2"]
    import xds_control.snapshot.resources  # noqa: F401 - registers Envoy types for Any unpacking

    cla = json_format.MessageToDict(eds.types[0].resources[0].resource)
    assert cla["clusterName"] == "p1"
    assert s.ListDecisions(pb.ListDecisionsRequest(), metadata=md("root")).decisions == []  # static: no controller


def test_tenant_scoping_of_reads(served) -> None:
    s = served.stub
    b = s.ListServices(pb.ListServicesRequest(), metadata=md("b-operator"))
    assert [x.name for x in b.services] == ["chat"]
    assert [e.address for e in s.ListEndpoints(pb.ListEndpointsRequest(), metadata=md("b-operator")).endpoints] == [B1]
    e = error_of(s.ListEndpoints, pb.ListEndpointsRequest(service="llm"), metadata=md("b-operator"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "service 'llm' not found"
    missing = error_of(s.ListEndpoints, pb.ListEndpointsRequest(service="nope"), metadata=md("b-operator"))
    assert missing.details() == "service 'nope' not found"  # another tenant's service looks like a missing one
    cds = s.GetConfigDump(pb.GetConfigDumpRequest(type="CDS"), metadata=md("b-operator"))
    assert [r.name for r in cds.types[0].resources] == ["c1"]
    assert code_of(s.GetConfigDump, pb.GetConfigDumpRequest(type="LDS"), metadata=md("b-operator")) \
        == grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection_need_no_token(served) -> None:
    h = health_pb2_grpc.HealthStub(served.channel)
    assert h.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status == health_pb2.HealthCheckResponse.SERVING
    r = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    resp = next(iter(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    assert SERVICE_NAME in {x.name for x in resp.list_services_response.service}


# -- Authentication and authorization matrix ----------------------------------------------------------
U, P, N, OK = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
               grpc.StatusCode.OK)


@pytest.mark.parametrize("who,metadata,expect", [
    ("no token", [], U),
    ("wrong token", [("authorization", "Bearer not-a-token-0123456789")], U),
    ("not bearer", [("authorization", "Basic cm9vdDpyb290")], U),
    ("viewer reads", md("a-viewer"), OK),
])
def test_authentication(served, who, metadata, expect) -> None:
    e = code_of(served.stub.GetStatus, pb.GetStatusRequest(), metadata=metadata)
    assert e == expect, who


def test_streams_need_a_token_too(served) -> None:
    e = error_of(lambda: list(served.stub.WatchEvents(pb.WatchEventsRequest())))
    assert e.code() == U and e.details() == "missing 'authorization: Bearer <token>' metadata"


def test_unauthenticated_message_never_echoes_the_token(served) -> None:
    e = error_of(served.stub.GetStatus, pb.GetStatusRequest(), metadata=[("authorization", "Bearer sekrit-0123456789")])
    assert e.details() == "invalid token" and "sekrit" not in e.details()


@pytest.mark.parametrize("token,call,expect", [
    ("a-viewer", "drain", P), ("a-viewer", "weight", P), ("a-viewer", "pause", P),
    ("a-operator", "policy", P),                      # policies need the admin role
    ("b-operator", "drain", N), ("b-operator", "weight", N), ("b-operator", "policy", P),
    ("a-operator", "weight", OK), ("a-admin", "bounds", grpc.StatusCode.FAILED_PRECONDITION),  # static: no autoscaling
    ("root", "weight_b", OK),
])
def test_authorization_matrix(served, token, call, expect) -> None:
    s = served.stub
    calls = {
        "drain": lambda: s.DrainEndpoint(pb.EndpointRef(service="llm", endpoint=A3), metadata=md(token)),
        "weight": lambda: s.SetWeightOverride(pb.SetWeightOverrideRequest(service="llm", endpoint=A1, weight=3),
                                              metadata=md(token)),
        "weight_b": lambda: s.SetWeightOverride(pb.SetWeightOverrideRequest(service="chat", endpoint=B1, weight=4),
                                                metadata=md(token)),
        "pause": lambda: s.PauseAutoscaling(pb.ServiceRef(service="llm"), metadata=md(token)),
        "policy": lambda: s.SetPolicy(pb.SetPolicyRequest(service="llm", policy="threshold"), metadata=md(token)),
        "bounds": lambda: s.SetReplicaBounds(pb.SetReplicaBoundsRequest(service="llm", max_replicas=3),
                                             metadata=md(token)),
    }
    assert code_of(calls[call]) == expect
    served.run(lambda: (served.cp.operator.weights.clear(), served.cp.operator.drains.clear()))


# -- Act on static pools: overrides, drains, preconditions, events with the actor ------------------------
def test_weight_override_drain_and_events(served) -> None:
    s = served.stub
    start = s.WatchEvents(pb.WatchEventsRequest(), metadata=md("root"))
    before = max([ev.seq for ev in start], default=0)
    r = s.SetWeightOverride(pb.SetWeightOverrideRequest(service="llm", endpoint=A1, weight=40, reason="canary"),
                            metadata=md("a-operator"))
    assert r.event_seq > before
    served.call(_wait_plan(served, lambda e: e.get(A1) == (40, "HEALTHY")))
    listed = s.ListEndpoints(pb.ListEndpointsRequest(service="llm"), metadata=md("a-viewer"))
    ep = {e.address: e for e in listed.endpoints}
    assert ep[A1].weight == 40 and ep[A1].weight_override == 40
    s.DrainEndpoint(pb.EndpointRef(service="llm", endpoint=A1), metadata=md("a-operator"))
    served.call(_wait_plan(served, lambda e: e.get(A1) == (1, "DRAINING")))
    # acting on a draining target is a failed precondition, and so is draining it again
    assert code_of(s.SetWeightOverride, pb.SetWeightOverrideRequest(service="llm", endpoint=A1, weight=5),
                   metadata=md("a-operator")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(s.DrainEndpoint, pb.EndpointRef(service="llm", endpoint=A1), metadata=md("a-operator")) \
        == grpc.StatusCode.FAILED_PRECONDITION
    s.UndrainEndpoint(pb.EndpointRef(service="llm", endpoint=A1), metadata=md("a-operator"))
    served.call(_wait_plan(served, lambda e: e.get(A1) == (40, "HEALTHY")))  # the pinned weight is back
    s.ClearWeightOverride(pb.EndpointRef(service="llm", endpoint=A1), metadata=md("a-operator"))
    served.call(_wait_plan(served, lambda e: e.get(A1) == (1, "HEALTHY")))
    assert code_of(s.ClearWeightOverride, pb.EndpointRef(service="llm", endpoint=A1), metadata=md("a-operator")) \
        == grpc.StatusCode.FAILED_PRECONDITION
    evs = [e for e in s.WatchEvents(pb.WatchEventsRequest(after_seq=before, kinds=["action"]), metadata=md("root"))]
    assert [json_format.MessageToDict(e.detail)["action"] for e in evs] == \
        ["weight_set", "drain", "undrain", "weight_clear"]
    assert all(e.actor == "a-operator (tenant team-a, operator)" for e in evs)
    assert evs[0].endpoint == A1 and evs[0].service == "llm" and "canary" in str(evs[0].detail)
    assert all("token-0123456789" not in str(e) for e in evs)
    # team-b sees none of team-a's actions; pushes are visible to everyone but without their reason
    b = list(s.WatchEvents(pb.WatchEventsRequest(after_seq=before), metadata=md("b-operator")))
    assert b and all(e.kind == "push" and e.message == f"v{e.detail['version']:.0f}" for e in b)
    assert all("reason" not in e.detail for e in b)


async def _wait_plan(served, pred, timeout: float = 5.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = served.cp.cache.snapshot
        eps = {e.key: (e.weight, e.health.value) for p in snap.plan.pools for e in p.endpoints}
        if pred(eps):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"plan never matched: {eps}")


def test_watch_follow_resumes_after_a_sequence_number(served) -> None:
    s = served.stub
    base = max([e.seq for e in s.WatchEvents(pb.WatchEventsRequest(), metadata=md("root"))], default=0)
    got: list = []
    call = s.WatchEvents(pb.WatchEventsRequest(after_seq=base, follow=True, kinds=["action"]), metadata=md("root"))

    def consume() -> None:
        try:
            for ev in call:
                got.append(ev)
                if len(got) == 2:
                    call.cancel()
        except grpc.RpcError:
            pass

    t = threading.Thread(target=consume)
    t.start()
    r1 = s.SetWeightOverride(pb.SetWeightOverrideRequest(service="chat", endpoint=B1, weight=9), metadata=md("root"))
    r2 = s.ClearWeightOverride(pb.EndpointRef(service="chat", endpoint=B1), metadata=md("root"))
    t.join(10)
    assert not t.is_alive()
    assert [e.seq for e in got] == [r1.event_seq, r2.event_seq]
    # resume from the first one: only the second comes back
    again = list(s.WatchEvents(pb.WatchEventsRequest(after_seq=r1.event_seq, kinds=["action"]), metadata=md("root")))
    assert [e.seq for e in again] == [r2.event_seq]
    far = error_of(lambda: list(s.WatchEvents(pb.WatchEventsRequest(after_seq=10**9), metadata=md("root"))))
    assert far.code() == grpc.StatusCode.OUT_OF_RANGE and far.details().startswith("after_seq:")


@pytest.mark.parametrize("req,field", [
    (pb.SetWeightOverrideRequest(service="llm", endpoint=A1, weight=0), "weight"),
    (pb.SetWeightOverrideRequest(service="llm", endpoint=A1, weight=2_000_000), "weight"),
    (pb.SetWeightOverrideRequest(service="llm", endpoint="127.0.0.1", weight=2), "endpoint"),
    (pb.SetWeightOverrideRequest(service="", endpoint=A1, weight=2), "service"),
    (pb.SetWeightOverrideRequest(service="llm", endpoint=A1, weight=2, reason="x" * 501), "reason"),
])
def test_invalid_argument_names_the_field(served, req, field) -> None:
    e = error_of(served.stub.SetWeightOverride, req, metadata=md("root"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details().startswith(f"{field}: "), e.details()


def test_not_found(served) -> None:
    s = served.stub
    e = error_of(s.DrainEndpoint, pb.EndpointRef(service="llm", endpoint="127.0.0.1:1"), metadata=md("root"))
    assert e.code() == grpc.StatusCode.NOT_FOUND and "127.0.0.1:1" in e.details()
    assert code_of(s.PauseAutoscaling, pb.ServiceRef(service="llm", pool="nope"), metadata=md("root")) == N


# -- Fuzzing: any field values give a clear status, never a crash ----------------------------------------
_text = st.one_of(st.sampled_from(["llm", "chat", "", "p1", "c1", A1, B1, "comprehensive", "threshold"]),
                  st.text(max_size=300))
_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.text(max_size=20),
                               st.floats(allow_nan=False, allow_infinity=False)),
                     lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=12), c, max_size=3)),
                     max_leaves=8)
_keys = st.one_of(st.sampled_from(["min_replicas", "max_replicas", "traffic", "load_index", "cooldown_s", "policy"]),
                  st.text(max_size=20))
_u32 = st.integers(0, 2**32 - 1)


@st.composite
def _requests(draw):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["weight", "clear", "drain", "undrain", "pause", "resume", "policy", "bounds",
                                 "endpoints", "plan", "dump", "decisions", "watch"]))
    svc, ep, pool, text = draw(_text), draw(_text), draw(_text), draw(_text)
    if kind == "weight":
        return "SetWeightOverride", pb.SetWeightOverrideRequest(
            service=svc, endpoint=ep, weight=draw(_u32), reason=text
        )
    if kind in ("clear", "drain", "undrain"):
        m = {"clear": "ClearWeightOverride", "drain": "DrainEndpoint", "undrain": "UndrainEndpoint"}[kind]
        return m, pb.EndpointRef(service=svc, endpoint=ep, reason=text)
    if kind in ("pause", "resume"):
        return ("PauseAutoscaling" if kind == "pause" else "ResumeAutoscaling"), pb.ServiceRef(service=svc, pool=pool)
    if kind == "policy":
        r = pb.SetPolicyRequest(service=svc, pool=pool, policy=draw(_text))
        r.overrides.update(draw(st.dictionaries(_keys, _json, max_size=4)))
        return "SetPolicy", r
    if kind == "bounds":
        r = pb.SetReplicaBoundsRequest(service=svc, pool=pool)
        for f in ("min_replicas", "max_replicas"):
            v = draw(st.none() | _u32)
            if v is not None:
                setattr(r, f, v)
        return "SetReplicaBounds", r
    if kind == "endpoints":
        return "ListEndpoints", pb.ListEndpointsRequest(service=svc)
    if kind == "plan":
        return "GetPlan", pb.GetPlanRequest(service=svc)
    if kind == "dump":
        return "GetConfigDump", pb.GetConfigDumpRequest(type=draw(_text))
    if kind == "decisions":
        return "ListDecisions", pb.ListDecisionsRequest(service=svc, limit=draw(_u32))
    return "WatchEvents", pb.WatchEventsRequest(after_seq=draw(st.integers(0, 2**64 - 1)), service=svc,
                                                kinds=draw(st.lists(_text, max_size=2)))


ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.PERMISSION_DENIED}


@pytest.fixture(scope="module")
def fuzz_served():
    with Served(two_tenants()) as s:
        yield s


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=_requests(), who=st.sampled_from(["root", "a-admin", "b-operator"]))
def test_fuzzed_requests_get_a_clear_status(fuzz_served, req, who) -> None:
    method, request = req
    fn = getattr(fuzz_served.stub, method)
    try:
        out = fn(request, metadata=md(who), timeout=10)
        if method == "WatchEvents":
            list(out)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    assert code in ALLOWED, (method, request, code, details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = details.split(":", 1)[0]
        assert field and " " not in field, details  # the message starts with the field's name


def test_server_healthy_after_fuzzing(fuzz_served) -> None:
    assert fuzz_served.stub.GetStatus(pb.GetStatusRequest(), metadata=md("root")).version >= 1


def test_overrides_are_per_pool_when_tenants_share_an_address() -> None:
    cfg = config_dict(pools={"p1": [18101], "p2": [18101, 18102]}, tenant="team-a")
    cfg["services"].append({"name": "chat", "tenant": "team-b", "hosts": ["chat.example"],
                            "pools": [{"name": "c1", "endpoints": [{"address": "127.0.0.1", "port": 18101}]}]})
    cfg["admin"] = {"port": 0, "tokens": token_config()}
    with Served(cfg) as sv:
        s = sv.stub
        e = error_of(s.DrainEndpoint, pb.EndpointRef(service="llm", endpoint=A1), metadata=md("a-operator"))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details() == \
            f"pool: endpoint {A1} is in pools p1, p2; name one"
        s.DrainEndpoint(pb.EndpointRef(service="llm", endpoint=A1, pool="p2"), metadata=md("a-operator"))
        s.SetWeightOverride(pb.SetWeightOverrideRequest(service="llm", endpoint=A1, pool="p1", weight=9),
                            metadata=md("a-operator"))

        async def published():  # type: ignore[no-untyped-def]
            await _wait_plan(sv, lambda e: True)
            plan = sv.cp.cache.snapshot.plan
            return {(p.name, e.key): (e.weight, e.health.value) for p in plan.pools for e in p.endpoints}

        want = {("p1", A1): (9, "HEALTHY"), ("p2", A1): (1, "DRAINING")}
        deadline = time.monotonic() + 5
        # both operator calls are debounced into the published plan: wait until both are in it
        while any(sv.call(published()).get(k) != v for k, v in want.items()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sv.call(published()) == {("p1", A1): (9, "HEALTHY"), ("p2", A1): (1, "DRAINING"),
                                         ("p2", A2): (1, "HEALTHY"), ("c1", A1): (1, "HEALTHY")}
        # team-b's view of the same address is untouched
        eps = s.ListEndpoints(pb.ListEndpointsRequest(), metadata=md("b-operator")).endpoints
        assert [(e.pool, e.weight, e.operator_drain, e.HasField("weight_override")) for e in eps] == \
            [("c1", 1, False, False)]


def test_status_shows_a_proxys_nack_and_the_event_feed_carries_it() -> None:
    import asyncio

    from support.adsclient import SotwClient

    from xds_control.snapshot import types as T

    with Served(two_tenants()) as sv:
        target = f"127.0.0.1:{sv.cp.ports.xds}"

        async def nack() -> SotwClient:
            c = await SotwClient(target, "nacker").start()
            c.request(T.CLUSTER)
            c.nack(await c.recv(), "cluster p1: bad outlier detection")
            for _ in range(100):
                if sv.cp.publisher.rejections:
                    break
                await asyncio.sleep(0.02)
            return c

        client = sv.call(nack())
        try:
            st_ = sv.stub.GetStatus(pb.GetStatusRequest(), metadata=md("root"))
            px = next(p for p in st_.proxies if p.node_id == "nacker")
            assert px.protocol == "sotw" and {t.type: t.state for t in px.types}["CDS"] == "ERROR"
            assert (px.last_nack.type, px.last_nack.message) == ("CDS", "cluster p1: bad outlier detection")
            evs = list(sv.stub.WatchEvents(pb.WatchEventsRequest(kinds=["nack"]), metadata=md("root")))
            assert [(e.kind, e.message) for e in evs] == [("nack", "cluster p1: bad outlier detection")]
            # The first CDS carries both tenants' clusters: team-a learns of the NACK, not its text.
            st_ = sv.stub.GetStatus(pb.GetStatusRequest(), metadata=md("a-viewer"))
            px = next(p for p in st_.proxies if p.node_id == "nacker")
            assert px.last_nack.type == "CDS" and "withheld" in px.last_nack.message
            evs = list(sv.stub.WatchEvents(pb.WatchEventsRequest(kinds=["nack"]), metadata=md("a-viewer")))
            assert [e.kind for e in evs] == ["nack"] and "withheld" in evs[0].message
        finally:
            sv.call(client.close())


def test_a_config_reload_replaces_the_tokens() -> None:
    import yaml

    with Served(two_tenants()) as sv:
        assert code_of(sv.stub.GetStatus, pb.GetStatusRequest(), metadata=md("a-viewer")) == OK
        new = two_tenants()
        new["admin"]["tokens"] = [t for t in token_config() if t["name"] == "root"]
        assert sv.run(sv.cp.reload_text, yaml.safe_dump(new))
        assert code_of(sv.stub.GetStatus, pb.GetStatusRequest(), metadata=md("a-viewer")) == U
        assert code_of(sv.stub.GetStatus, pb.GetStatusRequest(), metadata=md("root")) == OK
