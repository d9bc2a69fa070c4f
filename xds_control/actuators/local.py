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
  SIGKILL) — except with a ``state_path`` (below). Ctrl-C raises KeyboardInterrupt in the parent; children
  live in their own session, so the terminal's SIGINT does not reach them and the
  parent's shutdown (``close()`` or ``atexit``) stops them.

With a ``state_path`` (``serve`` keeps one beside its config) the replicas outlive a parent that dies
without shutting down (SIGKILL, a crash), so a restarted control plane takes the fleet over instead of
losing it:

* the scaler rewrites the state file (replica id, pid, process start time, port, pool, profile, options,
  log directory; temp file + fsync + rename) whenever a replica starts or stops;
* :meth:`adopt`, called once before the controller starts, reads it and takes over every replica whose
  pid is alive and is the same process (its start time), whose process group is its own, and which answers
  ``GET /health`` on its port with its own name in ``x-xds-replica``: ``ready`` if the answer is 200,
  ``starting`` otherwise. Every other entry is dropped from the file;
* replicas get no ``PR_SET_PDEATHSIG`` but ``--orphan-grace-s`` (``orphan_grace_s``, 60 s): each stops by
  itself when no control plane has contacted it for that long. The scaler's health checks carry the
  ``x-xds-control-plane`` header, and it keeps checking ready replicas every ``min(2, grace/4)`` s, so a
  replica is never left running long after its control plane died for good;
* a clean shutdown (``close()``) still stops every replica, adopted ones included.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import aiohttp

from xds_control.actuators.base import ReplicaFailed, ReplicaInfo, ReplicaOptions, ReplicaState
from xds_control.fleet.replica.server import CONTROL_PLANE_HEADER, REPLICA_HEADER

__all__ = ["LocalScaler", "kill_all_children"]

