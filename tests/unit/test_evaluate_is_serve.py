"""What ``evaluate`` measures is what ``serve`` runs: the shipped preset files, through the same control step.

* the spec the simulator runs for ``--policy NAME`` is the very spec ``serve`` resolves for a pool with
  ``autoscale.policy: NAME`` -- and equals the shipped file ``xds_control/config/presets/NAME.yaml``;
* ``xds-control evaluate --policy threshold`` on azure2023_conv_w0 gives exactly what replaying that file
  (read here independently) gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.cli import command_app
from xds_control.cli import evaluate as cli_evaluate
from xds_control.config import parse_config
from xds_control.config.policy import PRESET_DIR, load_policy_file
from xds_control.fleet.trace import load_trace
from xds_control.policies import POLICIES
from xds_control.sim import policies as pol
from xds_control.sim.adapter import StepController
from xds_control.sim.engine import SimConfig, preroll_for, simulate
from xds_control.sim.metrics import compute_metrics

TRACE = Path(__file__).resolve().parents[2].parent / "shared" / "traces" / "azure2023_conv_w0.csv"


def serve_spec(name: str):
    cfg = parse_config({
        "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
        "services": [{"name": "llm", "pools": [{"name": "llm", "autoscale": {"policy": name}}]}],
    })
    autoscale = cfg.services[0].pools[0].autoscale
    assert autoscale is not None
    return autoscale.spec


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_the_simulator_runs_the_spec_serve_resolves(name: str) -> None:
    ctl = pol.make_controller(name)
    assert isinstance(ctl, StepController)
    shipped = load_policy_file(PRESET_DIR / f"{name}.yaml")
    assert ctl.spec == serve_spec(name) == shipped
    assert ctl.tick_s == parse_config({"listeners": [], "services": []}).controller.tick_s


@pytest.mark.skipif(not TRACE.is_file(), reason=f"real trace {TRACE} not present (see ../shared/traces/README.md)")
def test_evaluate_threshold_on_conv_w0_is_the_shipped_file() -> None:
    app = command_app(cli_evaluate.register)
    r = CliRunner().invoke(app, ["evaluate", "--trace", str(TRACE), "--policy", "threshold", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["policies"]["threshold"]
    spec = load_policy_file(PRESET_DIR / "threshold.yaml")
    replay = compute_metrics(simulate(load_trace(TRACE), StepController(spec, name="threshold"),
                                          SimConfig(seed=0, preroll_s=preroll_for(load_trace(TRACE)))))
    assert got == json.loads(json.dumps(replay))


def test_the_presets_shedding_reaches_the_simulated_pool_through_the_plan() -> None:
    """comprehensive ships ``traffic.shed_prefill_backlog_s``: the plan's ``PoolPlan.shed`` (what the snapshot turns
    into Envoy's retry on 429) is what the simulated fleet sheds with; without it, nothing is shed."""
    import numpy as np

    from xds_control.config.policy import merge_overrides
    from xds_control.fleet.trace import Trace
    from xds_control.policies import load_policy_spec

    # long prompts (8,000 tokens: 1.44 s of prefill) arriving faster than one replica prefills them
    t = np.arange(0.0, 120.0, 0.4)
    tr = Trace("long", t, np.full(t.size, 8000, dtype=np.int64), np.full(t.size, 16, dtype=np.int64))
    shipped = serve_spec("comprehensive")
    assert shipped.traffic.shed_prefill_backlog_s == 0.5 and shipped.traffic.shed_attempts == 5
    on = simulate(tr, StepController(shipped, lb="least_request"), SimConfig(seed=0))
    data = load_policy_file(PRESET_DIR / "comprehensive.yaml").model_dump(mode="json")
    off_spec = load_policy_spec(merge_overrides(data, {"traffic": {"shed_prefill_backlog_s": None}}))
    off = simulate(tr, StepController(off_spec, lb="least_request"), SimConfig(seed=0))
    assert on.shed_retries > 0 and off.shed_retries == 0
    m_on, m_off = compute_metrics(on), compute_metrics(off)
    assert m_on["tasks_lost"] == 0
    assert m_on["shed_retries"] == on.shed_retries
    # a long prompt no longer waits behind another one's prefill while a replica is free
    assert m_on["ttft_p90_ms"] < m_off["ttft_p90_ms"]
