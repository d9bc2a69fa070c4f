"""``evaluate --config``: the what-if replay of a real serve config, the new options' errors, and ``--frontier``.

* examples/autoscale.yaml: its pool replays the spec the loader resolved (preset + overrides), at the config's
  tick, on the pool's profile with its load_delay_s as cold start -- equal to a direct replay of that spec --
  next to the alternatives; the report names the resolved policy and where it came from;
* a pool whose policy is a YAML file, with ``controller.tick_s: 2``;
* a config with no autoscaled pool, an invalid config, and bad SLO / frontier options exit 2 naming the option
  and the value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from tests.support.cli import command_app
from xds_control.cli import evaluate as cli_evaluate
from xds_control.config import load_config
from xds_control.fleet import costmodel as cm
from xds_control.fleet.trace import HEADER, load_trace, surge
from xds_control.sim.engine import SimConfig, preroll_for, simulate
from xds_control.sim.metrics import compute_metrics
from xds_control.sim.policies import make_controller

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "autoscale.yaml"
MINIMAL = ROOT / "examples" / "minimal.yaml"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    return command_app(cli_evaluate.register)


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory) -> Path:
    tr = surge(1, 4, duration_s=120, ramp_start_s=30, ramp_s=20, hold_s=40, seed=0)
    p = tmp_path_factory.mktemp("trace") / "small.csv"
    with open(p, "w") as fh:
        fh.write(",".join(HEADER) + "\n")
        for t, i, o in np.column_stack([tr.t, tr.input_tokens, tr.output_tokens]):
            fh.write(f"{t:.6f},{int(i)},{int(o)}\n")
    return p


def run(app, *args):
    return CliRunner().invoke(app, ["evaluate", *map(str, args)])


def test_example_config_replays_its_resolved_pool_next_to_alternatives(app, small_trace, tmp_path):
    out = tmp_path / "out"
    r = run(app, "--config", EXAMPLE, "--trace", small_trace, "--policy", "fixed,hpa", "--json", "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["config"] == str(EXAMPLE) and doc["tick_s"] == 1.0 and len(doc["pools"]) == 1
    pool = doc["pools"][0]
    assert (pool["service"], pool["pool"], pool["name"]) == ("llm", "llm", "llm/llm")
    assert pool["policy"] == "comprehensive" and pool["kind"] == "preset"
    assert pool["source"].endswith("presets/comprehensive.yaml")
    assert pool["overrides"]["max_replicas"] == 6 and pool["lb"] == "least_request"
    assert pool["cold_start_s"] == 3.0 and pool["profile"] == "llama3-8b-48gb"
    assert list(pool["policies"]) == ["llm/llm", "fixed", "hpa"]
    # the pool's column is exactly a replay of the spec the loader resolved
    cfg = load_config(EXAMPLE)
    spec = cfg.services[0].pools[0].autoscale.spec
    assert spec.max_replicas == 6 and spec.min_replicas == 2
    ctl = make_controller("comprehensive@lr", spec=spec, tick_s=cfg.controller.tick_s)
    ctl.name = "llm/llm"
    prof = cm.get_profile("llama3-8b-48gb").with_(cold_start_s=3.0)
    tr = load_trace(small_trace)
    replay = compute_metrics(simulate(tr, ctl, SimConfig(profile=prof, preroll_s=preroll_for(tr))))
    assert pool["policies"]["llm/llm"] == json.loads(json.dumps(replay))
    assert pool["policies"]["llm/llm"]["replicas_max"] <= 6
    assert (out / "small.whatif.json").is_file() and (out / "small.llm-llm.png").stat().st_size > 1000
    table = run(app, "--config", EXAMPLE, "--trace", small_trace, "--policy", "fixed")
    assert table.exit_code == 0, table.output
    assert "policy comprehensive from preset" in table.output and "llm/llm" in table.output
    assert "SLO attainment" in table.output


def test_policy_file_and_tick_from_the_config(app, small_trace, tmp_path):
    pol = tmp_path / "mine.yaml"
    pol.write_text("policy: predictive\nmin_replicas: 1\nmax_replicas: 3\ntarget_utilization: 0.7\n")
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["services"][0]["pools"][0]["autoscale"] = {"policy": str(pol), "overrides": {"max_replicas": 4}}
    cfg["services"][0]["pools"][0]["lb_policy"] = "round_robin"
    cfg["controller"]["tick_s"] = 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run(app, "--config", path, "--trace", small_trace, "--policy", "fixed", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    pool = doc["pools"][0]
    assert doc["tick_s"] == 2.0 and pool["kind"] == "file" and pool["source"] == str(pol)
    assert pool["policy"] == "predictive" and pool["lb"] == "round_robin" and pool["cold_start_s"] == 20.0
    spec = load_config(path).services[0].pools[0].autoscale.spec
    ctl = make_controller("predictive@rr", spec=spec, tick_s=2.0)
    ctl.name = "llm/llm"
    assert spec.max_replicas == 4 and ctl.tick_s == 2.0
    tr = load_trace(small_trace)
    replay = compute_metrics(simulate(tr, ctl, SimConfig(preroll_s=preroll_for(tr))))
    assert pool["policies"]["llm/llm"] == json.loads(json.dumps(replay))


def test_config_without_autoscaled_pool_exits_2(app, small_trace):
    r = run(app, "--config", MINIMAL, "--trace", small_trace)
    assert r.exit_code == 2 and "--config" in r.output and str(MINIMAL) in r.output
    assert "no autoscaled pool" in r.output


def test_invalid_config_exits_2_with_the_loaders_message(app, small_trace, tmp_path):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["services"][0]["pools"][0]["autoscale"]["overrides"]["target_utilization"] = 7
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = run(app, "--config", path, "--trace", small_trace)
    assert r.exit_code == 2 and "--config" in r.output and "target_utilization" in r.output and "7" in r.output
    r = run(app, "--config", tmp_path / "missing.yaml", "--trace", small_trace)
    assert r.exit_code == 2 and "missing.yaml" in r.output and "cannot read" in r.output


@pytest.mark.parametrize(
    "args,option,value",
    [
        (["--slo-ttft-s", "0"], "--slo-ttft-s", "0.0"),
        (["--slo-ttft-s", "-1"], "--slo-ttft-s", "-1.0"),
        (["--slo-ttft-slack-s", "-0.5"], "--slo-ttft-slack-s", "-0.5"),
        (["--slo-ttft-s", "2", "--slo-ttft-slack-s", "0.5"], "--slo-ttft-slack-s", "0.5"),
        (["--slo-tpot-ms", "0"], "--slo-tpot-ms", "0.0"),
        (["--slo-tpot-ms", "nan"], "--slo-tpot-ms", "nan"),
        (["--attainment", "1.5"], "--attainment", "1.5"),
        (["--attainment", "0"], "--attainment", "0.0"),
        (["--workers", "3"], "--workers", "3"),
        (["--preroll-s", "-1"], "--preroll-s", "-1.0"),
        (["--preroll-s", "4000"], "--preroll-s", "4000.0"),
        (["--frontier", "--config", str(EXAMPLE)], "--config", str(EXAMPLE)),
    ],
)
def test_bad_new_options_exit_2_naming_option_and_value(app, small_trace, args, option, value):
    r = run(app, "--trace", small_trace, *args)
    assert r.exit_code == 2, r.output
    assert option in r.output and value in r.output


def test_preroll_flag_reaches_the_simulation(app, small_trace):
    """--preroll-s 0 is the trace alone from the warm start; the default replays its first third (<= 300 s) first."""
    tr = load_trace(small_trace)
    none = run(app, "--trace", small_trace, "--policy", "comprehensive", "--json", "--preroll-s", "0")
    dflt = run(app, "--trace", small_trace, "--policy", "comprehensive", "--json")
    assert none.exit_code == dflt.exit_code == 0
    n, d = json.loads(none.stdout), json.loads(dflt.stdout)
    assert n["preroll_s"] == 0 and d["preroll_s"] == 300
    ctl = make_controller("comprehensive")
    assert n["policies"]["comprehensive"] == json.loads(json.dumps(compute_metrics(simulate(tr, ctl, SimConfig()))))
    ctl = make_controller("comprehensive")
    pre = compute_metrics(simulate(tr, ctl, SimConfig(preroll_s=preroll_for(tr))))
    assert d["policies"]["comprehensive"] == json.loads(json.dumps(pre))
    assert d["policies"]["comprehensive"]["requests"] == n["policies"]["comprehensive"]["requests"] == len(tr.t)


def test_slo_flags_reach_the_metrics(app, small_trace):
    loose = run(app, "--trace", small_trace, "--policy", "fixed", "--json", "--slo-ttft-s", "1000",
                "--slo-tpot-ms", "100000")
    tight = run(app, "--trace", small_trace, "--policy", "fixed", "--json", "--slo-tpot-ms", "1")
    slack = run(app, "--trace", small_trace, "--policy", "fixed", "--json", "--slo-ttft-slack-s", "0.25")
    assert loose.exit_code == tight.exit_code == slack.exit_code == 0
    lo, ti, sl = (json.loads(x.stdout)["policies"]["fixed"] for x in (loose, tight, slack))
    assert lo["slo_ttft_s"] == 1000 and lo["slo_tpot_ms"] == 100000
    assert lo["slo_attainment"] == pytest.approx(1 - lo["task_loss_rate"])
    assert ti["slo_attainment"] < 0.05  # no decode step is under 1 ms
    assert sl["slo_ttft_slack_s"] == 0.25 and sl["slo_attainment"] <= lo["slo_attainment"]


def test_frontier_cli(app, small_trace, tmp_path):
    out = tmp_path / "f"
    r = run(app, "--trace", small_trace, "--frontier", "--policy", "comprehensive,fixed", "--json", "--out", out,
            "--workers", "1")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["attainment_target"] == 0.99 and doc["summary"]["attainment_target"] == 0.99
    assert set(doc["policies"]) == {"comprehensive", "fixed"}
    for f in doc["policies"].values():
        assert 6 <= len(f["frontier"]) <= 16
        gh = [p["gpu_hours"] for p in f["frontier"]]
        assert gh == sorted(gh) and set(f["frontier"][0]) == {"value", "gpu_hours", "slo_attainment"}
        assert "gpu_hours_at_slo" in f and "best_attainment" in f
    assert doc["policies"]["fixed"]["frontier"][0]["value"] == 1
    assert (out / "small.frontier.json").is_file() and (out / "small.frontier.png").stat().st_size > 1000
    t = run(app, "--trace", small_trace, "--frontier", "--policy", "fixed", "--workers", "1", "--attainment", "0.9")
    assert t.exit_code == 0, t.output
    assert "GPU-h at 90 %" in t.output and "simulations in" in t.output
