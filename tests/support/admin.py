"""Helpers for admin API tests: a control plane on its own event-loop thread, stubs, tokens, certificates.

The control plane runs in a background thread so that tests can use blocking clients (grpc sync stubs,
the CLI as a subprocess, hypothesis) against a real server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc

from xds_control.admin.proto import load
from xds_control.config import parse_config
from xds_control.runtime.app import ControlPlane

pb, pb_grpc = load()
ROOT = Path(__file__).resolve().parents[2]

#: name -> (token, tenant, role)
TOKENS = {
    "root": ("root-token-0123456789", "*", "admin"),
    "a-viewer": ("a-viewer-token-0123456789", "team-a", "viewer"),
    "a-operator": ("a-operator-token-0123456789", "team-a", "operator"),
    "a-admin": ("a-admin-token-0123456789", "team-a", "admin"),
    "b-operator": ("b-operator-token-0123456789", "team-b", "operator"),
}


def token_config() -> list[dict[str, str]]:
    return [{"name": n, "token": t, "tenant": ten, "role": r} for n, (t, ten, r) in TOKENS.items()]


def md(name: str | None) -> list[tuple[str, str]]:
    return [] if name is None else [("authorization", f"Bearer {TOKENS[name][0]}")]


class Served:
    """A ControlPlane (admin API on a free port) running on its own event loop thread."""

    def __init__(self, cfg: dict[str, Any], **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cp-loop", daemon=True)
        self.thread.start()
        try:
            self.cp: ControlPlane = self.call(self._start(cfg, kw))
        except BaseException:
            self._halt()
            raise
        self.address = f"127.0.0.1:{self.cp.ports.admin}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.AdminStub(self.channel)

    async def _start(self, cfg: dict[str, Any], kw: dict[str, Any]) -> ControlPlane:
        kw.setdefault("admin_port", 0)
        cp = ControlPlane(parse_config(cfg), xds_port=0, metrics_port=None, **kw)
        await cp.start()
        return cp

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Any, *args: Any) -> Any:
        """Run a plain function on the control plane's loop (its state is single-threaded)."""

        async def go() -> Any:
            return fn(*args)

        return self.call(go())

    def _halt(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def stop(self) -> None:
        self.channel.close()
        try:
            self.call(self.cp.stop(grace=0))
        finally:
            self._halt()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()


def cli(*args: str, token: str | None = "root", address: str | None = None, timeout: float = 30.0,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``xds-control admin [--address A] ARGS`` as a subprocess (token via XDS_CONTROL_TOKEN)."""
    e = dict(os.environ)
    e.pop("XDS_CONTROL_TOKEN", None)
    if token is not None:
        e["XDS_CONTROL_TOKEN"] = TOKENS[token][0] if token in TOKENS else token
    e["COLUMNS"] = "200"
    e.update(env or {})
    cmd = [sys.executable, "-m", "xds_control.cli", "admin"]
    if address is not None:
        cmd += ["--address", address]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: Any, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("xds-control test CA")).issuer_name(name("xds-control test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": directory / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn: str, usage: Any, sans: list[Any]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    for label, usage, sans in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH,
         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, []),
    ):
        key, cert = leaf(f"xds-control test {label}", usage, sans)
        out[f"{label}_cert"] = directory / f"{label}.pem"
        out[f"{label}_key"] = directory / f"{label}.key"
        out[f"{label}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, out[f"{label}_key"])
    return out
