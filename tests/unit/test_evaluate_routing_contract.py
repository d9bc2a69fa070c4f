"""The command-line contract of routing comparisons (outside checks rely on it):

``xds-control evaluate --trace FILE --policy NAME@rr,NAME@lr,NAME@prefix,NAME@gie,NAME@oracle --json`` selects the
routing per entry; FILE may be a CSV or .csv.gz with a ``hash_ids`` column; each entry's object has
``prefix_cache_hit_rate``, ``ttft_p50_ms``, ``ttft_p90_ms``, ``ttft_p99_ms``, ``hotspot_ratio_p99`` and
``slo_attainment``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from typer.testing import CliRunner

from tests.support.cli import command_app
from xds_control.cli import evaluate as cli_evaluate
from xds_control.fleet.trace import SharedPrefixShape, as_requests, shared_prefix, write_trace

ENTRIES = ["comprehensive@rr", "comprehensive@lr", "comprehensive@prefix", "comprehensive@gie",
           "comprehensive@oracle"]
KEYS = ("prefix_cache_hit_rate", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "hotspot_ratio_p99", "slo_attainment")


def run(args: list[str]) -> dict:  # type: ignore[type-arg]
    app = command_app(cli_evaluate.register)
    r = CliRunner().invoke(app, ["evaluate", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_routing_per_entry_on_a_gzipped_trace_with_hash_ids(tmp_path: Path) -> None:
    tr = shared_prefix(SharedPrefixShape(duration_s=120.0), seed=3)
    plain = tmp_path / "shared.csv"
    write_trace(plain, as_requests(tr))
    gz = tmp_path / "shared.csv.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    doc = run(["--trace", str(gz), "--policy", ",".join(ENTRIES), "--json"])
    pol = doc["policies"]
    assert list(pol) == ENTRIES
    for name in ENTRIES:
        assert all(k in pol[name] for k in KEYS), name
        assert 0.0 <= pol[name]["prefix_cache_hit_rate"] <= 1.0
    assert pol["comprehensive@rr"]["lb"] == "round_robin" and pol["comprehensive@prefix"]["lb"] == "prefix"
    # on a shared-prefix workload, affinity and the oracle hit the cache more than round robin
    assert pol["comprehensive@prefix"]["prefix_cache_hit_rate"] > pol["comprehensive@rr"]["prefix_cache_hit_rate"]
    assert pol["comprehensive@oracle"]["prefix_cache_hit_rate"] > pol["comprehensive@rr"]["prefix_cache_hit_rate"]


def test_without_hash_ids_the_cache_keys_are_null(tmp_path: Path) -> None:
    tr = shared_prefix(SharedPrefixShape(duration_s=60.0), seed=1).without_hash_ids()
    p = tmp_path / "plain.csv"
    write_trace(p, as_requests(tr))
    doc = run(["--trace", str(p), "--policy", "comprehensive@lr,comprehensive@prefix", "--json"])
    for m in doc["policies"].values():
        assert m["prefix_cache_hit_rate"] is None and m["slo_attainment"] is not None
