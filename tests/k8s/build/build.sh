#!/usr/bin/env bash
# Builds the real Kubernetes components the tests in tests/k8s run (`make k8s-bin` calls this):
#   kube-apiserver, kube-controller-manager, kube-scheduler  from the k8s.io/kubernetes module
#   (the scheduler places the pods on kwok's fake nodes, so that they spread over the zones)
#   kwok                                                     from the sigs.k8s.io/kwok module
# at the versions pinned in tests/k8s/build/go.mod (the one place they are pinned), into .cache/k8s/bin (git-ignored),
# and installs etcd from Debian's etcd-server package when it is missing (root and apt-get needed).
# Only the Go module proxy and Debian are reached. Idempotent: a second run with the same go.mod builds nothing.
# The first build takes long on a 2-core machine (see BUILD_NOTE below); it runs under nice so that it yields.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$root/.cache/k8s/bin"
stamp="$out/.built-from"

if ! command -v etcd >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "k8s-bin: installing Debian's etcd-server package (apt-get install --no-install-recommends etcd-server)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    # The package enables a system service; the tests run their own etcd on free ports.
    (service etcd stop || true) >/dev/null 2>&1
  else
    echo "k8s-bin: etcd is not installed and cannot be here (Debian's etcd-server needs root and apt-get)" >&2
    exit 1
  fi
fi

command -v go >/dev/null 2>&1 || { echo "k8s-bin: needs a Go toolchain (go on PATH) to build kube-apiserver," \
  "kube-controller-manager and kwok from their Go modules" >&2; exit 1; }

want="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/kube-scheduler" ] && [ -x "$out/kwok" ]; then
  exit 0
fi

kube="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"   # v1.X.Y
kwok="$(cd "$here" && go list -m -f '{{.Version}}' sigs.k8s.io/kwok)"
minor="$(echo "$kube" | cut -d. -f2)"
v="k8s.io/component-base/version"
cv="k8s.io/client-go/pkg/version"
ldflags="-s -w"
for pkg in "$v" "$cv"; do
  ldflags="$ldflags -X $pkg.gitVersion=$kube -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
ldflags="$ldflags -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok"

echo "k8s-bin: building kube-apiserver, kube-controller-manager, kube-scheduler $kube and kwok $kwok from Go modules into .cache/k8s/bin"
echo "k8s-bin: (the first build takes about 5 minutes on 2 cores: 314 s with empty Go caches; it runs under nice -n 19)"
mkdir -p "$out"
rm -f "$stamp"
start=$(date +%s)
# -p: parallel package builds (K8S_BUILD_P, default 2: the whole machine, under nice). CGO off as Kubernetes' own
# release builds of these binaries are.
(cd "$here" && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 19 go build -p "${K8S_BUILD_P:-2}" -trimpath \
  -ldflags "$ldflags" -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler sigs.k8s.io/kwok/cmd/kwok)
echo "$want" > "$stamp"
echo "k8s-bin: built in $(( $(date +%s) - start )) s: $("$out/kube-apiserver" --version)"
