"""deploy/helm/xds-control: rendered with `helm template` (helm built from Go modules by `make helm-bin`), every
object passes the Kubernetes schema strictly (kubernetes-validate; the ServiceMonitor its CRD's schema), the
defaults render exactly the objects of istio/ (RBAC included) with istio/example-config.yaml as the config,
non-default values take effect, and values that cannot work fail the render with a message naming them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from support.servicemonitor_schema import validate_servicemonitor

from xds_control.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "xds-control"
ISTIO = ROOT / "istio"
EXAMPLE = ISTIO / "example-config.yaml"
MANIFESTS = ["serviceaccount.yaml", "rbac.yaml", "deployment.yaml", "service.yaml", "pdb.yaml", "configmap.yaml"]


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = ROOT / ".cache" / "bin" / "helm"
    p = subprocess.run(["make", "-s", "helm-bin"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    if p.returncode != 0 and shutil.which("go") is None and not binary.exists():
        pytest.skip("helm is not built and cannot be here: `make helm-bin` needs Go (it builds helm from Go modules)")
    assert p.returncode == 0, p.stdout + p.stderr
    return binary


def render(helm: Path, *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None,
           namespace: str = "inference") -> list[dict[str, Any]]:
    out = template(helm, *args, values=values, tmp=tmp, namespace=namespace)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def template(helm: Path, *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None,
             namespace: str = "inference", release: str = "xds-control") -> subprocess.CompletedProcess[str]:
    cmd = [str(helm), "template", release, str(CHART), "--namespace", namespace, *args]
    if values is not None:
        assert tmp is not None
        f = tmp / "values.yaml"
        f.write_text(yaml.safe_dump(values))
        cmd += ["--values", str(f)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp or ROOT / ".cache")})


def by_kind(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {(d["kind"], d["metadata"]["name"]): d for d in objs}
    assert len(out) == len(objs), "two objects of one kind share a name"
    return out


def validate_all(objs: list[dict[str, Any]]) -> list[str]:
    version = kubernetes_validate.latest_version()
    for d in objs:
        if d["kind"] == "ServiceMonitor":
            validate_servicemonitor(d)
        else:
            kubernetes_validate.validate(d, version, strict=True)
    return sorted(d["kind"] for d in objs)


def istio_objects() -> list[dict[str, Any]]:
    return [d for name in MANIFESTS for d in yaml.safe_load_all((ISTIO / name).read_text()) if d]


def test_defaults_render_exactly_the_istio_manifests(helm: Path) -> None:
    objs = render(helm)
    assert validate_all(objs) == sorted(["ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                                         "PodDisruptionBudget", "ConfigMap"])
    rendered, istio = by_kind(objs), by_kind(istio_objects())
    assert rendered.keys() == istio.keys()
    for key, want in istio.items():
        assert rendered[key] == want, f"{key}: the chart's default differs from istio/"


def test_chart_lints_and_names_objects_after_the_config_not_the_release(helm: Path, tmp_path: Path) -> None:
    p = subprocess.run([str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stdout + p.stderr
    out = template(helm, tmp=tmp_path, release="prod")
    assert out.returncode == 0, out.stderr
    assert by_kind([d for d in yaml.safe_load_all(out.stdout) if d]) == by_kind(render(helm))


def test_default_config_is_the_istio_example_config(helm: Path) -> None:
    assert yaml.safe_load((CHART / "values.yaml").read_text())["config"] == EXAMPLE.read_text()
    cm = by_kind(render(helm))["ConfigMap", "xds-control"]
    assert cm["data"]["config.yaml"] == EXAMPLE.read_text()


def test_rbac_is_istios_rbac(helm: Path) -> None:
    rendered = by_kind(render(helm))
    role, binding = (d for d in yaml.safe_load_all((ISTIO / "rbac.yaml").read_text()) if d)
    assert rendered["Role", "xds-control"] == role
    assert rendered["RoleBinding", "xds-control"] == binding
    # istio/rbac.yaml is checked against the verbs the real client uses (test_istio_manifests.py); the chart's
    # Role is derived from the config: the Deployments its kubernetes.pools name and its Lease.
    assert rendered["Role", "xds-control"]["rules"][0]["resourceNames"] == ["llm-v1", "llm-v2"]


OTHER_CONFIG = """\
services:
  - name: chat
    pools:
      - name: gpu-b
        autoscale: {policy: threshold}
      - name: gpu-a
        autoscale: {policy: comprehensive}
controller:
  signals: {source: scrape}
