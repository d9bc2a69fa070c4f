#!/usr/bin/env bash
# `make test-k8s`: builds what is missing (tests/k8s/build/build.sh), then runs tests/k8s against a real cluster
# in a private network namespace (unshare --net: only lo, with the pod network 10.244.0.0/16 routed to it, so
# emulated replicas listen on the pods' own IPs and no packet can leave the machine). Extra args go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
bash tests/k8s/build/build.sh
echo "test-k8s: kube-apiserver $(.cache/k8s/bin/kube-apiserver --version | awk '{print $2}')," \
     "kube-controller-manager $(.cache/k8s/bin/kube-controller-manager --version | awk '{print $2}')," \
     "kwok $(.cache/k8s/bin/kwok --version 2>&1 | head -1), $(etcd --version | head -1)"
command -v unshare >/dev/null && command -v ip >/dev/null \
  || { echo "test-k8s: needs unshare (util-linux) and ip (iproute2)" >&2; exit 1; }
export XDS_K8S_REQUIRED=1
exec unshare --net -- sh -c 'ip link set lo up && ip route add local 10.244.0.0/16 dev lo && exec "$@"' sh \
  .venv/bin/python -m pytest -p no:cacheprovider -q -rs -s tests/k8s "$@"
