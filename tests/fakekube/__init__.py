"""An in-process stand-in for a kube-apiserver, for tests only (no cluster can be installed here).

See :mod:`fakekube.server`.
"""

from fakekube.server import FakeKube, kubeconfig_for, make_tls

__all__ = ["FakeKube", "kubeconfig_for", "make_tls"]
