"""The end-to-end surge (tests/support/kube_surge.py) on the real cluster and on tests/fakekube, side by side.

    .venv/bin/python bench/bench_kube_surge.py [--runs 3]

Each run is one surge on each API server, alternating (fake, real, fake, real, ...): a real Envoy, ``ControlPlane``
with the Kubernetes scaler and leader election, a Deployment of one pod that the comprehensive policy scales to up
to three and back, emulated replicas on the pods. Prints, per API server, the medians over all runs of: the scale
decision → the new pod Ready, pod Ready → Envoy has the endpoint healthy, the decision → Envoy has had an answer
from the pod, a drained pod's removal → Envoy no longer has it; and requests, failures, pods at most.

The real cluster needs what ``make test-k8s`` needs (the binaries in .cache/k8s/bin, etcd, ``unshare`` and ``ip``):
the script re-runs itself in a private network namespace with the pod network routed to ``lo``, as
tests/k8s/run.sh does. Exits 1 if a request failed or a surge did not scale up and back down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from k8s.cluster import Cluster, PodReplicas, unavailable  # noqa: E402

from support.kube_surge import PROFILE, fake_world, real_world, run_surge  # noqa: E402

FIGURES = ("decision_to_ready_s", "ready_to_envoy_s", "decision_to_serving_s", "drain_to_removed_s")


def reexec_in_netns() -> None:
    """Run this script again in a private network namespace whose ``lo`` carries the pod network."""
    cmd = ["unshare", "--net", "--", "sh", "-c",
           'ip link set lo up && ip route add local 10.244.0.0/16 dev lo && exec "$@"', "sh",
           sys.executable, *sys.argv, "--in-netns"]
    os.execvp(cmd[0], cmd)


async def main(runs: int) -> int:
    logging.disable(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-kube-surge-"))
    out: dict[str, list[dict[str, Any]]] = {"fakekube": [], "real cluster": []}
    (tmp / "cluster").mkdir()
    with Cluster(tmp / "cluster") as cluster:
        print(f"real cluster: kube-apiserver {cluster.version}", flush=True)
        for i in range(runs):
            with fake_world(tmp / f"fake-{i}") as fw:
                out["fakekube"].append(await run_surge(fw, node=f"fake-{i}"))
            print(f"run {i + 1} fakekube: {json.dumps(out['fakekube'][-1])}", flush=True)
            ns = cluster.namespace()
            rw = real_world(cluster, ns, cluster.kubeconfig(tmp / f"admin-{i}.kubeconfig", cluster.admin_token))
            reps = PodReplicas(cluster, ns, "--profile", PROFILE)
            try:
                out["real cluster"].append(await run_surge(rw, node=f"real-{i}"))
            finally:
                reps.stop()
            print(f"run {i + 1} real cluster: {json.dumps(out['real cluster'][-1])}", flush=True)
    print(f"\n{runs} runs each; seconds, median [min-max] over every scale-up or scale-down of the runs")
    print(f"| figure | {' | '.join(out)} |")
    print("|---|" + "---:|" * len(out))
    for name in FIGURES:
        cells = []
        for figs in out.values():
            # each run's medians are over its own events; pool the per-run medians' ranges
            vals = [f[name] for f in figs if f[name]]
            if not vals:
                cells.append("—")
                continue
            med = statistics.median(v["median"] for v in vals)
            cells.append(f"{med:.2f} [{min(v['min'] for v in vals):.2f}-{max(v['max'] for v in vals):.2f}]")
        print(f"| {name} | {' | '.join(cells)} |")
    for key in ("requests", "failed", "scale_ups", "scale_downs", "pods_max"):
        print(f"| {key} | {' | '.join('/'.join(str(f[key]) for f in figs) for figs in out.values())} |")
    bad = [f for figs in out.values() for f in figs
           if f["failed"] or not f["scale_ups"] or not f["scale_downs"] or f["never_served"]]
    return 1 if bad else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    why = unavailable()
    if why is not None and not args.in_netns and "pod network" in why:
        reexec_in_netns()
    if why is not None and (args.in_netns or "pod network" not in why):
        sys.exit(f"bench_kube_surge: the real cluster cannot run here: {unavailable()}")
    sys.exit(asyncio.run(main(args.runs)))
