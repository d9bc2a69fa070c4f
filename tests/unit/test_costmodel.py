"""The replica cost model: hand-computed values, validation, array friendliness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xds_control.fleet import costmodel as cm


def test_default_profile_numbers():
    p = cm.DEFAULT_PROFILE
    assert p is cm.get_profile("llama3-8b-48gb")
    assert cm.prefill_time_s(p, 2048) == pytest.approx(0.36864)
    assert cm.decode_step_time_s(p, 1) == pytest.approx(0.0244)
    assert cm.decode_step_time_s(p, 256) == pytest.approx(0.024 + 0.1024)
    # ~2000 output tok/s at the maximum batch
    assert 1800 < 256 / cm.decode_step_time_s(p, 256) < 2200


def test_step_time_combines_decode_and_prefill():
    p = cm.DEFAULT_PROFILE
    assert cm.step_time_s(p, 0) == 0.0
    assert cm.step_time_s(p, 0, 1000) == pytest.approx(0.18)
    assert cm.step_time_s(p, 4, 1000) == pytest.approx(0.18 + 0.024 + 0.0016)


def test_kv_fit():
    p = cm.ReplicaProfile(kv_capacity_tokens=100)
    assert cm.fits_kv_cache(p, 0, 60, 40)
    assert not cm.fits_kv_cache(p, 1, 60, 40)
    assert cm.kv_tokens(3, 4) == 7


def test_gpu_utilization_model():
    p = cm.ReplicaProfile(reference_batch=10, util_decode_floor=0.5)
    assert cm.gpu_utilization(p, 0) == 0.0
    assert cm.gpu_utilization(p, 10) == pytest.approx(1.0)
    assert cm.gpu_utilization(p, 5) == pytest.approx(0.75)
    assert cm.gpu_utilization(p, 0, prefill_fraction=1.0) == 1.0
    assert cm.gpu_utilization(p, 5, prefill_fraction=0.5) == pytest.approx(0.875)
    assert cm.gpu_utilization(p, 1000) == pytest.approx(1.0)


def test_work_and_capacity():
    p = cm.ReplicaProfile(prefill_s_per_token=0.001, decode_base_s=0.02, decode_per_seq_s=0.0, reference_batch=2)
    # 100 prompt tokens = 0.1 s, 10 output tokens = 9 decode tokens at 0.01 s each
    assert cm.request_work_s(p, 100, 10) == pytest.approx(0.19)
    assert cm.request_work_s(p, 100, 0) == pytest.approx(0.1)
    assert cm.capacity_rps(p, 100, 10) == pytest.approx(1 / 0.19)
    arr = cm.request_work_s(p, np.array([100, 200]), np.array([1, 11]))
    assert arr == pytest.approx([0.1, 0.3])
    ttft, total = cm.isolated_latency_s(p, 100, 10)
    assert (ttft, total) == (pytest.approx(0.1), pytest.approx(0.1 + 9 * 0.02))


def test_power():
    p = cm.DEFAULT_PROFILE
    assert cm.power_w(p, 0) == p.idle_power_w
    assert cm.power_w(p, 1) == p.max_power_w
    assert cm.power_w(p.with_(gpus=2), 0.5) == pytest.approx(2 * (80 + 135))


@pytest.mark.parametrize(
    "field,value",
    [("max_batch", 0), ("decode_base_s", 0.0), ("prefill_s_per_token", -1.0), ("queue_bound", -1),
     ("cold_start_s", math.nan), ("util_decode_floor", 2.0)],
)
def test_profile_validation(field, value):
    with pytest.raises(ValueError, match=field):
        cm.DEFAULT_PROFILE.with_(**{field: value})


def test_unknown_profile_names_known_ones():
    with pytest.raises(KeyError, match="llama3-8b-48gb"):
        cm.get_profile("nope")
    assert set(cm.PROFILES) >= {"llama3-8b-48gb", "slow-start", "tiny"}
