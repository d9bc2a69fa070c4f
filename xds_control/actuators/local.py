"""Local process scaler: replicas as child processes on free 127.0.0.1 ports.

Each replica is ``python -m xds_control.fleet.replica`` started with an already bound
listening socket (the scaler binds ``127.0.0.1:0``, so the port is known before
the child starts and no other process can take it in between) in its own
session/process group. The scaler

* polls ``GET /health`` until 200 → ``ready`` (``ready_timeout_s`` → ``failed``);
* notices a child that exits on its own → ``failed`` (kept in :meth:`list` until
  the controller calls :meth:`stop_replica`, so it can replace it);
* stops a child with SIGTERM to its process group, then SIGKILL after
  ``stop_timeout_s``, and always reaps it (no zombies);
* guarantees that every child is gone when the parent goes away:
  :meth:`close` (use ``async with LocalScaler() as s``), an ``atexit`` hook,
  a SIGTERM handler installed only if the process has none (it kills the
  children, then lets SIGTERM terminate the process as before), and Linux's
  ``PR_SET_PDEATHSIG``, set by each replica at start-up (SIGTERM when the parent dies, even by
  SIGKILL). Ctrl-C raises KeyboardInterrupt in the parent; children live in
  their own session, so the terminal's SIGINT does not reach them and the
  parent's shutdown (``close()`` or ``atexit``) stops them.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import aiohttp

from xds_control.actuators.base import ReplicaFailed, ReplicaInfo, ReplicaOptions, ReplicaState

__all__ = ["LocalScaler", "kill_all_children"]

# pid -> process group id of every live child of every LocalScaler in this process.
_CHILDREN: dict[int, int] = {}
_ATEXIT_INSTALLED = False
_SIGTERM_INSTALLED = False


def kill_all_children(grace_s: float = 2.0) -> None:
    """Synchronously stop every replica process group this process started (SIGTERM, then SIGKILL).

    Safe to call from ``atexit`` and signal handlers; reaps the children it can.
    """
    if not _CHILDREN:
        return
    groups = set(_CHILDREN.values())
    for pg in groups:
        try:
            os.killpg(pg, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    pending = set(_CHILDREN)
    while pending and time.monotonic() < deadline:
        for pid in builtins.list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.02)
    for pg in groups:
        try:
            os.killpg(pg, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pending:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    _CHILDREN.clear()


def _on_sigterm(signum: int, frame: object) -> None:
    kill_all_children()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_process_guards(install_sigterm: bool) -> None:
    global _ATEXIT_INSTALLED, _SIGTERM_INSTALLED
    if not _ATEXIT_INSTALLED:
        atexit.register(kill_all_children)
        _ATEXIT_INSTALLED = True
    if install_sigterm and not _SIGTERM_INSTALLED:
        try:
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
                _SIGTERM_INSTALLED = True
        except ValueError:  # not the main thread
            pass


#: The replica sets PR_SET_PDEATHSIG itself at start-up (see ``xds_control.fleet.replica.__main__``): running
#: Python between fork and exec (``preexec_fn``) in a process with gRPC threads crashed the child.
PARENT_PID_ENV = "XDS_CONTROL_PARENT_PID"


class LocalScaler:
    """Implements :class:`xds_control.actuators.base.Scaler` with local processes.

    Args:
        default_profile: cost-model profile name when ``start_replica`` gets none.
        default_options: options merged under each call's options (e.g. a short ``load_delay_s`` for tests).
        ready_timeout_s: a replica not healthy after this long is killed and reported ``failed``.
        stop_timeout_s: SIGTERM→SIGKILL grace when stopping.
        health_interval_s: how often starting replicas are polled (and exits noticed).
        python: interpreter for the children (default: this one).
        log_dir: keep each child's stdout/stderr as ``<log_dir>/<id>.log`` (default: a temp dir removed by ``close``).
        on_change: called with the new :class:`ReplicaInfo` on every state change.
        install_signal_handlers: install the SIGTERM guard if SIGTERM has its default action.
    """

    def __init__(
        self,
        *,
        default_profile: str | None = None,
        default_options: ReplicaOptions | None = None,
        ready_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
        health_interval_s: float = 0.1,
        python: str | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        on_change: Callable[[ReplicaInfo], None] | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        self.default_profile = default_profile
        self.default_options = default_options or ReplicaOptions()
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.health_interval_s = health_interval_s
        self.python = python or sys.executable
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="xds-replicas-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.on_change = on_change
        self._seq = itertools.count(1)
        self._infos: dict[str, ReplicaInfo] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self._settled: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        _install_process_guards(install_signal_handlers)

    async def __aenter__(self) -> LocalScaler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- Scaler API --------------------------------------------------------------------
    async def start_replica(
        self, pool: str, profile: str | None = None, options: ReplicaOptions | None = None
    ) -> ReplicaInfo:
        if self._closed:
            raise RuntimeError("LocalScaler is closed")
        profile = profile or self.default_profile
        opts = _merge(self.default_options, options)
        rid = f"{pool}-{next(self._seq)}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            port = sock.getsockname()[1]
            fd = sock.fileno()
            os.set_inheritable(fd, True)
            args = [self.python, "-m", "xds_control.fleet.replica",
                    "--sock-fd", str(fd), "--port", str(port), "--name", rid]
            if profile:
                args += ["--profile", profile]
            args += opts.to_args()
            log = open(self.log_dir / f"{rid}.log", "wb")
            try:
                proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(fd,),
                    start_new_session=True,
                    env=_child_env(),
                )
            finally:
                log.close()
        finally:
            sock.close()  # the child holds its own copy
        _CHILDREN[proc.pid] = proc.pid  # start_new_session: pgid == pid
        info = ReplicaInfo(
            id=rid, pool=pool, profile=profile or "", address="127.0.0.1", port=port, pid=proc.pid,
            state=ReplicaState.STARTING, started_at=time.time(), options=opts,
        )  # fmt: skip
        self._procs[rid] = proc
        self._infos[rid] = info
        self._settled[rid] = asyncio.Event()
        self._monitors[rid] = asyncio.get_running_loop().create_task(self._monitor(rid), name=f"replica-monitor-{rid}")
        self._emit(info)
        return info

    async def wait_ready(self, replica_id: str, timeout_s: float | None = None) -> ReplicaInfo:
        ev = self._settled.get(replica_id)
        if ev is None:
            raise KeyError(f"unknown replica {replica_id!r}")
        await asyncio.wait_for(ev.wait(), timeout_s)
        info = self._infos.get(replica_id)
        if info is None or info.state != ReplicaState.READY:
            raise ReplicaFailed(info or self._gone(replica_id))
        return info

    async def stop_replica(self, replica_id: str, timeout_s: float | None = None) -> None:
        info = self._infos.get(replica_id)
        proc = self._procs.get(replica_id)
        if info is None or proc is None:
            return
        if info.state != ReplicaState.FAILED:
            self._set(replica_id, state=ReplicaState.STOPPING)
        mon = self._monitors.pop(replica_id, None)
        if mon is not None:
            mon.cancel()
        await self._terminate(proc, self.stop_timeout_s if timeout_s is None else timeout_s)
        self._infos.pop(replica_id, None)
        self._procs.pop(replica_id, None)
        ev = self._settled.pop(replica_id, None)
        if ev is not None:
            ev.set()

    def list(self) -> builtins.list[ReplicaInfo]:
        return builtins.list(self._infos.values())

    def get(self, replica_id: str) -> ReplicaInfo | None:
        return self._infos.get(replica_id)

    def log_path(self, replica_id: str) -> Path:
        return self.log_dir / f"{replica_id}.log"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(self.stop_replica(rid) for rid in builtins.list(self._infos)), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    # -- internals -----------------------------------------------------------------------
    def _gone(self, rid: str) -> ReplicaInfo:
        return ReplicaInfo(rid, "", "", "", 0, None, ReplicaState.FAILED, 0.0, reason="stopped")

    def _emit(self, info: ReplicaInfo) -> None:
        if self.on_change is not None:
            try:
                self.on_change(info)
            except Exception:  # a listener must not break the scaler
                pass

    def _set(self, rid: str, **changes: object) -> ReplicaInfo:
        info = replace(self._infos[rid], **changes)  # type: ignore[arg-type]  # **changes are ReplicaInfo fields
        self._infos[rid] = info
        self._emit(info)
        return info

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:  # never open a session that close() would not close
            raise aiohttp.ClientError("the scaler is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=1.0),
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
            )
        return self._session

    def _log_tail(self, rid: str, n: int = 800) -> str:
        try:
            data = self.log_path(rid).read_bytes()
        except OSError:
            return ""
        return data[-n:].decode(errors="replace").strip()

    async def _monitor(self, rid: str) -> None:
        proc = self._procs[rid]
        info = self._infos[rid]
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"{info.url}/health"
        try:
            while not self._closed:
                code = proc.poll()
                if code is not None:
                    _CHILDREN.pop(proc.pid, None)
                    self._set(rid, state=ReplicaState.FAILED, exit_code=code,
                              reason=f"exited with {code}: {self._log_tail(rid)}")  # fmt: skip
                    self._settled[rid].set()
                    return
                if self._infos[rid].state == ReplicaState.STARTING:
                    if time.monotonic() > deadline:
                        await self._terminate(proc, 2.0)
                        why = f"not ready after {self.ready_timeout_s:g} s: {self._log_tail(rid)}"
                        self._set(rid, state=ReplicaState.FAILED, exit_code=proc.returncode, reason=why)
                        self._settled[rid].set()
                        return
                    try:
                        async with self._http().get(url) as resp:
                            if resp.status == 200:
                                self._set(rid, state=ReplicaState.READY, ready_at=time.time())
                                self._settled[rid].set()
                    except (TimeoutError, aiohttp.ClientError, OSError):
                        pass
                    await asyncio.sleep(self.health_interval_s)
                else:
                    await asyncio.sleep(max(self.health_interval_s, 0.2))
        except asyncio.CancelledError:
            raise

    async def _terminate(self, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        """SIGTERM the child's process group, SIGKILL after ``timeout_s``; always reap."""
        pg = proc.pid
        if proc.poll() is None:
            try:
                os.killpg(pg, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        # Kill whatever is left in the group (the child itself or anything it spawned).
        try:
            os.killpg(pg, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        while proc.poll() is None:
            await asyncio.sleep(0.01)
        _CHILDREN.pop(proc.pid, None)


def _child_env() -> dict[str, str]:
    """This environment, plus the directory holding ``xds_control`` on PYTHONPATH (for uninstalled checkouts)."""
    import xds_control

    root = str(Path(xds_control.__file__).resolve().parent.parent)
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    env["PYTHONUNBUFFERED"] = "1"
    env[PARENT_PID_ENV] = str(os.getpid())
    return env


def _merge(base: ReplicaOptions, over: ReplicaOptions | None) -> ReplicaOptions:
    if over is None:
        return base
    changes = {
        f: getattr(over, f)
        for f in ("load_delay_s", "slow_factor", "fail_rate", "max_num_seqs", "max_queue", "kv_capacity_tokens", "seed")
        if getattr(over, f) is not None
    }
    merged = replace(base, **changes)
    if over.extra_args:
        merged = replace(merged, extra_args=base.extra_args + over.extra_args)
    return merged
