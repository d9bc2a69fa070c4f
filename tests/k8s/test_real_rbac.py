"""istio/serviceaccount.yaml and istio/rbac.yaml applied to a real API server: xds-control, running as that
service account (a real token from TokenRequest), does its whole job -- discovery, scale up, the deletion cost and
scale-down of a chosen pod, the leader Lease, the peer board -- the API server's audit log shows it used every verb
the Role grants and nothing more, and the real RBAC authorizer refuses it anything else."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml
from k8s.cluster import ROOT, Cluster

from xds_control.actuators.kubernetes import KubePool, KubernetesScaler, make_api_client
from xds_control.actuators.leader import LeaseElector
from xds_control.actuators.peers import KubePeerBoard

pytestmark = pytest.mark.timeout(120)
NS = "inference"  # the namespace the manifests name


async def until(pred, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_istio_role_is_exactly_enough(cluster: Cluster, tmp_path: Path) -> None:
    cluster.namespace(NS)
    docs = [d for f in ("serviceaccount.yaml", "rbac.yaml")
            for d in yaml.safe_load_all((ROOT / "istio" / f).read_text()) if d]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Role", "RoleBinding"}
    cluster.apply(docs)
    cluster.deployment(NS, "llm-v1", replicas=2, port=8000)  # named in the Role's resourceNames
    cluster.deployment(NS, "other", replicas=1, port=8000)  # not named there
    kc = cluster.sa_kubeconfig(tmp_path / "sa.kubeconfig", NS, "xds-control")
    token = cluster.sa_token(NS, "xds-control")
    whoami = cluster.admin("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                           {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, token=token)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{NS}:xds-control"

    elector = LeaseElector(make_api_client(str(kc)), "xds-control", NS, "cp-0",
                           lease_duration_s=1.5, renew_deadline_s=1.0, retry_period_s=0.1)
    task = asyncio.create_task(elector.run())
    s = KubernetesScaler(make_api_client(str(kc)), NS, [KubePool("llm", "llm-v1", "llm-v1", "http")],
                         is_leader=elector.is_leader, owns_client=True, watch_timeout_s=5)
    try:
        await elector.wait_leader(20)  # create, then get + update of the Lease named in the Role
        await s.start()  # list + watch EndpointSlices, get deployments/scale
        await until(lambda: [r.state.value for r in s.list()] == ["ready", "ready"], what="two ready pods")
        await s.start_replica("llm")  # get + patch deployments/scale
        assert cluster.replicas(NS, "llm-v1") == 3
        await until(lambda: [r.state.value for r in s.list()] == ["ready"] * 3, what="three ready pods")
        victim = s.list()[1].id
        await s.stop_replica(victim)  # patch pods (the deletion cost), patch deployments/scale
        await until(lambda: victim not in {p["metadata"]["name"] for p in cluster.pods(NS, "llm-v1")},
                    what="the chosen pod removed")
        assert cluster.replicas(NS, "llm-v1") == 2 and s.last_error is None and elector.last_error is None
        # the peer board: get (404), create, patch of the ConfigMap named in the Role, then get again
        board = KubePeerBoard(make_api_client(str(kc)), NS, "xds-control-peers", "cp-0")
        board.share(leader=True, drains={"llm": frozenset({"10.0.0.1:8000"})}, routing={"llm": frozenset()})
        await asyncio.to_thread(board.sync_once)
        await asyncio.to_thread(board.sync_once)
        assert board.leader_drains() == {"llm": frozenset({"10.0.0.1:8000"})} and board.last_error is None
        board.api.api_client.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        elector.api.api_client.close()
        await s.close()

    # Nothing granted is unused: the API server's audit log of this service account's requests (those it was allowed)
    # names exactly the verbs the Role grants, resource by resource. The watch is logged once it ends (s.close()).
    granted: dict[str, set[str]] = {}
    for rule in next(d for d in docs if d["kind"] == "Role")["rules"]:
        for res in rule["resources"]:
            granted.setdefault(res, set()).update(rule["verbs"])

    def used() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for e in cluster.audited(NS, "xds-control"):
            ref = e.get("objectRef") or {}
            if e.get("stage") != "ResponseComplete" or (e.get("responseStatus") or {}).get("code", 500) >= 400 \
                    or ref.get("resource") in (None, "selfsubjectreviews"):
                continue
            res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            out.setdefault(res, set()).add(e["verb"])
        return out

    await until(lambda: "watch" in used().get("endpointslices", set()), 10, "the watch in the audit log")
    print(f"rbac: used {sorted((r, sorted(v)) for r, v in used().items())}")
    assert used() == granted, f"the Role grants {granted}, the service account used {used()}"

    # Everything else is refused by the real authorizer.
    pod = cluster.pods(NS, "llm-v1")[0]["metadata"]["name"]
    scale_merge = "application/merge-patch+json"
    refused = {
        "get the Deployment itself": ("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/llm-v1", None),
        "patch the Deployment": ("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/llm-v1", {"spec": {}}),
        "scale a Deployment not named": ("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/other/scale",
                                         {"spec": {"replicas": 3}}),
        "read the scale of one not named": ("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/other/scale", None),
        "list pods": ("GET", f"/api/v1/namespaces/{NS}/pods", None),
        "get a pod": ("GET", f"/api/v1/namespaces/{NS}/pods/{pod}", None),
        "delete a pod": ("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod}", None),
        "get an EndpointSlice by name": ("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/x", None),
        "list EndpointSlices of another namespace": ("GET", "/apis/discovery.k8s.io/v1/namespaces/default/"
                                                            "endpointslices", None),
        "get another Lease": ("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/other", None),
        "list Leases": ("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases", None),
        "delete its Lease": ("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/xds-control", None),
        "list Secrets": ("GET", f"/api/v1/namespaces/{NS}/secrets", None),
        "list ConfigMaps": ("GET", f"/api/v1/namespaces/{NS}/configmaps", None),
        "get another ConfigMap": ("GET", f"/api/v1/namespaces/{NS}/configmaps/other", None),
        "patch another ConfigMap": ("PATCH", f"/api/v1/namespaces/{NS}/configmaps/other", {"data": {}}),
        "delete the peer board": ("DELETE", f"/api/v1/namespaces/{NS}/configmaps/xds-control-peers", None),
        "list Services": ("GET", f"/api/v1/namespaces/{NS}/services", None),
    }
    got = {what: cluster.status(m, p, b, token=token, content_type=scale_merge) for what, (m, p, b) in refused.items()}
    assert got == dict.fromkeys(refused, 403), got
    assert cluster.replicas(NS, "other") == 1 and len(cluster.pods(NS, "llm-v1")) == 2
