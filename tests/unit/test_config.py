"""Config validation: the README's minimal file, and errors that name key, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xds_control.config import load_config, parse_config, parse_text, to_traffic_plan
from xds_control.core.errors import ConfigError
from xds_control.core.traffic import LbPolicy, Locality

MINIMAL = Path(__file__).resolve().parents[2] / "examples" / "minimal.yaml"


def minimal() -> dict:
    return yaml.safe_load(MINIMAL.read_text())


def test_minimal_example_becomes_the_expected_plan() -> None:
    plan = to_traffic_plan(load_config(MINIMAL))
    assert [(l.name, l.address, l.port, l.services) for l in plan.listeners] == [
        ("ingress", "127.0.0.1", 10000, ("llm",))
    ]
    (svc,) = plan.services
    assert svc.pools == (("llm-v1", 80), ("llm-v2", 20)) and svc.hosts == ("*",) and svc.prefix == "/"
    v1 = plan.pool("llm-v1")
    assert v1 is not None and v1.lb_policy is LbPolicy.ROUND_ROBIN
    assert [(e.port, e.locality) for e in v1.endpoints] == [
        (18101, Locality(zone="zone-a")), (18102, Locality(zone="zone-b"))
    ]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["services"][0]["pools"][0].update(weight=-5),
         "services[0].pools[0].weight: -5 is invalid: Input should be greater than or equal to 0"),
        (lambda c: c["services"][0]["pools"][0]["endpoints"][0].update(port=70000),
         "services[0].pools[0].endpoints[0].port: 70000 is invalid"),
        (lambda c: c["services"][0]["pools"][0]["endpoints"][0].update(address="llm.local"),
         "must be an IPv4 or IPv6 address, got 'llm.local'"),
        (lambda c: c["services"][0]["pools"][0].update(wieght=3),
         "services[0].pools[0].wieght: unknown key"),
        (lambda c: c["services"][0]["pools"][1].update(name="llm-v1"),
         "pools: name 'llm-v1' is used twice"),
        (lambda c: c["listeners"][0].update(services=["nope"]),
         "listeners[0].services: 'nope' is not a service"),
        (lambda c: [p.update(weight=0) for p in c["services"][0]["pools"]],
         "at least one pool needs a weight above 0"),
        (lambda c: c["services"][0].update(prefix="v1"), "services[0].prefix: 'v1' is invalid: must start with '/'"),
        (lambda c: c["services"][0].update(regex="(unclosed"), "is not a valid regular expression"),
        (lambda c: c.update(xds={"debounce_ms": 500, "max_delay_ms": 100}),
         "max_delay_ms (100.0) must be >= debounce_ms (500.0)"),
        (lambda c: c["services"][0]["pools"][0]["endpoints"].append(
            {"address": "127.0.0.1", "port": 18101}), "127.0.0.1:18101 is listed twice"),
        (lambda c: c["services"].append({**c["services"][0], "name": "other",
                                         "pools": [{"name": "o1", "endpoints": []}],
                                         "hosts": ["*", "a.example"]}),
         "host '*' is in the hosts of services 'llm' and 'other'"),
        (lambda c: c["listeners"][0].pop("port"), "listeners[0].port: required key is missing"),
    ],
)
def test_invalid_values_are_named(mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    cfg = minimal()
    mutate(cfg)
    with pytest.raises(ConfigError) as e:
        parse_config(cfg, "cfg.yaml")
    assert expected in str(e.value)
    assert str(e.value).startswith("cfg.yaml: ")


def test_not_yaml_and_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_text("listeners: [", "x.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        parse_text("- a\n- b\n", "x.yaml")


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.yaml")


def test_services_sharing_hosts_share_one_virtual_host() -> None:
    cfg = minimal()
    cfg["services"].append({"name": "embed", "prefix": "/v1/embeddings",
                            "pools": [{"name": "emb", "endpoints": [{"address": "127.0.0.1", "port": 18200}]}]})
    plan = to_traffic_plan(parse_config(cfg))
    assert plan.listeners[0].services == ("llm", "embed")