kubernetes:
  namespace: models
  pools:
    gpu-b: {deployment: chat-gpu-b}
    gpu-a: {deployment: chat-gpu-a}
  leader_election: {lease_name: chat-leader}
  istio: {xds_service: chat-xds, xds_port: 18010}
"""


def other_values() -> dict[str, Any]:
    return {
        "replicas": 3,  # no fullnameOverride: the objects are named after the config's xds_service
        "image": {"repository": "registry.example/xds-control", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "ports": {"xds": 18010, "metrics": 9200},
        "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
        "podDisruptionBudget": {"minAvailable": 2},
        "serviceMonitor": {"enabled": True, "interval": "30s", "labels": {"release": "kube-prometheus"}},
        "nodeSelector": {"pool": "system"},
        "config": OTHER_CONFIG,
    }


def test_non_default_values_take_effect_and_validate(helm: Path, tmp_path: Path) -> None:
    objs = render(helm, values=other_values(), tmp=tmp_path, namespace="control")
    assert validate_all(objs) == sorted(["ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                                         "PodDisruptionBudget", "ConfigMap", "ServiceMonitor"])
    o = by_kind(objs)
    dep = o["Deployment", "chat-xds"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert dep["spec"]["replicas"] == 3 and dep["metadata"]["namespace"] == "control"
    assert c["image"] == "registry.example/xds-control:0.1.0-rc1" and c["imagePullPolicy"] == "Always"
    assert c["resources"] == other_values()["resources"]
    assert c["args"][c["args"].index("--xds-port") + 1] == "18010"
    assert c["args"][c["args"].index("--metrics-port") + 1] == "9200"
    assert {p["containerPort"] for p in c["ports"]} == {18010, 9200}
    assert pod["nodeSelector"] == {"pool": "system"} and pod["serviceAccountName"] == "chat-xds"
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9200"
    assert o["PodDisruptionBudget", "chat-xds"]["spec"]["minAvailable"] == 2
    svc = o["Service", "chat-xds"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {18010, 9200}
    # RBAC follows the config: its namespace, its Deployments (sorted), its Lease; the subject is the
    # ServiceAccount in the release's namespace.
    role, binding = o["Role", "chat-xds"], o["RoleBinding", "chat-xds"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "models"
    assert role["rules"][0] == {"apiGroups": ["apps"], "resources": ["deployments/scale"],
                                "resourceNames": ["chat-gpu-a", "chat-gpu-b"], "verbs": ["get", "patch"]}
    named = {r["resources"][0]: r["resourceNames"] for r in role["rules"] if r.get("resourceNames")}
    assert named["leases"] == ["chat-leader"] and named["configmaps"] == ["chat-leader-peers", "chat-leader-operator"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chat-xds", "namespace": "control"}]
    # The ServiceMonitor selects the Service and scrapes a port it has.
    sm = o["ServiceMonitor", "chat-xds"]
    assert sm["metadata"]["labels"] == {"app": "chat-xds", "release": "kube-prometheus"}
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["interval"] == "30s"
    # The ConfigMap carries the config verbatim, and it is a valid config.
    text = o["ConfigMap", "chat-xds"]["data"]["config.yaml"]
    assert text == OTHER_CONFIG
    (tmp_path / "config.yaml").write_text(text)
    assert load_config(tmp_path / "config.yaml").kubernetes is not None


def test_without_rbac_service_account_or_pdb(helm: Path, tmp_path: Path) -> None:
    objs = render(helm, values={"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "given"},
                                "podDisruptionBudget": {"enabled": False}}, tmp=tmp_path)
    assert validate_all(objs) == ["ConfigMap", "Deployment", "Service"]
    assert by_kind(objs)["Deployment", "xds-control"]["spec"]["template"]["spec"]["serviceAccountName"] == "given"


@pytest.mark.parametrize(("values", "needle"), [
    ({"fullnameOverride": "other"}, 'kubernetes.istio.xds_service is "xds-control" but the chart names its Service '
                                    '"other"'),
    ({"ports": {"xds": 18001, "metrics": 9102}}, "kubernetes.istio.xds_port is 18000 but ports.xds is 18001"),
    ({"config": "services: []\n"}, "values.config: a kubernetes section is needed"),
    ({"config": "kubernetes: [unclosed\n"}, "values.config: not valid YAML"),
    ({"replica": 3}, "replica"),  # a typo: values.schema.json allows no unknown key
    ({"replicas": "two"}, "replicas"),
])
def test_values_that_cannot_work_fail_naming_them(helm: Path, tmp_path: Path, values: dict[str, Any],
                                                  needle: str) -> None:
    p = template(helm, values=values, tmp=tmp_path)
    assert p.returncode != 0 and needle in p.stderr, p.stderr
