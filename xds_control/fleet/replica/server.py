"""The emulated inference replica's HTTP server (aiohttp, 127.0.0.1 only).

Routes (OpenAI / vLLM compatible where it matters to a load balancer):

* ``POST /v1/completions`` — ``prompt`` (string, list of strings or token ids),
  ``max_tokens`` (default 16), ``stream``;
* ``POST /v1/chat/completions`` — ``messages``, ``max_tokens`` or
  ``max_completion_tokens`` (default :attr:`ReplicaConfig.default_chat_max_tokens`), ``stream``;
* ``GET /health`` — 503 until the model-load delay has passed, then 200;
* ``GET /metrics`` — Prometheus text (see :mod:`xds_control.fleet.replica.metrics`);
* ``GET /v1/models``.

Extension fields a load generator may send so that trace token counts are used
exactly: ``xds_input_tokens`` (prompt length; otherwise estimated as one token
per four characters) and ``max_tokens`` (the output length: the emulator never
stops early, as with vLLM's ``ignore_eos``).

Prefix cache: the prompt text (``prompt``, or the ``content`` of ``messages`` joined by newlines)
is cut into blocks of the profile's ``kv_block_tokens`` tokens at four characters per token; the
chained hashes of the full blocks are the engine's prefix-cache keys (see
:class:`~xds_control.fleet.replica.engine.PrefixCache`), so requests whose texts share a prefix of
whole blocks reuse each other's KV blocks on the same replica.

Answers: 200; 400 for malformed bodies; 429 for shed requests (below); 500 for injected
failures (``fail_rate``); 503 before ready and when the waiting queue is full. Every
response carries ``x-xds-replica: <name>`` so tests can count traffic shares.

Prefill-backlog shedding (the control plane has Envoy add the headers; Envoy retries a 429 on another
endpoint): a completion or chat completion carrying ``x-xds-control-shed-backlog-s: <seconds>`` (the bound)
and ``x-xds-control-shed-attempts: <N>`` (Envoy's total attempts) is answered 429 at once, without being
queued, when its ``x-envoy-attempt-count`` (1 when absent) is below N and the engine's
:meth:`~xds_control.fleet.replica.engine.Engine.prefill_backlog_s` minus the prefill this replica's prefix
cache would save the request (:meth:`~xds_control.fleet.replica.engine.Engine.cache_saving_s`, from the
block hashes the request is submitted with) is strictly above the bound, as the simulator decides: a request
whose prefix is cached here waits for the backlog but then prefills less here than on a cold replica, so
only the difference counts against the bound. The last attempt is never shed; a missing, unparsable or
negative bound, a missing or unparsable N, or an unparsable attempt count means no shedding. The 429 carries
``x-xds-control-shed: prefill-backlog`` and an error body naming the backlog, the cache's saving and the
bound (``prefill backlog 2.41 s - cached 0.50 s > bound 0.10 s: retry on another replica``; ``cached 0.00
s`` when nothing is cached); ``xds_replica_shed_requests_total`` counts them. Prefix affinity with
``spill: least_request`` adds ``x-xds-control-shed-first-backlog-s``: the bound of the first
``x-xds-control-affinity-attempts`` attempts (1 when absent; on the key's replicas), in place of
``x-xds-control-shed-backlog-s``, which then bounds the later attempts only (none when absent). With
``x-xds-control-affinity-stall-s: S`` an affinity attempt is also shed when the request's prefill (less the cache's
saving) times the requests the replica is decoding is over S (``prefill 2.10 s x 12 running > stall budget 20.00 s:
retry on another replica``).

Orphan guard: with ``orphan_grace_s`` > 0 (the local scaler sets it on the replicas it starts) the replica
stops by itself once no control plane has contacted it for that long. Contact is a ``GET /health`` or
``GET /metrics`` carrying the ``x-xds-control-plane`` header (the local scaler's health checks); Envoy's and
Prometheus's requests do not count, so a replica whose control plane died and was not restarted goes away.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from xds_control.core.traffic import (
    AFFINITY_ATTEMPTS_HEADER,
    AFFINITY_STALL_HEADER,
    SHED_ATTEMPTS_HEADER,
    SHED_BACKLOG_HEADER,
    SHED_FIRST_BACKLOG_HEADER,
    SHED_STATUS,
)
from xds_control.fleet.costmodel import DEFAULT_PROFILE, ReplicaProfile, get_profile
from xds_control.fleet.replica.engine import Engine, EngineLimits, GenRequest, QueueFull, TooLarge, block_hashes
from xds_control.fleet.replica.metrics import CONTENT_TYPE, ReplicaMetrics

REPLICA_HEADER = "x-xds-replica"
#: Sent by a control plane (the local scaler's health checks): resets the replica's orphan timer.
CONTROL_PLANE_HEADER = "x-xds-control-plane"
#: Request headers SHED_BACKLOG_HEADER (shed when the prefill backlog, less the prefix cache's saving for the
#: request, exceeds this many seconds) and SHED_ATTEMPTS_HEADER (the total attempts Envoy makes; the last one is
#: never shed) come from the traffic plan.
#: Request header set by Envoy: this request's attempt number, 1 for the first try.
ENVOY_ATTEMPT_HEADER = "x-envoy-attempt-count"
#: Response header of a shed request, with :data:`SHED_REASON` as its value.
SHED_HEADER = "x-xds-control-shed"
SHED_REASON = "prefill-backlog"


@dataclass(frozen=True)
class ReplicaConfig:
    """Everything a replica process needs. Flags override the profile's values."""

    port: int = 0
    host: str = "127.0.0.1"
    #: A :data:`xds_control.fleet.costmodel.PROFILES` name.
    profile: str = DEFAULT_PROFILE.name
    name: str = ""
    #: Seconds before /health turns 200 (the model load); ``None`` takes the profile's ``cold_start_s``.
    load_delay_s: float | None = None
    #: Multiplies every step time (a slower GPU).
    slow_factor: float = 1.0
    #: Fraction of requests answered with HTTP 500 at once.
    fail_rate: float = 0.0
    max_num_seqs: int | None = None
    max_queue: int | None = None
    kv_capacity_tokens: int | None = None
    default_chat_max_tokens: int = 128
    seed: int | None = None
    #: An already-bound listening socket's file descriptor (the local scaler passes one).
    sock_fd: int | None = None
    #: Stop by itself after this many seconds without control-plane contact; 0 = never.
    orphan_grace_s: float = 0.0

    def validate(self) -> list[tuple[str, str]]:
        """Problems as ``(option, message)`` pairs; empty when valid."""
        errs: list[tuple[str, str]] = []
        if not 0 <= self.port <= 65535:
            errs.append(("--port", f"must be 0..65535, got {self.port}"))
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            errs.append(("--host", f"replicas bind loopback only, got {self.host!r}"))
        try:
            get_profile(self.profile)
        except KeyError as e:
            errs.append(("--profile", str(e.args[0])))
        if self.load_delay_s is not None and not 0 <= self.load_delay_s <= 3600:
            errs.append(("--load-delay", f"must be 0..3600 seconds, got {self.load_delay_s}"))
        if not 0 < self.slow_factor <= 1000:
            errs.append(("--slow-factor", f"must be > 0 and <= 1000, got {self.slow_factor}"))
        if not 0 <= self.orphan_grace_s <= 86400:
            errs.append(("--orphan-grace-s", f"must be 0..86400 seconds, got {self.orphan_grace_s}"))
        if not 0 <= self.fail_rate <= 1:
            errs.append(("--fail-rate", f"must be 0..1, got {self.fail_rate}"))
        for opt, v in (("--max-num-seqs", self.max_num_seqs), ("--max-queue", self.max_queue),
                       ("--kv-capacity-tokens", self.kv_capacity_tokens)):  # fmt: skip
            if v is not None and v < (0 if opt == "--max-queue" else 1):
                errs.append((opt, f"must be positive, got {v}"))
        return errs

    def resolved(self) -> ResolvedConfig:
        p = get_profile(self.profile)
        base = EngineLimits.from_profile(p, self.slow_factor)
        return ResolvedConfig(
            cfg=self,
            profile=p,
            load_delay_s=p.cold_start_s if self.load_delay_s is None else self.load_delay_s,
            limits=EngineLimits(
                max_num_seqs=base.max_num_seqs if self.max_num_seqs is None else self.max_num_seqs,
                max_queue=base.max_queue if self.max_queue is None else self.max_queue,
                kv_capacity_tokens=(base.kv_capacity_tokens if self.kv_capacity_tokens is None
                                    else self.kv_capacity_tokens),
                slow_factor=self.slow_factor,
                kv_block_tokens=base.kv_block_tokens,
                prefix_caching=base.prefix_caching,
                max_prefill_tokens=base.max_prefill_tokens,
            ),
            fail_rate=self.fail_rate,
        )


