"""Cost frontiers: the interpolation at the attainment target (pure, on hand-made points), the point specs
built from the shipped presets, invalid points skipped with the reason, the comparison when nobody reaches
the target, and the frontier shape on a small synthetic surge (the same whatever the number of processes).
"""

from __future__ import annotations

import pytest

from xds_control.config.policy import resolve_policy
from xds_control.core.errors import SpecError
from xds_control.fleet.trace import surge
from xds_control.sim.frontier import (
    KNOBS,
    Frontier,
    default_values,
    fixed_sizes,
    gpu_hours_at,
    point_spec,
    run_frontiers,
    summarize,
)
from xds_control.sim.policies import POLICY_NAMES


def pts(*gh_att):
    return [{"value": i, "gpu_hours": g, "slo_attainment": a} for i, (g, a) in enumerate(gh_att)]


def test_interpolates_between_cheapest_above_and_most_attaining_below():
    p = pts((1.0, 0.5), (2.0, 0.95), (3.0, 0.999), (4.0, 1.0))
    assert gpu_hours_at(p, 0.99) == pytest.approx(2.0 + (0.99 - 0.95) / (0.999 - 0.95), abs=1e-4)


def test_interpolation_ignores_dearer_points_below_and_prefers_the_most_attaining():
    # (3.5, 0.97) is dearer than the cheapest point above: ignored; (1.5, 0.96) beats (2.0, 0.95)
    p = pts((2.0, 0.95), (1.5, 0.96), (3.0, 0.999), (3.5, 0.97), (1.0, 0.5))
    assert gpu_hours_at(p, 0.99) == pytest.approx(1.5 + 0.03 * 1.5 / 0.039, abs=1e-4)


def test_interpolation_edge_cases():
    assert gpu_hours_at(pts((1.0, 0.5), (2.0, 0.98)), 0.99) is None  # never reached
    assert gpu_hours_at(pts((1.0, 0.5), (2.0, 0.99), (3.0, 1.0)), 0.99) == 2.0  # hit exactly
    assert gpu_hours_at(pts((1.0, 0.995), (2.0, 1.0)), 0.99) == 1.0  # the cheapest point is already above
    assert gpu_hours_at([], 0.99) is None


def test_point_specs_come_from_the_shipped_presets():
    shipped = resolve_policy("threshold")
    t = point_spec("threshold", 1.2)
    assert t.l_high == 1.2 and t.l_low == pytest.approx(1.2 * shipped.l_low / shipped.l_high)
    assert t.load_index == shipped.load_index and t.cooldown_up_s == shipped.cooldown_up_s
    h = point_spec("hpa", 0.55)
    hs = resolve_policy("hpa")
    assert h.metrics[0].target == 0.55 and h.metrics[0].signal == hs.metrics[0].signal and h.behavior == hs.behavior
    assert point_spec("kpa", 12).target == 12
    c = point_spec("comprehensive", 0.6)
    assert c.target_utilization == 0.6 and c.traffic == resolve_policy("comprehensive").traffic
    with pytest.raises(SpecError, match="target_utilization"):
        point_spec("predictive", 4.5)
    with pytest.raises(ValueError, match="no knob"):
        point_spec("bogus", 1.0)


def test_invalid_points_are_skipped_with_the_reason():
    tr = surge(1, 2, duration_s=60, ramp_start_s=20, ramp_s=10, hold_s=10, seed=0)
    fr = run_frontiers(tr, ["predictive", "fixed"], values={"predictive": [0.8, 4.5], "fixed": [0, 2]}, workers=1)
    p = fr.frontiers["predictive"]
    assert [x["value"] for x in p.points] == [0.8]
    assert p.skipped[0]["value"] == 4.5 and "target_utilization" in p.skipped[0]["reason"]
    f = fr.frontiers["fixed"]
    assert [x["value"] for x in f.points] == [2] and f.skipped[0]["value"] == 0
    assert "skipped" in fr.policies_json()["predictive"]


def test_summary_compares_at_the_best_baselines_highest_attainment_when_nobody_reaches_the_target():
    fs = {
        "comprehensive": Frontier("comprehensive", "target_utilization", pts((1.0, 0.6), (2.0, 0.9))),
        "hpa": Frontier("hpa", "metrics[0].target", pts((1.5, 0.7), (3.0, 0.84))),
        "fixed": Frontier("fixed", "replicas", pts((1.0, 0.4), (4.0, 0.86))),
    }
    for f in fs.values():
        f.best_attainment = max(p["slo_attainment"] for p in f.points)
        f.gpu_hours_at_slo = gpu_hours_at(f.points, 0.99)
    s = summarize(fs, 0.99)
    assert s["reached_by"] == [] and s["common_attainment"] == 0.86 and s["best_baseline"] == "fixed"
    assert "no policy reaches" in s["note"] and "fixed" in s["note"]
    assert fs["fixed"].gpu_hours_at_common_attainment == 4.0
    assert fs["hpa"].gpu_hours_at_common_attainment is None
    assert fs["comprehensive"].gpu_hours_at_common_attainment == pytest.approx(1.0 + 0.26 / 0.3 * 1.0, abs=1e-4)
    assert s["subject_vs_best_baseline"] == pytest.approx(fs["comprehensive"].gpu_hours_at_common_attainment / 4.0,
                                                          abs=1e-4)
    assert "gpu_hours_at_common_attainment" in fs["hpa"].to_json(common=True)


