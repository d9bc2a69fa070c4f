"""``xds-control evaluate``: argument validation (exit 2 naming option and value), JSON shape, files.

Also replays a real trace window from ../shared/traces when it is present (skipped otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tests.support.cli import command_app
from xds_control.cli import evaluate as cli_evaluate
from xds_control.fleet.trace import HEADER, surge

TRACES = Path(__file__).resolve().parents[2].parent / "shared" / "traces"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return command_app(cli_evaluate.register)


@pytest.fixture()
def small_trace(tmp_path: Path) -> Path:
    tr = surge(1, 4, duration_s=120, ramp_start_s=30, ramp_s=20, hold_s=40, seed=0)
    p = tmp_path / "small.csv"
    rows = np.column_stack([tr.t, tr.input_tokens, tr.output_tokens])
    with open(p, "w") as fh:
        fh.write(",".join(HEADER) + "\n")
        for t, i, o in rows:
            fh.write(f"{t:.6f},{int(i)},{int(o)}\n")
    return p


def run(app, *args):
    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


@pytest.mark.parametrize(
    "args,option,value",
    [
        (["--trace", "/nonexistent.csv"], "--trace", "/nonexistent.csv"),
        (["--policy", "bogus"], "--policy", "bogus"),
        (["--speedup", "0"], "--speedup", "0.0"),
        (["--speedup", "-2"], "--speedup", "-2.0"),
        (["--failure-at", "-1"], "--failure-at", "-1.0"),
        (["--failure-at", "1e6"], "--failure-at", "1000000.0"),
        (["--failure-scope", "rack"], "--failure-scope", "rack"),
        (["--profile", "nope"], "--profile", "nope"),
    ],
)
def test_invalid_input_exits_2_naming_option(app, small_trace, args, option, value):
    base = ["--trace", small_trace] if args[0] != "--trace" else []
    res = run(app, *base, *args)
    assert res.exit_code == 2
    out = res.output
    assert option in out and value in out


def test_bad_header_exits_2(app, tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b,c\n1,2,3\n")
    res = run(app, "--trace", p)
    assert res.exit_code == 2 and "--trace" in res.output and "header" in res.output


def test_json_output_and_files(app, small_trace, tmp_path):
    out = tmp_path / "out"
    res = run(app, "--trace", small_trace, "--policy", "fixed,fixed@lr", "--json", "--seed", "3", "--out", out,
              "--failure-at", "60")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["trace"] == "small" and set(doc["policies"]) == {"fixed", "fixed@lr"}
    m = doc["policies"]["fixed"]
    for k in ("trigger_delay_s_mean", "latency_p99_ms", "gpu_util_mean", "hotspot_ratio_p99", "recovery_s",
              "task_loss_rate", "gpu_hours", "scaling_actions_per_min_max", "replicas_max"):
        assert k in m
    assert m["recovery_s"] is not None
    assert (out / "small.json").is_file() and (out / "small.png").stat().st_size > 1000
    again = run(app, "--trace", small_trace, "--policy", "fixed,fixed@lr", "--json", "--seed", "3",
                "--failure-at", "60")
    assert json.loads(again.stdout) == doc  # deterministic for a seed


def test_table_output(app, small_trace):
    res = run(app, "--trace", small_trace, "--policy", "fixed", "--speedup", "2")
    assert res.exit_code == 0, res.output
    assert "Trigger delay" in res.output and "Task loss" in res.output


def test_real_trace_window(app):
    p = TRACES / "azure2023_code_w0.csv"
    if not p.is_file():
        pytest.skip(f"real traces not present at {TRACES} (see ../shared/traces/README.md)")
    res = run(app, "--trace", p, "--policy", "fixed,hpa", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["policies"]["fixed"]["requests"] == 2598
