"""An emulated vLLM-style inference replica driven by :mod:`xds_control.fleet.costmodel`.

Run one with ``python -m xds_control.fleet.replica --port N`` or ``xds-control replica``;
embed one in a test with :func:`serve`. See :mod:`xds_control.fleet.replica.server`.
"""

from xds_control.fleet.replica.server import REPLICA_HEADER, ReplicaConfig, ReplicaServer, run, serve

__all__ = ["REPLICA_HEADER", "ReplicaConfig", "ReplicaServer", "run", "serve"]
