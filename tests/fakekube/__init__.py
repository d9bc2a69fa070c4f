"""An in-process stand-in for a kube-apiserver, for tests only: the faults a real server does not produce on demand
(a watch answered ``410 Gone`` at a chosen moment, a silent watch) and the Istio sidecar test; everything else runs
against the real cluster of tests/k8s (``make test-k8s``).

See :mod:`fakekube.server`.
"""

from fakekube.server import FakeKube, kubeconfig_for, make_tls

__all__ = ["FakeKube", "kubeconfig_for", "make_tls"]