def test_summary_at_the_target_when_reached():
    fs = {"comprehensive": Frontier("comprehensive", "k", pts((1.0, 0.995))),
          "hpa": Frontier("hpa", "k", pts((2.0, 0.999))), "kpa": Frontier("kpa", "k", pts((1.5, 0.98)))}
    for f in fs.values():
        f.gpu_hours_at_slo = gpu_hours_at(f.points, 0.99)
    s = summarize(fs, 0.99)
    assert s["common_attainment"] is None and s["reached_by"] == ["comprehensive", "hpa"]
    assert s["best_baseline"] == "hpa" and s["subject_vs_best_baseline"] == 0.5


def test_frontier_shape_on_a_small_surge_and_same_with_two_processes():
    tr = surge(1, 6, duration_s=240, ramp_start_s=60, ramp_s=30, hold_s=90, seed=1)
    sizes = fixed_sizes(tr)
    assert sizes[0] == 1 and len(sizes) >= 6 and sizes == sorted(sizes)
    kw = dict(values={"fixed": sizes, "comprehensive": [0.5, 0.7, 0.9, 1.0]}, speedup=1.0)
    one = run_frontiers(tr, ["comprehensive", "fixed"], workers=1, **kw)
    two = run_frontiers(tr, ["comprehensive", "fixed"], workers=2, **kw)
    assert one.policies_json() == two.policies_json() and one.summary == two.summary
    fixed = one.frontiers["fixed"].points
    assert [p["value"] for p in fixed] == sizes  # sorted by GPU-hours = by size
    g = [p["gpu_hours"] for p in fixed]
    a = [p["slo_attainment"] for p in fixed]
    assert all(x < y for x, y in zip(g, g[1:], strict=False))
    assert all(y >= x - 0.02 for x, y in zip(a, a[1:], strict=False))  # monotone-ish
    assert a[0] < 0.9 and a[-1] >= 0.99  # from too small to saturated
    for f in one.frontiers.values():
        assert f.gpu_hours_at_slo == gpu_hours_at(f.points, 0.99)
        gh = [p["gpu_hours"] for p in f.points]
        assert gh == sorted(gh)
        if f.gpu_hours_at_slo is not None:
            assert min(gh) <= f.gpu_hours_at_slo <= max(gh)
    comp = [p["slo_attainment"] for p in sorted(one.frontiers["comprehensive"].points, key=lambda p: -p["value"])]
    assert comp[-1] >= comp[0] - 0.02  # a lower target utilisation buys at least as much attainment


def test_bad_attainment_is_rejected():
    tr = surge(1, 2, duration_s=60, ramp_start_s=20, ramp_s=10, hold_s=10, seed=0)
    with pytest.raises(ValueError, match="attainment"):
        run_frontiers(tr, ["fixed"], attainment=1.5)


@pytest.mark.parametrize("name", [n for n in POLICY_NAMES if n != "fixed"])
def test_every_policy_has_a_knob_and_its_default_grid_validates(name):
    assert name in KNOBS
    vals = default_values(name)
    assert 6 <= len(vals) <= 10 and len(set(vals)) == len(vals)
    for v in vals:
        point_spec(name, v)  # raises if the shipped preset and the value do not combine


def test_upper_bound_flag_when_the_cheapest_point_already_meets_the_target():
    f = Frontier("comprehensive", "target_utilization", pts((3.76, 0.9921), (4.5, 0.9979)), attainment=0.99)
    f.gpu_hours_at_slo = gpu_hours_at(f.points, 0.99)
    assert f.gpu_hours_at_slo == 3.76 and f.to_json(common=False)["gpu_hours_at_slo_is_upper_bound"] is True
    g = Frontier("fixed", "replicas", pts((1.0, 0.5), (2.0, 0.999)), attainment=0.99)
    g.gpu_hours_at_slo = gpu_hours_at(g.points, 0.99)
    assert g.to_json(common=False)["gpu_hours_at_slo_is_upper_bound"] is False
    assert "gpu_hours_at_slo_is_upper_bound" not in Frontier("x", "k", pts((1.0, 0.5))).to_json(common=False)
