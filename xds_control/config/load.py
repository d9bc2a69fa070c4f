"""Reading a config file and turning it into a :class:`~xds_control.core.traffic.TrafficPlan`.

``load_config`` does the I/O (one file read) and raises :class:`ConfigError` whose
message names every offending key path, value and expectation, e.g.::

    services[0].pools[1].weight: -5 is invalid: Input should be greater than or equal to 0

YAML is read with libyaml (``yaml.CSafeLoader``, about 5x faster than the pure-Python
loader on a 10,000-endpoint file); its syntax errors get the same line, column and
source snippet as the pure-Python loader's. Nothing here touches shared state, so
``parse_text`` may run in a worker thread (the config watcher does).

``to_traffic_plan`` is pure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from xds_control.config.schema import Config, PoolConfig, PrefixRoutingConfig, ServiceConfig
from xds_control.core.errors import ConfigError
from xds_control.core.traffic import (
    EndpointPlan,
    LbPolicy,
    ListenerPlan,
    Locality,
    OutlierDetectionPlan,
    PoolPlan,
    PrefixRoutingPlan,
    RetryPlan,
    ServicePlan,
    TrafficPlan,
)

log = logging.getLogger(__name__)

#: libyaml's safe loader when PyYAML was built with it; the pure-Python one otherwise.
_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_warned_slow_loader = False


def _loc(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = _loc(tuple(p for p in e["loc"] if p not in ("function-after",)))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key (allowed keys are listed in README 'Configuration')")
        elif e["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            lines.append(f"{where}: {e['input']!r} is invalid: {msg}")
        else:
            lines.append(f"{where}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate an already-parsed YAML/JSON document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: invalid configuration\n{format_errors(e)}") from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror}") from None
    return parse_text(text, str(p))


def parse_text(text: str, source: str = "<config>") -> Config:
    """Parse and validate a YAML config text (pure: safe to call from a worker thread)."""
    return parse_config(load_yaml(text, source), source)


def load_yaml(text: str, source: str = "<config>") -> Any:
    """Safe-load YAML with libyaml; raises ConfigError with the line, column and snippet of a syntax error."""
    global _warned_slow_loader
    if _LOADER is yaml.SafeLoader and not _warned_slow_loader:
        _warned_slow_loader = True
        log.warning("PyYAML has no libyaml (yaml.CSafeLoader is missing): config files load about 5x slower")
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_with_snippets(e, text, source)}") from None


def _with_snippets(err: yaml.YAMLError, text: str, source: str) -> yaml.YAMLError:
    """libyaml's marks carry line and column but no text: give them the source name and snippet back."""
    if isinstance(err, yaml.MarkedYAMLError):
        buffer = text + "\0"
        for attr in ("context_mark", "problem_mark"):
            m = getattr(err, attr, None)
            if m is not None:
                # libyaml's index counts characters, like the pure-Python loader's pointer into its buffer.
                ok = 0 <= m.index < len(buffer)
                setattr(err, attr, yaml.Mark(source, m.index, m.line, m.column, buffer if ok else None,
                                             m.index if ok else 0))
    return err


def pool_plan(pool: PoolConfig) -> PoolPlan:
    endpoints = tuple(
        EndpointPlan(
            address=e.address,
            port=e.port,
            locality=Locality(region=e.region, zone=e.zone, sub_zone=e.sub_zone),
            weight=e.weight,
        )
        for e in pool.endpoints
    )
    od = pool.outlier_detection
    return PoolPlan(
        name=pool.name,
        endpoints=endpoints,
        lb_policy=LbPolicy(pool.lb_policy),
        locality_weights=(
            tuple(sorted({(e.locality.key, 1) for e in endpoints})) if pool.locality_weighted else None
        ),
        outlier_detection=(
            OutlierDetectionPlan(
                consecutive_5xx=od.consecutive_5xx,
                interval_s=od.interval_s,
                base_ejection_time_s=od.base_ejection_time_s,
                max_ejection_percent=od.max_ejection_percent,
                failure_percentage_threshold=od.failure_percentage_threshold,
            )
            if od
            else None
        ),
        slow_start_window_s=pool.slow_start.window_s if pool.slow_start else None,
        slow_start_aggression=pool.slow_start.aggression if pool.slow_start else 1.0,
        slow_start_min_weight_percent=pool.slow_start.min_weight_percent if pool.slow_start else 10.0,
        connect_timeout_s=pool.connect_timeout_s,
        http2=pool.http2,
        health_check_path=pool.health_check_path,
        prefix_routing=prefix_routing_plan(pool),
        # an autoscaled pool's shedding is its policy's (planning keeps it so on every step)
        shed=pool.autoscale.spec.traffic.shed_plan() if pool.autoscale is not None else None,
    )


def prefix_routing_plan(pool: PoolConfig) -> PrefixRoutingPlan | None:
    """The pool's prefix-affinity settings, or ``None`` unless ``routing: prefix``."""
    if pool.routing != "prefix":
        return None
    c = pool.prefix_routing or PrefixRoutingConfig()
    return PrefixRoutingPlan(prefix_bytes=c.prefix_bytes, hash_balance_factor=c.hash_balance_factor,
                             extract=c.extract, max_body_bytes=c.max_body_bytes, spill=c.spill,
                             affinity_backlog_s=c.affinity_backlog_s, affinity_choices=c.affinity_choices,
                             affinity_stall_s=c.affinity_stall_s)


def service_plan(svc: ServiceConfig) -> ServicePlan:
    r = svc.retry
    return ServicePlan(
        name=svc.name,
        pools=tuple((p.name, p.weight) for p in svc.pools),
        hosts=tuple(svc.hosts),
        prefix=svc.prefix,
        regex=svc.regex,
        timeout_s=svc.timeout_s,
        retry=(
            RetryPlan(
                retry_on=r.retry_on,
                num_retries=r.num_retries,
                per_try_timeout_s=r.per_try_timeout_s,
                budget_percent=r.budget_percent,
            )
            if r
            else None
        ),
        prefix_routing=next((pr for pr in map(prefix_routing_plan, svc.pools) if pr is not None), None),
    )


def to_traffic_plan(cfg: Config) -> TrafficPlan:
    """The static plan a config describes (no autoscaling applied). Pure."""
    all_services = tuple(s.name for s in cfg.services)
    prefix_services = {s.name for s in cfg.services if any(p.routing == "prefix" for p in s.pools)}
    return TrafficPlan(
        listeners=tuple(
            ListenerPlan(
                name=l.name,
                address=l.address,
                port=l.port,
                services=tuple(l.services) if l.services is not None else all_services,
                prefix_filter=not prefix_services.isdisjoint(l.services if l.services is not None else all_services),
            )
            for l in cfg.listeners
        ),
        services=tuple(service_plan(s) for s in cfg.services),
        pools=tuple(pool_plan(p) for s in cfg.services for p in s.pools),
    )