log = logging.getLogger(__name__)

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
        state_path: keep the replica state file here and let replicas outlive this process (see the module
            docstring); None: replicas die with it.
        orphan_grace_s: with ``state_path``, a replica stops by itself after this long without contact.
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
        state_path: str | os.PathLike[str] | None = None,
        orphan_grace_s: float = 60.0,
    ) -> None:
        if not orphan_grace_s > 0:
            raise ValueError(f"orphan_grace_s must be > 0 seconds, got {orphan_grace_s}")
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
        self.state_path = Path(state_path) if state_path is not None else None
        self.orphan_grace_s = orphan_grace_s
        self._seq = itertools.count(1)
        self._infos: dict[str, ReplicaInfo] = {}
        self._procs: dict[str, subprocess.Popen[bytes] | _Adopted] = {}
        #: replica id -> its process's start time (``_proc_start``), kept in the state file.
        self._proc_starts: dict[str, int | None] = {}
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
            if self.state_path is not None:
                args += ["--orphan-grace-s", f"{self.orphan_grace_s:g}"]
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
                    env=_child_env(die_with_parent=self.state_path is None),
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
        self._proc_starts[rid] = _proc_start(proc.pid)
        self._track(info, proc)
        self._save_state()
        return info

    def _track(self, info: ReplicaInfo, proc: subprocess.Popen[bytes] | _Adopted) -> None:
        rid = info.id
        self._procs[rid] = proc
        self._infos[rid] = info
        self._settled[rid] = asyncio.Event()
        if info.state == ReplicaState.READY:
            self._settled[rid].set()
        self._monitors[rid] = asyncio.get_running_loop().create_task(self._monitor(rid), name=f"replica-monitor-{rid}")
        self._emit(info)

    async def adopt(self) -> builtins.list[ReplicaInfo]:
        """Take over the replicas listed in the state file that are still running (see the module docstring).

        Call once, before starting replicas. Returns the adopted ones; stale entries are logged and dropped.
        A missing file adopts nothing; an unreadable or malformed one is logged and ignored.
        """
        if self.state_path is None or self._closed:
            return []
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.warning("replica state %s ignored, it cannot be read: %s", self.state_path, e)
            data = None
        entries = data.get("replicas") if isinstance(data, dict) else None
        if not isinstance(entries, builtins.list):
            if data is not None:
                log.warning("replica state %s ignored: no 'replicas' list", self.state_path)
            entries = []
        if isinstance(data, dict):
            self._take_log_dir(data.get("log_dir"))
        checked = await asyncio.gather(*(self._check_entry(e) for e in entries))
        adopted: builtins.list[ReplicaInfo] = []
        for entry, (info, why) in zip(entries, checked, strict=True):
            if info is None or info.id in self._infos:
                rid = entry.get("id") if isinstance(entry, dict) else entry
                log.info("replica state %s: dropped %r: %s", self.state_path, rid, why or "duplicate id")
                continue
            assert info.pid is not None
            self._proc_starts[info.id] = _proc_start(info.pid)
            _CHILDREN[info.pid] = info.pid
            self._track(info, _Adopted(info.pid, self._proc_starts[info.id]))
            adopted.append(info)
            log.info("adopted replica %s (pid %d, %s, %s)", info.id, info.pid, info.key, info.state.value)
        numbers = [int(r.id.rsplit("-", 1)[1]) for r in adopted if r.id.rsplit("-", 1)[-1].isdigit()]
        self._seq = itertools.count(max(numbers, default=0) + 1)
        self._save_state()
        return adopted

    async def _check_entry(self, e: Any) -> tuple[ReplicaInfo | None, str]:
        """The entry as a ReplicaInfo if it is a live replica that answers under its own name, else why not."""
        if not isinstance(e, dict):
            return None, f"not an object: {e!r}"
        rid, pid, port, pool = e.get("id"), e.get("pid"), e.get("port"), e.get("pool")
        if not (isinstance(rid, str) and rid and isinstance(pool, str) and isinstance(pid, int) and pid > 1
                and isinstance(port, int) and 0 < port < 65536):
            return None, "malformed entry (needs id, pool, pid and port)"
        now_start = _proc_start(pid)
        if now_start is None:
            return None, f"pid {pid} is gone"
        if e.get("proc_start") is not None and now_start != e.get("proc_start"):
            return None, f"pid {pid} is another process now"
        try:
            if os.getpgid(pid) != pid:
                return None, f"pid {pid} does not lead its own process group"
        except OSError:
            return None, f"pid {pid} is gone"
        url = f"http://127.0.0.1:{port}/health"
        status, name, err = 0, None, ""
        for _ in range(3):  # a replica busy under load may be slow to answer once
            try:
                async with self._http().get(url, timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                    status, name = resp.status, resp.headers.get(REPLICA_HEADER)
                    break
            except (TimeoutError, aiohttp.ClientError, OSError) as ex:
                err = str(ex) or type(ex).__name__
        if not status:
            return None, f"no answer on {url}: {err}"
        if name != rid:
            return None, f"{url} answers as {name!r}, not {rid!r}"
        opts = e.get("options")
        try:
            options = ReplicaOptions(**{**opts, "extra_args": tuple(opts.get("extra_args") or ())}) \
                if isinstance(opts, dict) else ReplicaOptions()
        except TypeError:  # a field this version does not know
            options = ReplicaOptions()
        ready = status == 200
        started = e.get("started_at")
        return ReplicaInfo(
            id=rid, pool=pool, profile=str(e.get("profile") or ""), address="127.0.0.1", port=port, pid=pid,
            state=ReplicaState.READY if ready else ReplicaState.STARTING,
            started_at=float(started) if isinstance(started, (int, float)) else time.time(),
            ready_at=time.time() if ready else None, options=options,
        ), ""

    def _take_log_dir(self, recorded: object) -> None:
        """Keep writing logs where the previous scaler did (its temporary log directory), removed by close()."""
        if not self._own_log_dir or not isinstance(recorded, str):
            return
        old = Path(recorded)
        if old == self.log_dir or not old.name.startswith("xds-replicas-") or not old.is_dir():
            return
        shutil.rmtree(self.log_dir, ignore_errors=True)
        self.log_dir = old

    def _save_state(self) -> None:
        """Atomically replace the state file with the replicas this scaler has now (no-op without one)."""
        if self.state_path is None:
            return
        entries = [
            {"id": i.id, "pid": i.pid, "proc_start": self._proc_starts.get(i.id), "port": i.port, "pool": i.pool,
             "profile": i.profile, "started_at": i.started_at, "options": asdict(i.options)}
            for i in self._infos.values() if i.pid is not None
        ]
        data = {"version": 1, "scaler_pid": os.getpid(), "log_dir": str(self.log_dir), "replicas": entries}
        try:
            _atomic_write(self.state_path, json.dumps(data, indent=1) + "\n")
        except OSError as e:
            log.error("cannot save the replica state to %s: %s; a restart will not adopt these replicas",
                      self.state_path, e.strerror or e)

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
        self._proc_starts.pop(replica_id, None)
        ev = self._settled.pop(replica_id, None)
        if ev is not None:
            ev.set()
        self._save_state()

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
                headers={CONTROL_PLANE_HEADER: str(os.getpid())},  # resets the replicas' orphan timers
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
        beat_s = min(2.0, self.orphan_grace_s / 4)
        next_beat = time.monotonic() + beat_s
        try:
            while not self._closed:
                if not _running(proc):
                    code = proc.returncode
                    _CHILDREN.pop(proc.pid, None)
                    how = f"exited with {code}" if code is not None else "exited (adopted: exit status unknown)"
                    self._set(rid, state=ReplicaState.FAILED, exit_code=code,
                              reason=f"{how}: {self._log_tail(rid)}")  # fmt: skip
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
                    if self.state_path is not None and time.monotonic() >= next_beat:
                        next_beat = time.monotonic() + beat_s
                        with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                            async with self._http().get(url) as resp:  # contact: keeps it from orphaning itself
                                await resp.read()
                    await asyncio.sleep(max(self.health_interval_s, 0.2))
        except asyncio.CancelledError:
            raise

    async def _terminate(self, proc: subprocess.Popen[bytes] | _Adopted, timeout_s: float) -> None:
        """SIGTERM the child's process group, SIGKILL after ``timeout_s``; always reap (init reaps adopted ones)."""
        pg = proc.pid
        if _running(proc):
            try:
                os.killpg(pg, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout_s
            while _running(proc) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        # Kill whatever is left in the group (the child itself or anything it spawned).
        if isinstance(proc, subprocess.Popen) or _running(proc):  # never signal a group whose leader was reaped
            try:
                os.killpg(pg, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 5.0
        while _running(proc) and (isinstance(proc, subprocess.Popen) or time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        _CHILDREN.pop(proc.pid, None)


class _Adopted:
    """A replica an earlier scaler started: not our child, so no exit status (init reaps it)."""

    returncode: int | None = None

    def __init__(self, pid: int, proc_start: int | None) -> None:
        self.pid = pid
        self.proc_start = proc_start

    def running(self) -> bool:
        now = _proc_start(self.pid)
        return now is not None and (self.proc_start is None or now == self.proc_start)


def _running(proc: subprocess.Popen[bytes] | _Adopted) -> bool:
    return proc.running() if isinstance(proc, _Adopted) else proc.poll() is None


def _proc_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux ``/proc``); None if it is gone or a
    zombie. Elsewhere 0 for any live pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if not stat:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a part (and it is on
    disk before the rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _child_env(die_with_parent: bool = True) -> dict[str, str]:
    """This environment, plus the directory holding ``xds_control`` on PYTHONPATH (for uninstalled checkouts);
    ``die_with_parent`` asks the replica for ``PR_SET_PDEATHSIG``."""
    import xds_control

    root = str(Path(xds_control.__file__).resolve().parent.parent)
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    env["PYTHONUNBUFFERED"] = "1"
    if die_with_parent:
        env[PARENT_PID_ENV] = str(os.getpid())
    else:
        env.pop(PARENT_PID_ENV, None)
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
