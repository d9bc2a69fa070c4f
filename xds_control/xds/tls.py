"""TLS and mutual TLS for gRPC ports (admin and xDS) from ``admin.tls`` / ``admin.xds_tls``.

The xDS layer owns it; it reads the setting through a protocol, never the config package."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import grpc


class TlsConfig(Protocol):
    """What a TLS setting must have (``config.schema.TlsConfig`` is one): paths of PEM files."""

    @property
    def cert(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def client_ca(self) -> str | None: ...


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server certificate and key; with ``client_ca`` clients must present a certificate it signed."""
    ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def add_port(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> int:
    """Bind ``address`` with TLS when ``tls`` is set, in clear otherwise; returns the port.

    Raises OSError naming the address when it cannot be bound (grpc raises a bare RuntimeError).
    """
    try:
        if tls is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, server_credentials(tls))
    except RuntimeError as e:
        raise OSError(f"cannot bind {address} (in use, or not an address of this host): {e}") from None
