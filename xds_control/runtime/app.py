"""Lifecycle of a running control plane: one place that starts and stops everything.

``ControlPlane`` owns the gRPC server (ADS + health), the metrics/debug HTTP
endpoint, the publisher's debounce loop and the config-file watcher. Every
long-lived task is named and guarded: if one dies unexpectedly, the failure is
logged and the whole control plane stops (a half-running control plane that
silently stopped watching its config would be worse than none).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xds_control.config import Config, parse_text, to_traffic_plan
from xds_control.control.operator import OperatorState
from xds_control.core.errors import ConfigError, InconsistentSnapshot
from xds_control.core.traffic import TrafficPlan
from xds_control.xds.cache import SnapshotCache
from xds_control.xds.metrics import XdsMetrics
from xds_control.xds.publisher import Publisher
from xds_control.xds.server import SERVICE, AdsServer
from xds_control.xds.status import SyncTracker
from xds_control.xds.tls import add_port

log = logging.getLogger(__name__)


@dataclass
class Ports:
    xds: int = 0
    metrics: int | None = None
    admin: int | None = None


@dataclass
class ControlPlane:
    """A control plane serving ``config``. Ports 0 mean "pick a free one"; read them after start()."""

    config: Config
    config_path: Path | None = None
    host: str = "127.0.0.1"
    xds_port: int = 0
    metrics_port: int | None = 0
    watch_interval_s: float = 0.25
    ports: Ports = field(default_factory=Ports)
    #: Replica scaler and signal source for autoscaled pools; built from the config when None.
    scaler: Any = None
    source: Any = None
    #: Gateway request rates per pool (Envoy's statistics); built from ``controller.signals`` when None.
    rate_source: Any = None
    #: Admin API port on ``config.admin.address`` (0 = any free one); None = no admin API.
    admin_port: int | None = None
    #: Where operator state (pins, drains, pauses, policies) is kept across restarts; None = beside the config
    #: (``<config>.operator-state.json``), or nowhere without a config file.
    operator_state_path: Path | None = None
    #: The local scaler's replica state file (replicas outlive a crash and are adopted on restart); None = beside
    #: the config (``<config>.replicas.json``), or none without a config file (replicas then die with the process).
    replica_state_path: Path | None = None

    def __post_init__(self) -> None:
        x = self.config.xds
        self.metrics = XdsMetrics()
        self.tracker = SyncTracker()
        self.cache = SnapshotCache()
        self.publisher = Publisher(
            self.cache, self.tracker, self.metrics,
            debounce_s=x.debounce_ms / 1000, max_delay_s=x.max_delay_ms / 1000,
            removal_timeout_s=x.removal_timeout_s, rollback_on_nack=x.rollback_on_nack,
        )
        self.ads = AdsServer(self.cache, self.tracker, self.metrics, ack_timeout_s=x.ack_timeout_s,
                             max_concurrent_pushes=x.max_concurrent_pushes)
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._config_digest = b""
        self.failure: BaseException | None = None
        self.controller: Any = None
        #: The controller's metrics and the dashboard's history (runtime/metrics.py); None without autoscaling.
        self.controller_metrics: Any = None
        #: Operator weight overrides, drains, pauses and policies (admin API); shared with the controller and
        #: persisted in the operator state store (see ``_restore_operator_state``).
        self.operator = OperatorState()
        self.admin: Any = None
        #: Leader election's Lease holder (Kubernetes; ``attach_kubernetes``), else None.
        self.elector: Any = None
        #: What the control-plane instances share to drain together (``actuators/peers.py``); None: one instance.
        self.peer_board: Any = None
        #: Where operator state is kept (``_state_store``); a shared one (``changed``) is followed every
        #: ``operator_sync_s``.
        self._operator_store: Any = None
        self.operator_sync_s = 1.0
        self._owns_scaler = self.scaler is None
        self._owns_source = self.source is None
        self._owns_rate_source = self.rate_source is None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        # Operator state is back before anything is published or scaled: a drained endpoint stays drained.
        self._restore_operator_state()
        # The first snapshot exists before any proxy can connect: never serve an empty config first.
        if autoscaled(self.config):
            await self._start_controller()
        else:
            self.publisher.publish_now(self.operator.apply(to_traffic_plan(self.config)), reason="initial config")
        if self.config_path is not None:
            self._config_digest = hashlib.sha256(self.config_path.read_bytes()).digest()
        server = grpc.aio.server(options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            # A request is a list of names (capped per stream by AdsServer) or an ACK/NACK: gRPC's default 4 MiB
            # bounds what one in-flight request can cost (a 16 MiB one cost ~70 MiB of RSS to receive and parse).
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ])
        self.ads.add_to_server(server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        port = add_port(server, f"{self.host}:{self.xds_port}", self.config.admin.xds_tls)
        if port == 0:
            raise OSError(f"cannot bind the xDS port {self.host}:{self.xds_port}")
        self.ports.xds = port
        await server.start()
        self._grpc = server
        await self._set_health(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._set_health("", health_pb2.HealthCheckResponse.SERVING)
        if self.metrics_port is not None:
            await self._start_http()
        if self.admin_port is not None:
            from xds_control.admin.service import start_admin
            from xds_control.runtime.admin_port import RuntimeAdminPort

            try:
                self.admin = await start_admin(RuntimeAdminPort(self), self.admin_port)
            except BaseException:
                await self.stop(grace=0)  # nothing half-started is left behind
                raise
            self.ports.admin = self.admin.port
        self._spawn("xds-publisher", self.publisher.run)
        if self.controller is not None:
            self._spawn("controller", self.controller.run)
        if self.config_path is not None:
            self._spawn("config-watcher", self._watch_config)
        if hasattr(self._operator_store, "changed"):
            self._spawn("operator-state-follower", self._follow_operator_state)
        log.info("xDS (ADS, SotW and Delta) on %s:%d%s", self.host, self.ports.xds,
                 f", metrics on http://{self.host}:{self.ports.metrics}/metrics" if self.ports.metrics else "")

    def _state_store(self) -> Any:
        from xds_control.runtime.operator_store import FileStateStore, default_state_path

        if self.operator_state_path is not None:
            return FileStateStore(self.operator_state_path)
        k = self.config.kubernetes
        if k is not None and k.leader_election.enabled:
            # Several instances: one ConfigMap every instance reads and writes (actuators/kube_state.py).
            from xds_control.actuators.kube_state import KubeStateStore
            from xds_control.actuators.kubernetes import default_namespace, make_api_client

            ns = k.leader_election.lease_namespace or k.namespace or default_namespace(k.kubeconfig, k.context)
            return KubeStateStore(make_api_client(k.kubeconfig, k.context), ns,
                                  f"{k.leader_election.lease_name}-operator")
        return FileStateStore(default_state_path(self.config_path)) if self.config_path is not None else None

    def _parse_operator_state(self, data: Any, store: Any) -> Any:
        """Stored operator state -> an OperatorState for this config (what no longer applies is logged, dropped)."""
        from xds_control.control.operator import load_state

        pools = {p.name: p.autoscale is not None for s in self.config.services for p in s.pools}
        st, dropped = load_state(data, pools)
        for why in dropped:
            log.warning("operator state %s: dropped %s", store, why)
        return st

    def _restore_operator_state(self) -> None:
        """Load the operator state kept by the last run (a missing, unreadable or corrupt one is logged and
        ignored: the config is the truth then), and keep it up to date on every change from now on."""
        store = self._state_store()
        if store is None:
            return
        self._operator_store = store
        try:
            data = store.load()
            if data is not None:
                st = self._parse_operator_state(data, store)
                op = self.operator
                op.weights, op.drains, op.specs, op.paused = st.weights, st.drains, st.specs, st.paused
                log.info("operator state restored from %s: %d pins, %d drains, %d paused pools, %d policies",
                         store, len(op.weights), len(op.drains), len(op.paused), len(op.specs))
        except (OSError, ValueError) as e:
            log.error("operator state %s ignored, it cannot be read: %s", store,
                      getattr(e, "strerror", None) or e)

        def save() -> None:
            from xds_control.control.operator import dump_state

            try:
                store.save(dump_state(self.operator))
            except OSError as e:
                log.error("cannot save the operator state to %s: %s; the change holds until a restart",
                          store, e.strerror or e)

        self.operator.on_change = save

    async def _follow_operator_state(self) -> None:
        """A shared store (Kubernetes): adopt what another instance changed, every ``operator_sync_s``."""
        store = self._operator_store
        while True:
            await asyncio.sleep(self.operator_sync_s)
            try:
                data = await asyncio.to_thread(store.changed)
            except (OSError, ValueError) as e:
                log.warning("operator state %s: %s", store, getattr(e, "strerror", None) or e)
                continue
            if data is None:
                continue
            st = self._parse_operator_state(data, store)
            op = self.operator
            save, op.on_change = op.on_change, None  # adopting is not a change of ours: nothing to write back
            try:
                new_specs = {p: sp for p, sp in st.specs.items() if op.specs.get(p) != sp}
                op.weights, op.drains, op.paused = st.weights, st.drains, st.paused
                op.specs = dict(st.specs)
                if self.controller is not None:
                    for pool, spec in new_specs.items():
                        if pool in self.controller.runtimes:
                            self.controller.set_spec(pool, spec)
                else:
                    self.publisher.submit(op.apply(to_traffic_plan(self.config)),
                                          reason="operator state changed by another instance")
            finally:
                op.on_change = save
            log.info("operator state changed by another instance (%s): %d pins, %d drains, %d paused pools, "
                     "%d policies", store, len(op.weights), len(op.drains), len(op.paused), len(op.specs))

    async def _set_health(self, service: str, status: int) -> None:
        r = self.health.set(service, status)
        if asyncio.iscoroutine(r):
            await r

    async def stop(self, grace: float = 1.0) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except BaseException:  # noqa: BLE001 - cancelled or already reported
                pass
        self._tasks.clear()
        if self.controller is not None:
            await self.controller.close()
        if self.scaler is not None and self._owns_scaler:
            await self.scaler.close()
        if self.source is not None and self._owns_source:
            await self.source.close()
        if self.rate_source is not None and self._owns_rate_source:
            await self.rate_source.close()
        if self.admin is not None:
            await self.admin.stop(grace)
            self.admin = None
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _start_controller(self) -> None:
        from xds_control.runtime.loop import Controller

        if self.scaler is None and self.config.kubernetes is not None:
            from xds_control.actuators.kube_wiring import attach_kubernetes

            await attach_kubernetes(self)  # the Kubernetes scaler and, if enabled, the Lease elector
        if self.scaler is None:
            from xds_control.actuators.local import LocalScaler

            # The app handles SIGINT/SIGTERM itself and closes the scaler on the way out. Replicas a crashed
            # predecessor left running are taken over before the controller counts what exists.
            state = self.replica_state_path or (
                self.config_path.with_name(self.config_path.name + ".replicas.json") if self.config_path else None)
            self.scaler = LocalScaler(install_signal_handlers=False, state_path=state)
            await self.scaler.adopt()
        if self.source is None:
            self.source = make_source(self.config)
        if self.rate_source is None:
            from xds_control.signals.envoy_stats import make_rate_source

            self.rate_source = make_rate_source(self.config.controller.signals)
        self.controller = Controller(self.config, self.publisher, self.tracker, self.scaler, self.source,
                                     rates=self.rate_source, operator=self.operator, board=self.peer_board)
        from xds_control.runtime.metrics import ControllerMetrics

        # replicas, decisions, weights, load and latency on /metrics (and the dashboard's history)
        self.controller_metrics = ControllerMetrics(self.metrics.registry).attach(self.controller)
        await self.controller.start()

    def _spawn(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001
                log.exception("task %s failed; stopping the control plane", name)
                self.failure = e
                asyncio.get_running_loop().create_task(self.stop(), name="stop-after-failure")

        self._tasks.append(asyncio.get_running_loop().create_task(guarded(), name=name))

    # -- config file ----------------------------------------------------------------------------
    async def _watch_config(self) -> None:
        """Poll the config file; read, hash, parse and validate it in a worker thread, apply on the loop."""
        assert self.config_path is not None
        while True:
            await asyncio.sleep(self.watch_interval_s)
            await self._check_config_file()

    async def _check_config_file(self) -> bool | None:
        """One look at the config file: None when unchanged or unreadable, else whether the change applied."""
        assert self.config_path is not None
        path = self.config_path
        try:
            data, digest = await asyncio.to_thread(_read_and_hash, path)
        except OSError as e:
            log.warning("cannot read %s (%s); keeping the last good config", path, e.strerror)
            return None
        if digest == self._config_digest:
            return None
        self._config_digest = digest
        return await self.reload_text_async(data.decode(errors="replace"), str(path))

    def reload_text(self, text: str, source: str = "<config>") -> bool:
        """Validate and apply a new config text. Returns False (and keeps the old one) if invalid.

        Parses in the calling thread; on the event loop prefer :meth:`reload_text_async`, which parses
        in a worker thread so that a large file does not stall xDS, ACKs and the admin API.
        """
        try:
            parsed = _parse_for_reload(text, source)
        except ConfigError as e:
            return self._reject_invalid(e)
        return self._apply_reload(*parsed, source)

    async def reload_text_async(self, text: str, source: str = "<config>") -> bool:
        """:meth:`reload_text` with the YAML parse, validation and plan building in a worker thread."""
        try:
            parsed = await asyncio.to_thread(_parse_for_reload, text, source)
        except ConfigError as e:
            return self._reject_invalid(e)
        return self._apply_reload(*parsed, source)

    def _reject_invalid(self, e: ConfigError) -> bool:
        self.metrics.config_reloads.labels("invalid").inc()
        log.error("config change rejected, the last good config stays in force:\n%s", e)
        return False

    def _reject_restart(self, why: str) -> bool:
        self.metrics.config_reloads.labels("needs_restart").inc()
        log.error("config change rejected, the last good config stays in force: %s; restart to apply it", why)
        return False

    def _apply_reload(self, cfg: Config, plan: TrafficPlan, source: str) -> bool:
        """Apply a parsed config on the loop (``plan`` is ``to_traffic_plan(cfg)``, built once)."""
        if any(plan == bad for bad in self.publisher.bad_plans):
            self.metrics.config_reloads.labels("known_bad").inc()
            log.error("config change rejected: proxies rejected this exact configuration before")
            return False
        changed = restart_only_changes(self.config, cfg)
        if changed:
            return self._reject_restart("these keys are read only at start: " + "; ".join(changed))
        if self.controller is not None:
            if not autoscaled(cfg):
                return self._reject_restart("it removes autoscaling from every pool")
            self.controller.set_config(cfg)
        else:
            if autoscaled(cfg):
                return self._reject_restart("it turns autoscaling on")
            self.publisher.submit(self.operator.apply(plan), reason=f"config reload from {source}")
        self.config = cfg
        self.metrics.config_reloads.labels("ok").inc()
        return True

    # -- HTTP: /metrics and debug views ----------------------------------------------------------
    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/debug/syncz", self._syncz_view)
        app.router.add_get("/debug/snapshot", self._snapshot_view)
        app.router.add_get("/debug/tasks", self._tasks_view)
        app.router.add_get("/healthz", _healthz)
        from xds_control.runtime.dashboard import add_dashboard_routes

        add_dashboard_routes(app, self)  # the live dashboard: / and /api/state
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.metrics_port or 0)
        await site.start()
        self._http = runner
        sock = site._server.sockets[0]  # type: ignore[union-attr]  # aiohttp has no public bound-port API
        self.ports.metrics = sock.getsockname()[1]

    @property
    def dashboard_url(self) -> str | None:
        """The live dashboard's address (the metrics port, path ``/``); None without a metrics port."""
        return f"http://{self.host}:{self.ports.metrics}/" if self.ports.metrics else None

    async def _tasks_view(self, _req: web.Request) -> web.Response:
        """Every asyncio task with where it is waiting (for diagnosing a stuck loop)."""
        lines = []
        for t in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
            if t.get_name().startswith("xds-sotw") or t.get_name().startswith("xds-delta"):
                continue
            chain: list[str] = []
            coro: Any = t.get_coro()
            while coro is not None and len(chain) < 20:
                frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
                if frame is not None:
                    chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
                coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
            lines.append(f"{t.get_name()}: {' -> '.join(chain) or '?'}")
        return web.Response(text="\n".join(lines) + "\n")

    async def _metrics_view(self, _req: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _syncz_view(self, _req: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _snapshot_view(self, _req: web.Request) -> web.Response:
        snap = self.cache.snapshot
        body = {
            "version": snap.version if snap else None,
            "reason": snap.reason if snap else None,
            "types": {k: v for k, v in (snap.summary() if snap else {}).items()},
            "resources": {
                t.rsplit(".", 1)[-1]: {n: r.version for n, r in snap.of(t).items()} for t in snap.resources
            } if snap else {},
        }
        return web.Response(text=json.dumps(body, indent=2), content_type="application/json")

    def status(self) -> dict[str, object]:
        snap = self.cache.snapshot
        return {
            "version": snap.version if snap else None,
            "last_good_version": self.publisher.last_good.version if self.publisher.last_good else None,
            "proxies": self.tracker.syncz(),
            "rejections": [r.__dict__ for r in self.publisher.rejections],
            "last_error": self.publisher.last_error,
        }


async def _healthz(_req: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for listeners that Envoy, not we, will bind later).

    Chosen below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``) when there is room: a port the
    kernel hands out for ``bind(0)`` is also one it may give the next outgoing connection (Envoy's own, a
    replica's), and a listener bound later on such a port fails with EADDRINUSE. Falls back to ``bind(0)``.
    """
    import random
    import socket

    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    if low > 11_000:
        rng = random.Random()
        for _ in range(64):
            port = rng.randrange(10_000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Config keys read only when the control plane starts (a reload changing one is rejected, see
#: ``restart_only_changes``): the publisher's and ADS server's settings (``__post_init__``), the controller's signal
#: and rate sources (``make_source``, ``make_rate_source``), the admin API's and xDS port's binding and TLS
#: (``start``, ``start_admin``), and the Kubernetes wiring (``attach_kubernetes``). ``controller.tick_s`` is live:
#: ``Controller.run`` re-reads it every tick.
RESTART_ONLY_KEYS = ("xds", "controller.signals", "admin.enabled", "admin.address", "admin.port", "admin.tls",
                     "admin.xds_tls", "kubernetes")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """Each changed key under :data:`RESTART_ONLY_KEYS`, as ``path: old -> new`` (or just ``path``)."""
    out: list[str] = []
    for key in RESTART_ONLY_KEYS:
        a: Any = old
        b: Any = new
        for part in key.split("."):
            a, b = getattr(a, part), getattr(b, part)
        _diff(key, a, b, out)
    return out


def _diff(path: str, a: Any, b: Any, out: list[str]) -> None:
    from pydantic import BaseModel

    if a == b:
        return
    if isinstance(a, BaseModel) and type(a) is type(b):
        for name in type(a).model_fields:
            _diff(f"{path}.{name}", getattr(a, name), getattr(b, name), out)
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k} ({'added' if k not in a else 'removed'})")
            else:
                _diff(f"{path}.{k}", a[k], b[k], out)
    elif all(x is None or isinstance(x, (bool, int, float, str)) for x in (a, b)):
        out.append(f"{path} ({_short(a)} -> {_short(b)})")
    else:
        out.append(path)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _read_and_hash(path: Path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).digest()


def _parse_for_reload(text: str, source: str) -> tuple[Config, TrafficPlan]:
    """Parse, validate and build the static plan: pure, so it runs in a worker thread.

    The cyclic garbage collector is paused meanwhile: a 10,000-endpoint file allocates some 10^5 objects (YAML
    nodes, models, plan), which would otherwise set off several full collections of the whole heap (about 0.1 s
    each with 1,000 streams connected), each holding the GIL and so stalling the event loop. What the parse
    allocates is freed by reference counting; the collector resumes right after.
    """
    with _gc_paused():
        cfg = parse_text(text, source)
        return cfg, to_traffic_plan(cfg)


_gc_lock = threading.Lock()
_gc_pause = {"pausers": 0, "reenable": False}


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic collector while the block runs (re-entrant across threads; never enables it if it was off)."""
    with _gc_lock:
        if _gc_pause["pausers"] == 0:
            _gc_pause["reenable"] = gc.isenabled()
            gc.disable()
        _gc_pause["pausers"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause["pausers"] -= 1
            if _gc_pause["pausers"] == 0 and _gc_pause["reenable"]:
                gc.enable()


def autoscaled(cfg: Config) -> bool:
    return any(p.autoscale is not None for s in cfg.services for p in s.pools)


def make_source(cfg: Config) -> Any:
    sc = cfg.controller.signals
    if sc.source == "prometheus":
        from xds_control.signals.prometheus import PrometheusSource

        assert sc.prometheus_url is not None
        return PrometheusSource(sc.prometheus_url, queries=sc.queries or None, window=sc.window,
                                timeout_s=sc.timeout_s)
    from xds_control.signals.scrape import ScrapeSource

    return ScrapeSource(timeout_s=sc.timeout_s)


async def serve_forever(cp: ControlPlane) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await cp.start()
    print(json.dumps({"xds_port": cp.ports.xds, "metrics_port": cp.ports.metrics, "admin_port": cp.ports.admin,
                      "dashboard_url": cp.dashboard_url}), flush=True)
    done = asyncio.create_task(cp.wait_stopped(), name="wait-stopped")
    stopper = asyncio.create_task(stop.wait(), name="wait-signal")
    await asyncio.wait({done, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await cp.stop()
    for t in (done, stopper):
        t.cancel()
    return 1 if cp.failure is not None else 0


__all__ = ["ControlPlane", "InconsistentSnapshot", "serve_forever"]
