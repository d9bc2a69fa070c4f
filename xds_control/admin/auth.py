"""Bearer tokens with a tenant and a role, checked by a gRPC server interceptor.

* Metadata ``authorization: Bearer <token>``; the token is compared in constant time against every
  configured token (SHA-256 digests and ``hmac.compare_digest``, no early exit). It is never logged: a
  caller is known by the token's ``name``, tenant and role (:class:`Principal`).
* Roles are ordered: viewer < operator < admin. Tenant ``*`` sees every tenant's services.
* With no token configured, the API is open (an anonymous admin of every tenant) only while it is bound to
  a loopback address; ``serve`` refuses a non-loopback bind without tokens (:func:`admin_bind_problem`), and
  the interceptor denies every call should that ever happen anyway.
* gRPC health checking and reflection need no token (probes and ``grpcurl list`` work without one).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from xds_control.config.schema import AdminConfig, AdminTokenConfig, Config

ROLES = ("viewer", "operator", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
ADMIN_PREFIX = "/xds_control.admin.v1.Admin/"

#: The authenticated caller of the RPC being served (set by the interceptor for the handler's task).
PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("xds_admin_principal", default=None)


@dataclass(frozen=True)
class Principal:
    name: str
    tenant: str
    role: str

    def can(self, role: str) -> bool:
        return RANK[self.role] >= RANK[role]

    def sees(self, tenant: str) -> bool:
        return self.tenant == "*" or self.tenant == tenant

    @property
    def all_tenants(self) -> bool:
        return self.tenant == "*"

    def __str__(self) -> str:
        return f"{self.name} (tenant {self.tenant}, {self.role})"


ANONYMOUS = Principal("anonymous", "*", "admin")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"


def admin_bind_problem(cfg: Config) -> str | None:
    """Why the admin API must not start as configured, or None."""
    a = cfg.admin
    if not a.enabled or is_loopback(a.address):
        return None
    if not a.all_tokens():
        return (f"admin.address: {a.address!r} is beyond loopback and no admin token is configured; "
                "add admin.tokens (or admin.tokens_file), or bind the admin API to 127.0.0.1")
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Maps a presented bearer token to a :class:`Principal`. Rebuilt when the config changes."""

    def __init__(self, admin: AdminConfig) -> None:
        tokens: list[AdminTokenConfig] = admin.all_tokens()
        self._entries = [(_digest(t.token.get_secret_value()), Principal(t.name, t.tenant, t.role)) for t in tokens]
        self.open = not self._entries and is_loopback(admin.address)

    def authenticate(self, header: str | None) -> Principal | str:
        """The principal, or the reason (a string) to answer UNAUTHENTICATED."""
        if self.open:
            return ANONYMOUS
        if not self._entries:
            return "no admin token is configured; the admin API is closed"
        if not header:
            return "missing 'authorization: Bearer <token>' metadata"
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return "the authorization metadata must be 'Bearer <token>'"
        presented = _digest(value.strip())
        found: Principal | None = None
        for digest, principal in self._entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(digest, presented):
                found = principal
        return found if found is not None else "invalid token"


def _deny_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def unary(_req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(_req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        await ctx.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


def _with_principal(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        inner_u = handler.unary_unary

        async def unary(req: Any, ctx: Any) -> Any:
            PRINCIPAL.set(principal)
            return await inner_u(req, ctx)

        return grpc.unary_unary_rpc_method_handler(unary, **kw)
    if handler.unary_stream is not None:
        inner_s = handler.unary_stream

        async def stream(req: Any, ctx: Any) -> Any:
            PRINCIPAL.set(principal)
            # grpc.aio handlers are async generators; types-grpcio types handlers with the sync API's Iterator
            async for item in inner_s(req, ctx):  # type: ignore[attr-defined]  # see above
                yield item

        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return handler


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every admin method; other services (health, reflection) pass through."""

    def __init__(self, authenticator: Callable[[], Authenticator]) -> None:
        self._authenticator = authenticator

    async def intercept_service(  # type: ignore[override]  # the stubs' generic handler types; same signature
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(ADMIN_PREFIX):
            return handler
        md: Sequence[Any] = details.invocation_metadata or ()
        header = next((v for k, v in md if k == "authorization"), None)
        if isinstance(header, bytes):
            header = header.decode(errors="replace")
        who = self._authenticator().authenticate(header)
        if isinstance(who, str):
            return _deny_handler(handler, who)
        return _with_principal(handler, who)
