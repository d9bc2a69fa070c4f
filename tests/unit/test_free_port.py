"""Ports chosen for listeners bound later avoid the kernel's ephemeral range (outgoing connections use it)."""

from __future__ import annotations

import socket

from xds_control.runtime.app import free_loopback_port


def test_free_port_is_bindable_and_below_the_ephemeral_range() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
        low = int(fh.read().split()[0])
    ports = {free_loopback_port() for _ in range(20)}
    assert len(ports) > 1
    for port in ports:
        if low > 11_000:
            assert 10_000 <= port < low, (port, low)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
