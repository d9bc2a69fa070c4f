"""The ``admin:`` config section and service tenants: defaults, errors that name the key and never echo a token."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xds_control.admin.auth import Authenticator, admin_bind_problem
from xds_control.config import parse_config, to_traffic_plan
from xds_control.control.operator import OperatorState
from xds_control.core.errors import ConfigError
from xds_control.core.traffic import HealthStatus

SECRET = "supersecret-token-123456"


def test_defaults() -> None:
    cfg = parse_config({"services": [{"name": "s", "pools": [{"name": "p"}]}]})
    assert (cfg.admin.enabled, cfg.admin.address, cfg.admin.port, cfg.admin.tokens) == (True, "127.0.0.1", 18001, [])
    assert cfg.services[0].tenant == "default"
    assert admin_bind_problem(cfg) is None and Authenticator(cfg.admin).open


@pytest.mark.parametrize("admin,expected", [
    ({"tokens": [SECRET]}, "admin: tokens[0]: must be a mapping with name, token, tenant and role"),
    ({"tokens": SECRET}, "admin: tokens: must be a list"),
    ({"tokens": [{"name": "x", "token": SECRET[:10]}]}, "admin.tokens[0]: token: must be a string of at least 16"),
    ({"tokens": [{"name": "x", "token": SECRET + " x"}]}, "without spaces"),
    ({"tokens": [{"name": "x", "token": SECRET, "role": "boss"}]}, "admin.tokens[0].role: 'boss' is invalid"),
    ({"tokens": [{"name": "x", "token": SECRET, "tenant": "a b"}]}, "admin.tokens[0].tenant: 'a b' is invalid"),
    ({"tokens": [{"name": "x", "token": SECRET}, {"name": "y", "token": SECRET}]}, "two tokens have the same value"),
    ({"tokens": [{"name": "x", "token": SECRET}, {"name": "x", "token": SECRET + "1"}]}, "name 'x' is used twice"),
    ({"tls": {"cert": "/nonexistent.pem", "key": "/nonexistent.key"}}, "admin.tls: cert: '/nonexistent.pem'"),
    ({"address": "not-an-ip"}, "admin.address: 'not-an-ip' is invalid"),
    ({"port": 70000}, "admin.port: 70000 is invalid"),
])
def test_errors_name_the_key_and_never_echo_a_token(admin, expected) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"admin": admin})
    assert expected in str(ei.value)
    assert SECRET not in str(ei.value)


def test_tokens_file(tmp_path: Path) -> None:
    f = tmp_path / "tokens.yaml"
    f.write_text(yaml.safe_dump({"tokens": [{"name": "ops", "token": SECRET, "tenant": "*", "role": "admin"}]}))
    cfg = parse_config({"admin": {"tokens_file": str(f), "address": "0.0.0.0"}})
    assert [t.name for t in cfg.admin.all_tokens()] == ["ops"] and admin_bind_problem(cfg) is None
    auth = Authenticator(cfg.admin)
    assert not auth.open and str(auth.authenticate(f"Bearer {SECRET}")) == "ops (tenant *, admin)"
    assert auth.authenticate("Bearer nope") == "invalid token"
    f.write_text(yaml.safe_dump([{"name": "ops", "token": "short"}]))
    with pytest.raises(ConfigError) as ei:
        parse_config({"admin": {"tokens_file": str(f)}})
    assert f"tokens_file: '{f}' entry [0]: token: must be a string" in str(ei.value) and "short" not in \
        str(ei.value).split("entry [0]")[1]
    with pytest.raises(ConfigError, match="tokens_file: cannot read"):
        parse_config({"admin": {"tokens_file": str(tmp_path / "missing.yaml")}})


def test_open_beyond_loopback_is_refused_and_closed() -> None:
    cfg = parse_config({"admin": {"address": "10.1.2.3"}})
    assert "beyond loopback and no admin token" in (admin_bind_problem(cfg) or "")
    assert Authenticator(cfg.admin).authenticate(None) == "no admin token is configured; the admin API is closed"


def test_overlay_applies_per_pool_and_forgets_vanished_endpoints() -> None:
    cfg = parse_config({"services": [{"name": "s", "pools": [
        {"name": "a", "endpoints": [{"address": "127.0.0.1", "port": 1}, {"address": "127.0.0.1", "port": 2}]},
        {"name": "b", "endpoints": [{"address": "127.0.0.1", "port": 1}]}]}]})
    plan = to_traffic_plan(cfg)
    op = OperatorState(weights={("a", "127.0.0.1:1"): 7, ("a", "127.0.0.1:9"): 3}, drains={("b", "127.0.0.1:1")})
    out = op.apply(plan)
    got = {(p.name, e.key): (e.weight, e.health) for p in out.pools for e in p.endpoints}
    assert got == {("a", "127.0.0.1:1"): (7, HealthStatus.HEALTHY), ("a", "127.0.0.1:2"): (1, HealthStatus.HEALTHY),
                   ("b", "127.0.0.1:1"): (1, HealthStatus.DRAINING)}
    assert ("a", "127.0.0.1:9") not in op.weights  # vanished: forgotten
    assert OperatorState().apply(plan) is plan
