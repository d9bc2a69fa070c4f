"""A real Kubernetes control plane for the tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok (fake nodes and kubelets), all on 127.0.0.1 with ports chosen free at run time.

* **Binaries**: kube-apiserver, kube-controller-manager, kube-scheduler and kwok built from their Go modules by
  ``make k8s-bin`` (tests/k8s/build: versions pinned in its go.mod) into ``.cache/k8s/bin``; etcd is Debian's
  ``etcd-server``. :func:`unavailable` says exactly why a cluster cannot be started here.
* **Auth**: a throw-away CA and serving certificate for 127.0.0.1 (the client verifies it), a static token for the
  test's admin (group ``system:masters``), an ECDSA service-account signing key so that ``TokenRequest`` issues real
  service-account tokens (:meth:`Cluster.sa_kubeconfig`), and ``--authorization-mode=RBAC``: a service account can
  do exactly what its Roles grant.
* **Controllers**: the Deployment, ReplicaSet, EndpointSlice, namespace, garbage-collector and service-account
  controllers of kube-controller-manager; the default scheduler (which spreads pods over zones); kwok manages the
  nodes labelled ``type=kwok``: two nodes, one in each of ``zone-a`` and ``zone-b`` (``topology.kubernetes.io/zone``).
* **Pod IPs**: kwok gives each pod an address from its node's ``podCIDR`` (10.244.1.0/24 and 10.244.2.0/24). The API
  server refuses loopback addresses in EndpointSlices (``may not be in the loopback range``), so the pods cannot be
  on 127.0.0.0/8: the tests run in a private network namespace of their own (``make test-k8s`` runs pytest under
  ``unshare --net``; it has no interface but ``lo``) where 10.244.0.0/16 is routed to ``lo``, so an emulated replica
  can listen on its pod's address and nothing can leave the machine. :class:`PodReplicas` starts one per Running pod.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "k8s" / "bin"
STAGES = Path(__file__).resolve().parent / "kwok-stages.yaml"
POD_NET = ipaddress.ip_network("10.244.0.0/16")
NODES = {"node-a1": ("zone-a", "10.244.1.0/24"), "node-b1": ("zone-b", "10.244.2.0/24")}
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def unavailable() -> str | None:
    """Why a real cluster cannot run here (None: it can)."""
    missing = [c for c in COMPONENTS if not (BIN / c).is_file()]
    if missing:
        how = ("`make k8s-bin` builds them from Go modules (about 5 minutes the first time)" if shutil.which("go")
               else "they are built from Go modules by `make k8s-bin`, which needs a Go toolchain (go is not on PATH)")
        return f"{', '.join(missing)} not built in .cache/k8s/bin: {how}"
    if shutil.which("etcd") is None:
        return "etcd is not installed (Debian's etcd-server package; `make k8s-bin` installs it as root)"
    try:
        with socket.socket() as s:
            s.bind((str(POD_NET[257]), 0))
    except OSError:
        return (f"the pod network {POD_NET} is not local here: these tests run in a private network namespace "
                "(`make test-k8s` runs them under `unshare --net` with that range routed to lo)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pem_files(d: Path) -> dict[str, Path]:
    """CA, serving cert for 127.0.0.1/localhost, and the service-account key pair (ECDSA P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-cluster-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(san, critical=False).sign(ca_key, hashes.SHA256()))
    sa = ec.generate_private_key(ec.SECP256R1())
    files = {"ca": d / "ca.crt", "crt": d / "apiserver.crt", "key": d / "apiserver.key",
             "sa_key": d / "sa.key", "sa_pub": d / "sa.pub"}
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["crt"].write_bytes(cert.public_bytes(pem))
    files["key"].write_bytes(key.private_bytes(pem, pkcs8, none))
    files["sa_key"].write_bytes(sa.private_bytes(pem, pkcs8, none))
    files["sa_pub"].write_bytes(sa.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return files


class Proc:
    """One component: its log in ``dir/NAME.log``; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: list[str], d: Path) -> None:
        self.name = name
        self.log_path = d / f"{name}.log"
        self.log = open(self.log_path, "wb")
        env = dict(os.environ, KUBE_FEATURE_WatchListClient="false")  # see --feature-gates=WatchList=false
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=d, env=env,
                                     start_new_session=True)

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Cluster:
    """Start with :meth:`start`, stop with :meth:`stop` (every process it started)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: list[Proc] = []
        self.admin_token = uuid.uuid4().hex
        self.etcd_port = free_port()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.version = ""

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        d = self.dir
        self.files = _pem_files(d)
        (d / "tokens.csv").write_text(f'{self.admin_token},test-admin,test-admin,"system:masters"\n')
        # Audit what the tests' service accounts do (not the controllers' own accounts, which are in kube-system):
        # metadata of each finished request, so a test can list every (verb, resource) a client used.
        (d / "audit-policy.yaml").write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [{"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
                      {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
                      {"level": "None"}]}))
        self.audit_log = d / "audit.log"
        self.admin_kubeconfig = self.kubeconfig(d / "admin.kubeconfig", self.admin_token)
        peer = free_port()
        self._spawn("etcd", [
            "etcd", "--name", "test", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer}", "--log-level", "warn"])
        self._spawn("kube-apiserver", [
            str(BIN / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", "--advertise-address=127.0.0.1",
            # the "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints may not hold
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={self.files['crt']}", f"--tls-private-key-file={self.files['key']}",
            f"--token-auth-file={d / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.files['sa_pub']}",
            f"--service-account-signing-key-file={self.files['sa_key']}",
            "--service-cluster-ip-range=10.96.0.0/16", f"--cert-dir={d / 'apiserver-certs'}",
            f"--audit-policy-file={d / 'audit-policy.yaml'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-mode=blocking",
            # Debian's etcd (3.4.23) predates the watch-progress requests a streaming list needs ("RequestWatchProgress
            # is disabled"): refused up front, the clients' informers fall back to list + watch at once.
            "--feature-gates=WatchList=false",
            # it would taint each new node not-ready until the node-lifecycle controller (not run here) clears it
            "--disable-admission-plugins=TaintNodesByCondition"])
        self._wait_ready(timeout)
        common = [f"--kubeconfig={self.admin_kubeconfig}", "--leader-elect=false", "--secure-port=0"]
        self._spawn("kube-controller-manager", [
            str(BIN / "kube-controller-manager"), *common,
            "--controllers=deployment,replicaset,endpointslice,namespace,garbagecollector,serviceaccount",
            "--concurrent-deployment-syncs=5", "--concurrent-replicaset-syncs=5",
            # the EndpointSlice controller batches its writes for this long (default 0: at once)
            "--endpointslice-updates-batch-period=0s"])
        self._spawn("kube-scheduler", [str(BIN / "kube-scheduler"), *common])
        self._spawn("kwok", [
            str(BIN / "kwok"), f"--kubeconfig={self.admin_kubeconfig}", "--manage-nodes-with-label-selector=type=kwok",
            f"--config={STAGES}", "--node-ip=127.0.0.1", f"--cidr={POD_NET}", "--node-lease-duration-seconds=40"])
        for name, (zone, cidr) in NODES.items():
            self.admin("POST", "/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                             "labels": {"type": "kwok", "kubernetes.io/hostname": name,
                                        "topology.kubernetes.io/zone": zone}},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
        self.until(lambda: all(self._node_ready(n) for n in NODES), timeout, "the kwok nodes Ready")
        # the service-account controller gives every namespace its "default" account, which pods need
        self.until(lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default") is not None, timeout,
                   "the default service account")

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> Proc:
        p = Proc(name, args, self.dir)
        self.procs.append(p)
        return p

    def check(self) -> None:
        for p in self.procs:
            p.check()

    def until(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(Exception):
                if pred():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}:\n" +
                           "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in self.procs))

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            req = urllib.request.Request(self.url + "/readyz", headers=self._auth())
            with urllib.request.urlopen(req, timeout=2, context=self._tls()) as r:
                return r.status == 200
        self.until(ready, timeout, "kube-apiserver /readyz")
        self.version = self.admin("GET", "/version")["gitVersion"]

    def _node_ready(self, name: str) -> bool:
        node = self._get(f"/api/v1/nodes/{name}") or {}
        conds = (node.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    # -- access ------------------------------------------------------------------------------------------
    def _tls(self) -> Any:
        import ssl
        return ssl.create_default_context(cafile=str(self.files["ca"]))

    def _auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    def admin(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
              token: str | None = None) -> Any:
        """One REST call as the admin (or ``token``); the decoded answer. Raises urllib's HTTPError."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={**self._auth(token), "Content-Type": content_type,
                                              "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=10, context=self._tls()) as r:
            return json.loads(r.read() or b"null")

    def _get(self, path: str) -> Any:
        try:
            return self.admin("GET", path)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def status(self, method: str, path: str, body: Any = None, *, token: str | None = None,
               content_type: str = "application/json") -> int:
        """The HTTP status of one call (for the RBAC tests: 403 is an answer, not an error)."""
        try:
            self.admin(method, path, body, token=token, content_type=content_type)
            return 200
        except urllib.error.HTTPError as e:
            e.close()
            return e.code

    def apply(self, docs: list[dict[str, Any]], namespace: str | None = None) -> None:
        """Create each object (server-side apply would do too; create is all the tests need)."""
        for doc in docs:
            self.admin("POST", _collection(doc, namespace), doc)

    def kubeconfig(self, path: Path, token: str) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url,
                                                      "certificate-authority": str(self.files["ca"])}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
        return path

    def sa_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A real service-account token (TokenRequest), signed by the API server's key."""
        out = self.admin("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                          "spec": {"expirationSeconds": seconds}})
        return str(out["status"]["token"])

    def sa_kubeconfig(self, path: Path, namespace: str, name: str) -> Path:
        return self.kubeconfig(path, self.sa_token(namespace, name))

    def audited(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The audit events (metadata, one per finished request) of service account ``namespace/name``."""
        user = f"system:serviceaccount:{namespace}:{name}"
        if not self.audit_log.exists():
            return []
        events = (json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip())
        return [e for e in events if (e.get("user") or {}).get("username") == user]

    # -- test objects ---------------------------------------------------------------------------------------
    def namespace(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        self.admin("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": name}})
        self.until(lambda: self._get(f"/api/v1/namespaces/{name}/serviceaccounts/default") is not None, 30,
                   f"the default service account of {name}")
        return name

    def deployment(self, namespace: str, name: str, *, replicas: int, port: int, service: str | None = None,
                   ready_delay: str = "0s", grace_s: int = 2, node_selector: dict[str, str] | None = None) -> None:
        """A Deployment of fake pods (kwok plays their kubelet) and a headless Service over them.

        ``ready_delay``: how long kwok keeps a Running pod not ready. ``grace_s``: a deleted pod stays terminating
        this long (kwok removes it at its deletionTimestamp)."""
        labels = {"app": name}
        spec: dict[str, Any] = {
            "terminationGracePeriodSeconds": grace_s,
            "containers": [{"name": "server", "image": "emulated-replica",
                            "ports": [{"name": "http", "containerPort": port}]}],
            # one pod per zone before a second in either
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                           "whenUnsatisfiable": "DoNotSchedule",
                                           "labelSelector": {"matchLabels": labels}}],
        }
        if node_selector:
            spec["nodeSelector"] = node_selector
        self.apply([{
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "strategy": {"type": "RollingUpdate"},
                     "template": {"metadata": {"labels": labels,
                                               "annotations": {"pod-ready.stage.kwok.x-k8s.io/delay": ready_delay}},
                                  "spec": spec}},
        }, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": service or name, "namespace": namespace},
            "spec": {"clusterIP": "None", "selector": labels,
                     "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
        }])

    def pods(self, namespace: str, app: str | None = None) -> list[dict[str, Any]]:
        q = f"?labelSelector=app%3D{app}" if app else ""
        items: list[dict[str, Any]] = self.admin("GET", f"/api/v1/namespaces/{namespace}/pods{q}")["items"]
        return sorted(items, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))

    def replicas(self, namespace: str, deployment: str) -> int:
        scale = self.admin("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}/scale")
        return int(scale["spec"].get("replicas") or 0)

    def set_scale(self, namespace: str, deployment: str, n: int) -> None:
        self.admin("PATCH", f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}/scale",
                   {"spec": {"replicas": n}}, content_type="application/merge-patch+json")

    def slices(self, namespace: str, service: str) -> list[dict[str, Any]]:
        q = f"?labelSelector=kubernetes.io%2Fservice-name%3D{service}"
        items: list[dict[str, Any]] = self.admin("GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}"
                                                        f"/endpointslices{q}")["items"]
        return items


def _collection(doc: dict[str, Any], namespace: str | None) -> str:
    api = doc["apiVersion"]
    prefix = f"/api/{api}" if "/" not in api else f"/apis/{api}"
    plural = {"Deployment": "deployments", "Service": "services", "Role": "roles", "RoleBinding": "rolebindings",
              "ServiceAccount": "serviceaccounts", "Namespace": "namespaces", "Pod": "pods",
              "ConfigMap": "configmaps", "Lease": "leases"}[doc["kind"]]
    if doc["kind"] == "Namespace":
        return f"{prefix}/{plural}"
    ns = namespace or doc["metadata"].get("namespace") or "default"
    doc.setdefault("metadata", {})["namespace"] = ns
    return f"{prefix}/namespaces/{ns}/{plural}"


def pod_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


class PodReplicas:
    """An emulated replica (``python -m xds_control.fleet.replica``) on each Running pod's IP and port.

    Polls the namespace's pods every ``period_s``: a Running pod with an IP gets a replica listening on
    ``podIP:containerPort`` (named after the pod); it keeps serving while the pod terminates (it drains) and is
    stopped once the pod is gone. :meth:`stop` stops them all."""

    def __init__(self, cluster: Cluster, namespace: str, *args: str, period_s: float = 0.1) -> None:
        self.cluster, self.namespace, self.args, self.period_s = cluster, namespace, list(args), period_s
        self.running: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.errors: list[str] = []
        self.log = open(cluster.dir / f"replicas-{namespace}.log", "ab")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"pod-replicas-{namespace}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as e:  # noqa: BLE001 - recorded; the tests assert there is none
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(self.period_s)

    def sync(self) -> None:
        pods = {p["metadata"]["name"]: p for p in self.cluster.pods(self.namespace)}
        for name in list(self.running):
            key, proc = self.running[name]
            pod = pods.get(name)
            if pod is None or _pod_key(pod) != key:
                _stop(proc)
                del self.running[name]
                self.stopped.append(name)
        for name, pod in pods.items():
            key = _pod_key(pod)
            if name in self.running or key is None or (pod.get("status") or {}).get("phase") != "Running" \
                    or pod["metadata"].get("deletionTimestamp"):
                continue
            ip, port = key.rsplit(":", 1)
            # The replica binds loopback only by itself; as the local scaler does, it is handed a socket already
            # bound (here on the pod's address, local in this network namespace).
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, int(port)))
            sock.listen(128)
            env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
            try:
                proc = subprocess.Popen([sys.executable, "-m", "xds_control.fleet.replica", "--sock-fd",
                                         str(sock.fileno()), "--port", port, "--name", name, "--profile", "tiny",
                                         "--load-delay", "0", *self.args],
                                        stdout=subprocess.DEVNULL, stderr=self.log, env=env, cwd=ROOT,
                                        pass_fds=(sock.fileno(),))
            finally:
                sock.close()
            self.running[name] = (key, proc)
            self.started.append(name)

    def serving(self, name: str) -> bool:
        entry = self.running.get(name)
        if entry is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{entry[0]}/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for _, proc in self.running.values():
            _stop(proc)
        self.running.clear()
        self.log.close()


def _pod_key(pod: dict[str, Any]) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    ports = [p for c in pod["spec"]["containers"] for p in c.get("ports") or []]
    if not ip or not ports:
        return None
    return f"{ip}:{ports[0]['containerPort']}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
