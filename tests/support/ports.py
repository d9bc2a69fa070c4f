"""Free loopback ports, chosen at run time."""

from __future__ import annotations

from xds_control.runtime.app import free_loopback_port


def free_port() -> int:
    """A port free on 127.0.0.1 now, below the kernel's ephemeral range when there is room (a listener that Envoy
    binds later cannot then collide with an outgoing connection's port; see ``free_loopback_port``)."""
    return free_loopback_port()
