"""``python -m xds_control.fleet.replica --port N [--profile NAME] ...`` (same flags as ``xds-control replica``)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

from xds_control.fleet.costmodel import DEFAULT_PROFILE, PROFILES
from xds_control.fleet.replica.server import ReplicaConfig, run


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m xds_control.fleet.replica", description=__doc__)
    ap.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port; printed)")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    ap.add_argument("--profile", default=DEFAULT_PROFILE.name, help=f"cost-model profile: {', '.join(PROFILES)}")
    ap.add_argument("--name", default="", help="replica name in the x-xds-replica header (default host:port)")
    ap.add_argument("--load-delay", type=float, default=None,
                    help="seconds before /health is 200 (default: profile cold_start_s)")
    ap.add_argument("--slow-factor", type=float, default=1.0, help="multiply every step time")
    ap.add_argument("--fail-rate", type=float, default=0.0, help="fraction of requests answered 500")
    ap.add_argument("--max-num-seqs", type=int, default=None, help="running batch limit (default: profile max_batch)")
    ap.add_argument("--max-queue", type=int, default=None, help="waiting queue bound (default: profile queue_bound)")
    ap.add_argument("--kv-capacity-tokens", type=int, default=None, help="KV cache tokens (default: profile)")
    ap.add_argument("--seed", type=int, default=None, help="seed for --fail-rate draws")
    ap.add_argument("--orphan-grace-s", type=float, default=0.0,
                    help="stop after this many seconds without control-plane contact (0: never)")
    ap.add_argument("--sock-fd", type=int, default=None, help=argparse.SUPPRESS)
    return ap


def config_from_args(argv: list[str] | None = None) -> ReplicaConfig:
    ap = build_parser()
    a = ap.parse_args(argv)
    cfg = ReplicaConfig(
        port=a.port, host=a.host, profile=a.profile, name=a.name, load_delay_s=a.load_delay,
        slow_factor=a.slow_factor, fail_rate=a.fail_rate, max_num_seqs=a.max_num_seqs,
        max_queue=a.max_queue, kv_capacity_tokens=a.kv_capacity_tokens, seed=a.seed, sock_fd=a.sock_fd,
        orphan_grace_s=a.orphan_grace_s,
    )  # fmt: skip
    errs = cfg.validate()
    if errs:
        ap.error("; ".join(f"{opt} {msg}" for opt, msg in errs))  # exits 2
    return cfg


def die_with_parent() -> None:
    """Exit when the process that started us (a LocalScaler) dies, however it dies (Linux).

    Only when the scaler asked for it (``XDS_CONTROL_PARENT_PID``); a scaler with a state file leaves it
    unset, so its replicas outlive it and stop by themselves after ``--orphan-grace-s`` instead.
    """
    parent = os.environ.get("XDS_CONTROL_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    die_with_parent()
    run(config_from_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
