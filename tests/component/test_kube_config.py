"""The kubernetes: config section: validated with the rest of the file, errors name the key and value."""

from __future__ import annotations

from typing import Any

import pytest

from xds_control.config import parse_config
from xds_control.core.errors import ConfigError


def cfg(**kube: Any) -> dict[str, Any]:
    return {
        "services": [{"name": "llm", "pools": [
            {"name": "llm-v1", "autoscale": {"policy": "threshold"}},
            {"name": "static", "endpoints": [{"address": "127.0.0.1", "port": 9000}]},
        ]}],
        "kubernetes": {"pools": {"llm-v1": {"deployment": "llm-v1"}}, **kube},
    }


def test_defaults() -> None:
    k = parse_config(cfg()).kubernetes
    assert k is not None
    assert k.pools["llm-v1"].service_name == "llm-v1" and k.pools["llm-v1"].port == 8000
    le = k.leader_election
    assert (le.enabled, le.lease_name, le.lease_duration_s, le.renew_deadline_s, le.retry_period_s) == \
        (True, "xds-control", 15.0, 10.0, 2.0)  # client-go's defaults


@pytest.mark.parametrize("change, words", [
    ({"pools": {"llm-v1": {"deployment": "llm-v1"}, "static": {"deployment": "s"}}}, ["static", "autoscale"]),
    ({"pools": {"nope": {"deployment": "x"}, "llm-v1": {"deployment": "llm-v1"}}}, ["nope", "not a pool"]),
    ({"pools": {}}, ["llm-v1", "missing"]),
    ({"pools": {"llm-v1": {"deployment": "LLM_v1"}}}, ["deployment", "LLM_v1"]),
    ({"leader_election": {"lease_duration_s": 5, "renew_deadline_s": 5}}, ["renew_deadline_s", "lease_duration_s"]),
    ({"namespce": "x"}, ["namespce"]),
])
def test_errors_name_the_key_and_value(change: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(cfg(**change))
    for w in words:
        assert w in str(e.value), str(e.value)
