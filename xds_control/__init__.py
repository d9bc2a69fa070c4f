"""xds-control: a load-aware xDS control plane for generative-AI inference fleets.

Data flows one way through the sub-packages::

    signals -> loadindex -> policies -> planning -> snapshot -> xds (push)

and back from Envoy as ACK/NACK into ``xds.status``. ``core``, ``loadindex``,
``policies``, ``planning`` and ``snapshot`` are pure (no I/O, no asyncio, no
clocks); the import-linter contracts in ``.importlinter`` enforce it.
"""

__version__ = "0.1.0"
