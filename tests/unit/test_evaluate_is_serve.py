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
import typer
from typer.testing import CliRunner

from xds_control.cli import evaluate as cli_evaluate
from xds_control.config import parse_config
from xds_control.config.policy import PRESET_DIR, load_policy_file
from xds_control.fleet.trace import load_trace
from xds_control.policies import POLICIES
from xds_control.sim import policies as pol
from xds_control.sim.adapter import StepController
from xds_control.sim.engine import SimConfig, simulate
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
    app = typer.Typer(add_completion=False)
    cli_evaluate.register(app)

    @app.callback()
    def _root() -> None:
        pass

    r = CliRunner().invoke(app, ["evaluate", "--trace", str(TRACE), "--policy", "threshold", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["policies"]["threshold"]
    spec = load_policy_file(PRESET_DIR / "threshold.yaml")
    replay = compute_metrics(simulate(load_trace(TRACE), StepController(spec, name="threshold"), SimConfig(seed=0)))
    assert got == json.loads(json.dumps(replay))
