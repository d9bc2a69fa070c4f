"""An emulated vLLM-style inference replica driven by :mod:`xds_control.costmodel`.

Run one with ``python -m xds_control.replica --port N`` or ``xds-control replica``;
embed one in a test with :func:`serve`. See :mod:`xds_control.replica.server`.
"""

from xds_control.replica.server import REPLICA_HEADER, ReplicaConfig, ReplicaServer, run, serve

__all__ = ["REPLICA_HEADER", "ReplicaConfig", "ReplicaServer", "run", "serve"]