@dataclass(frozen=True)
class ResolvedConfig:
    cfg: ReplicaConfig
    profile: ReplicaProfile
    load_delay_s: float
    limits: EngineLimits
    fail_rate: float


def estimate_tokens(text: str) -> int:
    """Rough prompt length: one token per four characters (OpenAI's rule of thumb), at least 1."""
    return max(1, (len(text) + 3) // 4)


def _prompt_tokens(prompt: Any) -> int:
    if isinstance(prompt, str):
        return estimate_tokens(prompt)
    if isinstance(prompt, list):
        if all(isinstance(x, int) for x in prompt):
            return max(1, len(prompt))
        return sum(_prompt_tokens(p) for p in prompt)
    raise ValueError("prompt must be a string, a list of strings or a list of token ids")


def prompt_text(body: dict[str, Any], chat: bool) -> str:
    """The prompt as text for the prefix cache ('' when it is token ids or malformed)."""
    if chat:
        parts = []
        for m in body.get("messages") or ():
            if not isinstance(m, dict):
                return ""
            c = m.get("content", "")
            if isinstance(c, list):
                c = " ".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
            parts.append(str(c))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and all(isinstance(x, str) for x in prompt):
        return "".join(prompt)
    return prompt if isinstance(prompt, str) else ""


def _attempts(headers: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(this attempt, attempts in all, affinity attempts) from Envoy's and the route's headers, or ``None`` when
    the total is missing or one is unparsable."""
    raw = headers.get(SHED_ATTEMPTS_HEADER)
    if raw is None:
        return None
    try:
        return (int(headers.get(ENVOY_ATTEMPT_HEADER, "1")), int(raw),
                int(headers.get(AFFINITY_ATTEMPTS_HEADER, "1")))
    except ValueError:
        return None


def shed_bound(headers: Mapping[str, str]) -> float | None:
    """The prefill-backlog bound (seconds) this request may be shed at, or ``None`` when it must not be shed:
    no valid attempt total, the last attempt, or no valid bound (missing, unparsable, negative or NaN). The first
    ``x-xds-control-affinity-attempts`` attempts' (1 when absent) bound is ``x-xds-control-shed-first-backlog-s``
    when the request carries one (prefix affinity's bound on the key's replicas), else
    ``x-xds-control-shed-backlog-s``; later attempts use the latter."""
    att = _attempts(headers)
    if att is None or att[0] >= att[1]:
        return None
    raw = headers.get(SHED_FIRST_BACKLOG_HEADER) if att[0] <= att[2] else None
    if raw is None:
        raw = headers.get(SHED_BACKLOG_HEADER)
    if raw is None:
        return None
    try:
        bound = float(raw)
    except ValueError:
        return None
    if not bound >= 0.0:  # `not >=` also rejects NaN
        return None
    return bound


def affinity_stall_budget(headers: Mapping[str, str]) -> float | None:
    """The decode-stall budget (seconds x running requests) of this attempt, or ``None``: only an affinity attempt
    (within ``x-xds-control-affinity-attempts``, 1 when absent, and not the last of
    ``x-xds-control-shed-attempts``, which it needs) carrying a valid positive ``x-xds-control-affinity-stall-s``
    has one."""
    raw = headers.get(AFFINITY_STALL_HEADER)
    att = _attempts(headers)
    if raw is None or att is None or att[0] >= att[1] or att[0] > att[2]:
        return None
    try:
        budget = float(raw)
    except ValueError:
        return None
    return budget if budget > 0.0 else None  # `> 0` also rejects NaN


def _message_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    n = 0
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError("each message must be an object")
        content = m.get("content", "")
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        n += estimate_tokens(str(content)) + 4  # role/format overhead, as chat templates add
    return max(1, n)


class ReplicaServer:
    """The aiohttp application around an :class:`Engine`."""

    def __init__(self, cfg: ReplicaConfig) -> None:
        self.cfg = cfg
        self.rc = cfg.resolved()
        self.name = cfg.name
        self.model = self.rc.profile.name
        self._rng = random.Random(cfg.seed)
        self.engine: Engine | None = None
        self.metrics: ReplicaMetrics | None = None
        self.started_at = time.monotonic()
        self.ready = False
        #: ``time.monotonic()`` of the last control-plane contact (see :data:`CONTROL_PLANE_HEADER`).
        self.last_contact = time.monotonic()
        self._ready_task: asyncio.Task[None] | None = None
        self.app = web.Application()
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/metrics", self.metrics_handler)
        self.app.router.add_get("/v1/models", self.models)
        self.app.on_startup.append(self._on_startup)
        self.app.on_cleanup.append(self._on_cleanup)

    async def _on_startup(self, app: web.Application) -> None:
        self.engine = Engine(self.rc.profile, self.rc.limits, on_finished=self._finished)
        self.metrics = ReplicaMetrics(
            self.engine, model_name=self.model, gpu_mem_mib=int(self.rc.profile.gpu_memory_gb * 1024)
        )
        self.engine.start()
        self.started_at = time.monotonic()
        self._ready_task = asyncio.get_running_loop().create_task(self._load_model(), name="replica-load")

    async def _load_model(self) -> None:
        await asyncio.sleep(self.rc.load_delay_s)
        self.ready = True
        assert self.metrics is not None
        self.metrics.ready.set(1)

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._ready_task is not None:
            self._ready_task.cancel()
        if self.engine is not None:
            await self.engine.stop()

    def _finished(self, r: GenRequest) -> None:
        if self.metrics is not None:
            self.metrics.observe_finished(r)

    def _headers(self) -> dict[str, str]:
        return {REPLICA_HEADER: self.name}

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": kind, "code": status}}, status=status,
            headers={**self._headers(), **(headers or {})},
        )  # fmt: skip

    # -- handlers ------------------------------------------------------------------
    def _contact(self, request: web.Request) -> None:
        if CONTROL_PLANE_HEADER in request.headers:
            self.last_contact = time.monotonic()

    async def health(self, request: web.Request) -> web.Response:
        self._contact(request)
        if not self.ready:
            return web.Response(status=503, text="loading model\n", headers=self._headers())
        return web.Response(status=200, text="ok\n", headers=self._headers())

    async def metrics_handler(self, request: web.Request) -> web.Response:
        self._contact(request)
        assert self.metrics is not None
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE, **self._headers()})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "xds-control"}]},
            headers=self._headers(),
        )

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        _set_nodelay(request)
        assert self.engine is not None and self.metrics is not None
        if not self.ready:
            self.metrics.rejected.labels(reason="not_ready").inc()
            return self._error(503, "model is loading", "service_unavailable")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            if "xds_input_tokens" in body:
                n_in = int(body["xds_input_tokens"])
                if n_in < 1:
                    raise ValueError("xds_input_tokens must be >= 1")
            elif chat:
                n_in = _message_tokens(body.get("messages"))
            else:
                n_in = _prompt_tokens(body.get("prompt", ""))
            mt = body.get("max_tokens", body.get("max_completion_tokens"))
            n_out = int(mt) if mt is not None else (self.cfg.default_chat_max_tokens if chat else 16)
            if n_out < 1:
                raise ValueError("max_tokens must be >= 1")
            stream = bool(body.get("stream", False))
            hashes = block_hashes(prompt_text(body, chat), self.rc.limits.kv_block_tokens)
        except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
            self.metrics.rejected.labels(reason="bad_request").inc()
            return self._error(400, str(e), "invalid_request_error")
        saving: float | None = None  # the prefix cache's saving for this request, looked up once when needed
        stall = affinity_stall_budget(request.headers)
        if stall is not None and self.engine.num_running > 0:
            # A prefill stalls every running decode: the key's replica takes the request only while that stall
            # (uncached prefill x running requests) is within the budget; Envoy then tries the next replica.
            saving = self.engine.cache_saving_s(n_in, hashes)
            own = max(0.0, self.engine.prefill_s(n_in) - saving)
            running = self.engine.num_running
            if own * running > stall:
                self.metrics.shed.inc()
                return self._error(
                    SHED_STATUS, f"prefill {own:.2f} s x {running} running > stall budget {stall:.2f} s: "
                    "retry on another replica", "overloaded", {SHED_HEADER: SHED_REASON},
                )  # fmt: skip
        bound = shed_bound(request.headers)
        if bound is not None:
            backlog = self.engine.prefill_backlog_s()
            # Only when the backlog alone is over the bound is the (read-only) cache lookup worth doing.
            if saving is None and backlog > bound:
                saving = self.engine.cache_saving_s(n_in, hashes)
            cached = saving or 0.0
            if backlog - cached > bound:
                self.metrics.shed.inc()
                return self._error(
                    SHED_STATUS, f"prefill backlog {backlog:.2f} s - cached {cached:.2f} s > bound {bound:.2f} s: "
                    "retry on another replica", "overloaded", {SHED_HEADER: SHED_REASON},
                )  # fmt: skip
        if self.rc.fail_rate > 0 and self._rng.random() < self.rc.fail_rate:
            self.metrics.rejected.labels(reason="injected_failure").inc()
            return self._error(500, "injected failure (--fail-rate)", "internal_error")
        try:
            r = self.engine.submit(n_in, n_out, hashes)
        except QueueFull as e:
            self.metrics.rejected.labels(reason="queue_full").inc()
            return self._error(503, f"queue full: {e}", "service_unavailable")
        except TooLarge as e:
            self.metrics.rejected.labels(reason="bad_request").inc()
            return self._error(400, str(e), "invalid_request_error")

        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self.name}-{r.id}"
        created = int(time.time())
        try:
            if stream:
                return await self._stream(request, r, rid, created, chat)
            assert r.done is not None
            await r.done
        except asyncio.CancelledError:
            self.engine.cancel(r)
            raise
        text = _text(r.generated)
        usage = {"prompt_tokens": r.input_tokens, "completion_tokens": r.generated,
                 "total_tokens": r.input_tokens + r.generated}  # fmt: skip
        if chat:
            choice: dict[str, Any] = {
                "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
            obj = "text_completion"
        return web.json_response(
            {"id": rid, "object": obj, "created": created, "model": self.model, "choices": [choice], "usage": usage},
            headers=self._headers(),
        )

    async def _stream(
        self, request: web.Request, r: GenRequest, rid: str, created: int, chat: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **self._headers()}
        )
        await resp.prepare(request)
        sent = 0
        obj = "chat.completion.chunk" if chat else "text_completion"
        while True:
            await r.progress.wait()
            r.progress.clear()
            n = r.generated - sent
            finished = r.finished_at is not None
            if n > 0 or finished:
                piece = _text(n, first=sent == 0)
                reason = "length" if finished else None
                if chat:
                    delta: dict[str, Any] = {"content": piece}
                    if sent == 0:
                        delta["role"] = "assistant"
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
                else:
                    choice = {"index": 0, "text": piece, "finish_reason": reason}
                chunk = {"id": rid, "object": obj, "created": created, "model": self.model, "choices": [choice]}
                if finished:
                    chunk["usage"] = {"prompt_tokens": r.input_tokens, "completion_tokens": r.generated,
                                      "total_tokens": r.input_tokens + r.generated}  # fmt: skip
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                sent = r.generated
            if finished:
                break
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _text(n_tokens: int, first: bool = True) -> str:
    if n_tokens <= 0:
        return ""
    return ("tok" if first else " tok") + " tok" * (n_tokens - 1)


def _set_nodelay(request: web.Request) -> None:
    # asyncio already disables Nagle on TCP transports; make it explicit and cheap.
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def serve(cfg: ReplicaConfig, *, stop: asyncio.Event | None = None, shutdown_timeout: float = 5.0) -> None:
    """Run a replica until ``stop`` is set (or forever). Prints ``listening on HOST:PORT`` once bound."""
    server = ReplicaServer(cfg)
    # handler_cancellation: a client that disconnects aborts its request (as vLLM does).
    runner = web.AppRunner(
        server.app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout, handler_cancellation=True
    )
    await runner.setup()
    if cfg.sock_fd is not None:
        sock = socket.socket(fileno=cfg.sock_fd)
        site: web.BaseSite = web.SockSite(runner, sock, shutdown_timeout=shutdown_timeout)
    else:
        site = web.TCPSite(runner, cfg.host, cfg.port, shutdown_timeout=shutdown_timeout, reuse_address=True)
    await site.start()
    addr = runner.addresses[0]
    if not server.name:
        server.name = f"{addr[0]}:{addr[1]}"
    print(f"listening on {addr[0]}:{addr[1]}", flush=True)
    if stop is None:
        stop = asyncio.Event()
    guard = None
    if cfg.orphan_grace_s > 0:
        guard = asyncio.get_running_loop().create_task(_orphan_guard(server, cfg.orphan_grace_s, stop),
                                                       name="replica-orphan-guard")
    try:
        await stop.wait()
    finally:
        if guard is not None:
            guard.cancel()
        await runner.cleanup()


async def _orphan_guard(server: ReplicaServer, grace_s: float, stop: asyncio.Event) -> None:
    """Set ``stop`` once no control plane has contacted ``server`` for ``grace_s`` seconds."""
    while not stop.is_set():
        idle = time.monotonic() - server.last_contact
        if idle >= grace_s:
            print(f"no control plane contact for {idle:.1f} s (--orphan-grace-s {grace_s:g}); stopping", flush=True)
            stop.set()
            return
        await asyncio.sleep(min(1.0, max(0.05, grace_s - idle)))


def run(cfg: ReplicaConfig) -> None:
    """Blocking entry point: serve until SIGTERM/SIGINT, then shut down gracefully."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop=stop)

    try:
        asyncio.run(main())
    except OSError as e:  # e.g. the port is taken
        import sys

        print(f"replica: cannot listen on {cfg.host}:{cfg.port}: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def with_overrides(cfg: ReplicaConfig, **kw: Any) -> ReplicaConfig:
    return replace(cfg, **kw)
