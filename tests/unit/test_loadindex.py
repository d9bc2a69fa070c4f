"""Load index: the seed formula, normalization, missing terms, stale-as-saturated, localities, EWMA, frames."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xds_control.core.errors import SpecError
from xds_control.core.model import EndpointSample, SignalFrame
from xds_control.loadindex import LoadIndexSpec, compute_load, ewma, parse_load_index_spec

SEED = LoadIndexSpec(alpha=0.5, beta=0.2, gamma=0.3, latency_target_s=0.2, ewma_half_life_s=0)


def frame(n=1, **cols):
    return SignalFrame.from_arrays([f"e{i}:1" for i in range(n)], **cols)


@pytest.mark.parametrize(
    "gpu,cpu,lat,expected",
    [
        (0.8, 0.5, 0.1, 0.5 * 0.8 + 0.2 * 0.5 + 0.3 * 0.5),  # D_net = 0.1 / 0.2
        (1.0, 1.0, 0.2, 1.0),  # every term at its limit
        (0.0, 0.0, 0.0, 0.0),
        (1.0, 1.0, 10.0, 0.5 + 0.2 + 0.3 * 2.0),  # latency term clipped at term_cap 2
    ],
)
def test_seed_formula_per_endpoint(gpu, cpu, lat, expected):
    rep = compute_load(frame(gpu_util=gpu, cpu_util=cpu, latency_s=lat, taken_at=0.0), SEED, now=1.0)
    assert rep.endpoint[0] == pytest.approx(expected)
    assert rep.service == pytest.approx(expected)
    assert not rep.stale[0]


def test_missing_terms_renormalize_over_present_weights():
    rep = compute_load(frame(gpu_util=0.6, taken_at=0.0), SEED, now=0.0)  # only the GPU term present
    assert rep.endpoint[0] == pytest.approx(0.6)


@pytest.mark.parametrize(
    "taken_at,now,stale",
    [(0.0, 10.0, False), (0.0, 10.01, True), (float("nan"), 1e9, False)],
    ids=["at-limit-fresh", "older-than-limit-stale", "untimed-is-fresh"],
)
def test_staleness_limit(taken_at, now, stale):
    rep = compute_load(frame(gpu_util=0.1, cpu_util=0.1, latency_s=0.01, taken_at=taken_at), SEED, now=now)
    assert bool(rep.stale[0]) is stale
    if stale:
        assert rep.endpoint[0] == SEED.stale_load == 1.0


def test_stale_and_absent_samples_count_as_saturated_never_idle():
    f = SignalFrame.from_samples(
        {
            "idle:1": EndpointSample(gpu_util=0.0, cpu_util=0.0, latency_s=0.0, taken_at=100.0),
            "old:1": EndpointSample(gpu_util=0.0, cpu_util=0.0, latency_s=0.0, taken_at=0.0),
            "none:1": None,
            "empty:1": EndpointSample(taken_at=100.0),
        }
    )
    rep = compute_load(f, SEED, now=100.0)
    assert rep.endpoint.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert rep.stale.tolist() == [False, True, True, True]
    assert rep.n_stale_ready == 3
    assert rep.service == pytest.approx(0.75)
    assert rep.stale_keys(f.keys) == ("old:1", "none:1", "empty:1")


def test_queue_and_kv_terms_extend_the_index():
    spec = LoadIndexSpec(alpha=0.2, beta=0.2, gamma=0.2, queue_weight=0.2, kv_weight=0.2, ewma_half_life_s=0)
    rep = compute_load(frame(gpu_util=0.5, cpu_util=0.5, latency_s=0.1, waiting=10, kv_cache=0.4, taken_at=0), spec, 0)
    # terms: 0.5, 0.5, 0.5, 10/5=2.0, 0.4/0.8=0.5
    assert rep.endpoint[0] == pytest.approx(0.2 * (0.5 + 0.5 + 0.5 + 2.0 + 0.5))
    assert dict(rep.terms)["queue"] == pytest.approx(2.0)


def test_service_and_locality_means_use_ready_endpoints_only():
    f = SignalFrame.from_arrays(
        ["a:1", "b:1", "c:1", "d:1"],
        gpu_util=[0.2, 0.4, 0.9, 1.0],
        taken_at=0.0,
        ready=[True, True, True, False],
        locality=[0, 0, 1, 1],
        localities=("r/z1/", "r/z2/"),
    )
    rep = compute_load(f, LoadIndexSpec(alpha=1.0, beta=0.0, gamma=0.0), now=0.0)
    assert rep.service == pytest.approx((0.2 + 0.4 + 0.9) / 3)
    assert rep.locality == (("r/z1/", pytest.approx(0.3), 2), ("r/z2/", pytest.approx(0.9), 1))
    assert rep.n_ready == 3


def test_no_ready_endpoints_gives_nan_service_index():
    rep = compute_load(frame(2, gpu_util=0.5, ready=False, taken_at=0.0), SEED, now=0.0)
    assert math.isnan(rep.service)
    assert rep.locality == ()


def test_weights_must_sum_to_one_and_error_names_values():
    with pytest.raises(SpecError) as e:
        parse_load_index_spec({"alpha": 0.6, "beta": 0.6, "gamma": 0.3})
    msg = str(e.value)
    assert "alpha + beta + gamma" in msg and "0.6 + 0.6 + 0.3" in msg and "1.5" in msg


@pytest.mark.parametrize(
    "data,key,fragment",
    [
        ({"alpha": -0.1, "beta": 0.8, "gamma": 0.3}, "alpha", "0.0 <= alpha <= 1.0"),
        ({"staleness_s": 0}, "staleness_s", "0.0 < staleness_s"),
        ({"stale_load": 0.5}, "stale_load", "1.0 <= stale_load"),
        ({"bogus": 1}, "bogus", "unknown key"),
    ],
)
def test_spec_errors_name_key_value_and_range(data, key, fragment):
    with pytest.raises(SpecError) as e:
        parse_load_index_spec(data)
    msg = str(e.value)
    assert key in msg and fragment in msg


@pytest.mark.parametrize(
    "prev,prev_t,value,now,hl,expected",
    [
        (None, None, 0.8, 5.0, 10.0, 0.8),  # first value passes through
        (0.0, 0.0, 1.0, 10.0, 10.0, 0.5),  # one half-life: halfway
        (0.0, 0.0, 1.0, 20.0, 10.0, 0.75),  # two half-lives
        (0.3, 0.0, 1.0, 5.0, 0.0, 1.0),  # smoothing off
        (0.3, 0.0, float("nan"), 5.0, 10.0, 0.3),  # NaN keeps the previous value
    ],
)
def test_ewma_is_time_based(prev, prev_t, value, now, hl, expected):
    assert ewma(prev, prev_t, value, now, hl) == pytest.approx(expected)


def test_frame_copies_writable_inputs_and_is_read_only():
    gpu = np.array([0.1, 0.2])
    f = frame(2, gpu_util=gpu, taken_at=0.0)
    gpu[0] = 0.99
    assert f.gpu_util[0] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        f.gpu_util[0] = 0.5
    rep = compute_load(f, SEED, 0.0)
    with pytest.raises(ValueError):
        rep.endpoint[0] = 0.0


def test_frame_rejects_bad_columns():
    with pytest.raises(ValueError, match="unknown sample columns"):
        frame(1, gpu=0.5)
    with pytest.raises(ValueError, match="shape"):
        frame(2, gpu_util=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="locality index"):
        frame(1, locality=3)


def test_in_flight_is_running_plus_waiting_with_missing_as_zero():
    f = frame(3, running=[3, np.nan, np.nan], waiting=[2, 4, np.nan])
    assert f.in_flight[:2].tolist() == [5.0, 4.0]
    assert math.isnan(f.in_flight[2])
