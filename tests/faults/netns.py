"""Network namespaces for the partition scenarios: a host that stops answering, not one that refuses.

:class:`Netns` creates a namespace and a veth pair with a private /30 (``10.213.X.1`` on the root side,
``10.213.X.2`` inside), runs processes in it and relays TCP across it (``relay.py``). :meth:`Netns.cut` drops
every packet both ways on the pair (a ``pfifo`` qdisc of length 0 on each end: this kernel has no netem, no
tc classifiers and no iptables; a zero-length queue drops everything it is given, so a SYN times out and an
open connection goes silent, exactly as behind a DROP rule); :meth:`Netns.heal` removes it. Everything it
creates is removed on exit. Only addresses in the /30 it creates are ever used.

:func:`unavailable` says why this machine cannot run them (not root, no ``ip``/``tc``, namespaces forbidden),
or ``None``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

from harness import ROOT, child_env

_seq = itertools.count()
RELAY = Path(__file__).resolve().parent / "relay.py"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    try:
        with Netns("probe") as ns:
            ns.cut()
            ns.heal()
    except (subprocess.CalledProcessError, OSError) as e:
        err = getattr(e, "stderr", "") or str(e)
        return f"this machine forbids network namespaces or zero-length qdiscs: {err.strip()[:200]}"
    return None


class Netns:
    def __init__(self, tag: str) -> None:
        n = next(_seq)
        self.name = f"xdsf-{os.getpid()}-{n}-{tag}"
        self.host_if = f"xf{os.getpid() % 100000}h{n}"[:15]
        self.ns_if = f"xf{os.getpid() % 100000}n{n}"[:15]
        used = _ip("-4", "-o", "addr").stdout
        x = next(x for x in range((os.getpid() * 7 + n) % 200, 256) if f"10.213.{x}." not in used)
        self.host_addr, self.ns_addr = f"10.213.{x}.1", f"10.213.{x}.2"
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self.is_cut = False

    def __enter__(self) -> Netns:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            self.exec_ip("addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            self.exec_ip("link", "set", self.ns_if, "up")
            self.exec_ip("link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            if p.stdout is not None:
                p.stdout.close()
        for f in self._logs:
            f.close()
        _ip("link", "del", self.host_if, check=False)  # deletes its peer too
        _ip("netns", "del", self.name, check=False)

    def exec_ip(self, *args: str) -> None:
        _ip("netns", "exec", self.name, "ip", *args)

    def _tc(self, inside: bool, *args: str) -> None:
        cmd = ["tc", "qdisc", *args]
        if inside:
            cmd = ["ip", "netns", "exec", self.name, *cmd]
        subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=10)

    def cut(self) -> None:
        """Drop every packet both ways (nothing is refused or reset: connections just go silent)."""
        self._tc(False, "add", "dev", self.host_if, "root", "pfifo", "limit", "0")
        self._tc(True, "add", "dev", self.ns_if, "root", "pfifo", "limit", "0")
        self.is_cut = True

    def heal(self) -> None:
        self._tc(False, "del", "dev", self.host_if, "root")
        self._tc(True, "del", "dev", self.ns_if, "root")
        self.is_cut = False

    def spawn(self, argv: list[str], log: Path, inside: bool = True) -> subprocess.Popen[bytes]:
        """Start ``argv`` (in the namespace unless ``inside`` is false); stopped on exit. stdout is a pipe."""
        f = open(log, "ab")
        self._logs.append(f)
        cmd = ["ip", "netns", "exec", self.name, *argv] if inside else argv
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, env=child_env(), cwd=ROOT)
        self.procs.append(p)
        return p

    def relay(self, listen: tuple[str, int], target: tuple[str, int], log: Path, inside: bool) -> None:
        """A TCP relay ``listen -> target`` (in the namespace or in the root one); returns once it listens."""
        p = self.spawn([sys.executable, str(RELAY), listen[0], str(listen[1]), target[0], str(target[1])], log,
                       inside=inside)
        assert p.stdout is not None
        line = p.stdout.readline().decode()
        if not line.startswith("listening"):
            raise RuntimeError(f"relay {listen} -> {target} did not start; see {log}")

    def through(self, target_port: int, log: Path) -> int:
        """A loopback port whose connections cross the namespace to ``127.0.0.1:target_port``: root relay
        (127.0.0.1) -> relay in the namespace -> root relay on the root end of the pair -> the target. While
        :meth:`cut`, connecting to it succeeds and then nothing comes back."""
        from support.ports import free_port

        back, inside, front = free_port(), 17000 + next(_seq), free_port()
        self.relay((self.host_addr, back), ("127.0.0.1", target_port), log, inside=False)
        self.relay((self.ns_addr, inside), (self.host_addr, back), log, inside=True)
        self.relay(("127.0.0.1", front), (self.ns_addr, inside), log, inside=False)
        return front
