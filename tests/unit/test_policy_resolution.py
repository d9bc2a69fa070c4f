"""One resolution path for a pool's policy: preset or file + overrides -> validated spec,
with the origin of every key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xds_control.config import parse_config
from xds_control.config.policy import (
    PRESET_DIR,
    merge_overrides,
    parse_set_options,
    resolve_policy,
    resolve_policy_provenance,
)
from xds_control.core.errors import ConfigError, SpecError


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _origins(r: Any) -> dict[str, str]:
    return {k.key: k.origin for k in r.keys}


def test_preset_keys_come_from_the_preset_file_and_absent_keys_from_the_class_defaults() -> None:
    r = resolve_policy_provenance("threshold")
    assert r.kind == "preset" and r.source == str(PRESET_DIR / "threshold.yaml")
    o = _origins(r)
    assert o["policy"] == "preset"
    assert o["l_high"] == "preset" and r.spec.l_high == 0.8
    # null in the file is the file's value, not the class default
    assert o["gpu_mem_trigger"] == "preset" and r.spec.gpu_mem_trigger is None
    assert o["load_index.alpha"] == "preset" and r.spec.load_index.alpha == 0.35
    assert o["load_index.queue_weight"] == "default"
    assert o["traffic.weighting"] == "preset" and o["traffic.weight_scale"] == "default"
    assert o["traffic.outlier.consecutive_5xx"] == "default"  # no outlier section in the threshold preset
    assert set(o.values()) == {"preset", "default"}


def test_every_leaf_key_of_the_spec_is_listed_once_with_its_value() -> None:
    for name in ("threshold", "predictive", "comprehensive", "hpa", "kpa"):
        r = resolve_policy_provenance(name)
        keys = [k.key for k in r.keys]
        assert len(keys) == len(set(keys)), name
        assert {k.key: k.value for k in r.keys} == _leaves(r.spec.model_dump(mode="json")), name
        js = r.to_json()
        assert js["policy"] == name and js["spec"] == r.spec.model_dump(mode="json")
        assert js["keys"][0] == {"key": "policy", "value": name, "from": "preset"}


def test_user_file_keys_are_file_and_absent_ones_default(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("policy: threshold\nl_high: 0.7\ntraffic:\n  outlier:\n    consecutive_5xx: 3\n")
    r = resolve_policy_provenance(str(f))
    assert r.kind == "file" and r.source == str(f)
    o = _origins(r)
    assert o["l_high"] == "file" and r.spec.l_high == 0.7
    assert o["traffic.outlier.consecutive_5xx"] == "file" and r.spec.traffic.outlier.consecutive_5xx == 3
    assert o["traffic.outlier.interval_s"] == "default"
    assert o["l_low"] == "default"  # the class default, not the threshold preset's 0.4
    assert "preset" not in o.values()


def test_overrides_are_merged_key_by_key_into_nested_sections() -> None:
    over = {"max_replicas": 8, "load_index": {"alpha": 0.2, "gamma": 0.35},
            "traffic": {"outlier": {"consecutive_5xx": 7}}}
    r = resolve_policy_provenance("comprehensive", over)
    o, s = _origins(r), r.spec
    assert (o["max_replicas"], s.max_replicas) == ("override", 8)
    assert (o["load_index.alpha"], s.load_index.alpha) == ("override", 0.2)
    assert (o["load_index.beta"], s.load_index.beta) == ("preset", 0.1)  # sibling kept from the preset
    assert (o["traffic.outlier.consecutive_5xx"], s.traffic.outlier.consecutive_5xx) == ("override", 7)
    assert (o["traffic.outlier.failure_percentage_threshold"], s.traffic.outlier.failure_percentage_threshold) \
        == ("preset", 85)
    assert o["traffic.outlier.interval_s"] == "default"
    assert (o["traffic.ramp_window_s"], s.traffic.ramp_window_s) == ("preset", 60)
    assert over == {"max_replicas": 8, "load_index": {"alpha": 0.2, "gamma": 0.35},
                    "traffic": {"outlier": {"consecutive_5xx": 7}}}  # input untouched
    assert resolve_policy("comprehensive", over) == s


def test_override_replacing_a_section_with_null() -> None:
    r = resolve_policy_provenance("comprehensive", {"traffic": {"outlier": None}})
    assert r.spec.traffic.outlier is None
    o = _origins(r)
    assert o["traffic.outlier"] == "override"
    assert not any(k.startswith("traffic.outlier.") for k in o)


def test_merge_overrides_is_nested_and_pure() -> None:
    base = {"a": 1, "s": {"x": 1, "y": 2}, "n": None}
    over = {"s": {"y": 3}, "n": {"z": 1}, "b": 2}
    assert merge_overrides(base, over) == {"a": 1, "s": {"x": 1, "y": 3}, "n": {"z": 1}, "b": 2}
    assert base == {"a": 1, "s": {"x": 1, "y": 2}, "n": None}
    assert merge_overrides(base, {"s": 5})["s"] == 5


def test_bad_override_names_the_key_the_value_and_the_range() -> None:
    with pytest.raises(SpecError) as e:
        resolve_policy_provenance("threshold", {"load_index": {"alpha": 5}})
    (p,) = e.value.problems
    assert p.key == "load_index.alpha" and p.value == 5 and "alpha <= 1" in (p.allowed or "")
    assert "load_index.alpha = 5" in str(e.value) and "threshold.yaml" in str(e.value)
    with pytest.raises(SpecError, match="policy = 'nope': neither a preset nor a readable YAML file"):
        resolve_policy_provenance("nope")


def test_pool_autoscale_keeps_the_resolution() -> None:
    cfg = parse_config({"services": [{"name": "llm", "pools": [{"name": "p", "autoscale": {
        "policy": "threshold", "overrides": {"max_replicas": 8, "load_index": {"alpha": 0.3, "gamma": 0.4}}}}]}]})
    a = cfg.services[0].pools[0].autoscale
    assert a is not None
    assert a.spec is a.resolved.spec  # the object the resolution returned, kept
    assert a.spec is a.spec
    assert a.spec == resolve_policy("threshold", a.overrides)
    assert a.spec.max_replicas == 8 and a.spec.load_index.alpha == 0.3 and a.spec.load_index.beta == 0.15
    assert a.resolved.origin("max_replicas") == "override" and a.resolved.origin("l_high") == "preset"
    with pytest.raises(KeyError):
        a.resolved.origin("load_index")  # a section, not a key
    assert "_resolved" not in cfg.model_dump()["services"][0]["pools"][0]["autoscale"]


def test_invalid_override_in_the_config_names_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"services": [{"name": "llm", "pools": [{"name": "p", "autoscale": {
            "policy": "threshold", "overrides": {"load_index": {"alpha": 5}}}}]}]})
    assert "services[0].pools[0].autoscale: policy 'threshold'" in str(e.value)
    assert "load_index.alpha = 5: Input should be less than or equal to 1 (allowed: 0.0 <= alpha <= 1.0)" \
        in str(e.value)


def test_set_options_parse_yaml_values_into_nested_overrides() -> None:
    assert parse_set_options(["max_replicas=8", "load_index.alpha=0.3", "gpu_mem_trigger=null",
                              "traffic.local_locality=us/a/", "traffic.locality_order=[b, c]", "x="]) == {
        "max_replicas": 8, "load_index": {"alpha": 0.3}, "gpu_mem_trigger": None,
        "traffic": {"local_locality": "us/a/", "locality_order": ["b", "c"]}, "x": ""}
    for bad in (["max_replicas"], ["=1"], ["a..b=1"], ["traffic=1", "traffic.x=2"], ["t.x=1", "t=2"]):
        with pytest.raises(SpecError):
            parse_set_options(bad)
    with pytest.raises(SpecError, match="'max_replicas': is not KEY=VALUE"):
        parse_set_options(["max_replicas"])
