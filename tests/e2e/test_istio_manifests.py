"""istio/: the rendered EnvoyFilter example equals `xds-control istio render`, every resource passes its
schema (Kubernetes' OpenAPI via kubernetes-validate, strict; EnvoyFilter via Istio's CRD schema), the
patched Istio-shaped sidecar passes `envoy --mode validate`, and the manifests fit together. That the RBAC grants
exactly the verbs the client uses is checked on the real API server (tests/k8s/test_real_rbac.py, its audit log)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from support.istio_schema import validate_envoyfilter
from support.istio_sidecar import apply_cluster_patches, envoy_validate, istio_sidecar_bootstrap

from xds_control.cli.main import _register, app
from xds_control.config import load_config
from xds_control.istio import render_envoyfilters

ISTIO = Path(__file__).resolve().parents[2] / "istio"
EXAMPLE = ISTIO / "example-config.yaml"
MANIFESTS = ["serviceaccount.yaml", "rbac.yaml", "deployment.yaml", "service.yaml", "pdb.yaml", "configmap.yaml"]


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def run_cli(*args: str) -> Any:
    _register()
    return CliRunner().invoke(app, list(args))


def test_rendered_example_is_what_istio_render_prints() -> None:
    res = run_cli("istio", "render", "--config", str(EXAMPLE))
    assert res.exit_code == 0, res.output
    assert res.stdout == (ISTIO / "envoyfilter.yaml").read_text(), \
        "istio/envoyfilter.yaml is stale: xds-control istio render --config istio/example-config.yaml > it"
    names = [d["metadata"]["name"] for d in docs("envoyfilter.yaml")]
    assert names == ["xds-control-eds-cluster", "xds-control-llm-v1", "xds-control-llm-v2"]


def test_render_namespace_and_errors(tmp_path: Path) -> None:
    res = run_cli("istio", "render", "--config", str(EXAMPLE), "--namespace", "istio-system")
    assert res.exit_code == 0
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(res.stdout)} == {"istio-system"}
    no_kube = tmp_path / "c.yaml"
    no_kube.write_text("services: [{name: s, pools: [{name: p, endpoints: [{address: 127.0.0.1, port: 1}]}]}]\n")
    res = run_cli("istio", "render", "--config", str(no_kube))
    assert res.exit_code == 2 and "kubernetes.pools" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("llm-v2: {deployment: llm-v2", "llm-v3: {deployment: llm-v2"))
    res = run_cli("istio", "render", "--config", str(bad))
    assert res.exit_code == 2 and "llm-v3" in res.output


def test_every_envoyfilter_passes_istios_schema() -> None:
    filters = docs("envoyfilter.yaml")
    for ef in filters:
        validate_envoyfilter(ef)
    # The schema is not a rubber stamp.
    for mutate in (lambda e: e["spec"]["configPatches"][0].update(applyTo="CLUSTERS"),
                   lambda e: e["spec"]["configPatches"][0]["match"].update(listener={"name": "x"}),
                   lambda e: e["spec"]["configPatches"][0]["patch"].update(operaton="MERGE"),
                   lambda e: e["metadata"].update(name="Not_A_Name")):
        bad = copy.deepcopy(filters[1])
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_envoyfilter(bad)


def sidecar() -> dict[str, Any]:
    return istio_sidecar_bootstrap([("llm-v1.inference.svc.cluster.local", 8000, "llm-v1", "inference"),
                                    ("llm-v2.inference.svc.cluster.local", 8000, "llm-v2", "inference")], 15001)


@pytest.mark.envoy
def test_patched_istio_sidecar_passes_envoy_validate(tmp_path: Path) -> None:
    filters = render_envoyfilters(load_config(EXAMPLE))
    rc, out = envoy_validate(sidecar(), tmp_path)
    assert rc == 0, out  # the unpatched, Istio-shaped sidecar
    patched = apply_cluster_patches(sidecar(), filters)
    clusters = {c["name"]: c for c in patched["static_resources"]["clusters"]}
    assert clusters["outbound|8000||llm-v1.inference.svc.cluster.local"]["eds_cluster_config"]["service_name"] == \
        "llm-v1"
    assert "xds-control-eds" in clusters
    rc, out = envoy_validate(patched, tmp_path)
    assert rc == 0, out
    # Without the added cluster the EDS source points nowhere, and Envoy says so.
    rc, out = envoy_validate(apply_cluster_patches(sidecar(), filters[1:]), tmp_path)
    assert rc != 0 and "xds-control-eds" in out


def test_manifests_pass_the_kubernetes_schema_strictly() -> None:
    version = kubernetes_validate.latest_version()
    kinds = []
    for name in MANIFESTS:
        for d in docs(name):
            kubernetes_validate.validate(d, version, strict=True)
            kinds.append(d["kind"])
    assert sorted(kinds) == sorted(["ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                                    "PodDisruptionBudget", "ConfigMap"])
    with pytest.raises(kubernetes_validate.ValidationError):  # strict: an unknown field is an error
        dep = docs("deployment.yaml")[0]
        dep["spec"]["replica"] = 2
        kubernetes_validate.validate(dep, version, strict=True)


def test_manifests_fit_together() -> None:
    dep = docs("deployment.yaml")[0]
    svc, pdb, sa = docs("service.yaml")[0], docs("pdb.yaml")[0], docs("serviceaccount.yaml")[0]
    role, binding = docs("rbac.yaml")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] == 2
    assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert pdb["spec"]["minAvailable"] == 1
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"] and binding["roleRef"]["name"] == \
        role["metadata"]["name"]
    # The sidecars' xds-control-eds cluster resolves this Service on this port.
    cfg = load_config(EXAMPLE)
    assert cfg.kubernetes is not None
    assert svc["metadata"]["name"] == cfg.kubernetes.istio.xds_service
    assert cfg.kubernetes.istio.xds_port in [p["port"] for p in svc["spec"]["ports"]]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--xds-port") + 1] == str(cfg.kubernetes.istio.xds_port)
    # The ConfigMap carries the example config, verbatim.
    assert docs("configmap.yaml")[0]["data"]["config.yaml"] == EXAMPLE.read_text()
    # RBAC names exactly the configured Deployments and the Lease.
    rules = role["rules"]
    assert next(r for r in rules if r["resources"] == ["deployments/scale"])["resourceNames"] == \
        sorted(p.deployment for p in cfg.kubernetes.pools.values())
    assert cfg.kubernetes.leader_election.lease_name in \
        next(r for r in rules if r.get("resourceNames") and r["resources"] == ["leases"])["resourceNames"]
