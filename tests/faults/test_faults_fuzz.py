"""Bad input, fuzzed with hypothesis: the config loader and the metrics parser never crash, and their
errors name the field.

* config: a valid file (static and autoscaled pools, retry, outlier detection, xds, controller) with one
  value replaced by NaN, ±inf, a negative or huge number, a string, a list, a mapping, null or a bool, or
  with one key removed: ``parse_config`` either accepts it — and then the plan and the Envoy snapshot build
  — or raises ``ConfigError`` whose message names the key's path;
* metrics: Prometheus text with the vLLM/DCGM names we read and random values (NaN, ±Inf, negative, huge,
  non-numbers, missing): ``parse_metrics`` returns values that are finite and >= 0, or raises ``ValueError``
  naming the metric; ``derive_sample`` then never crashes and gives finite, non-negative samples.

The admin API is fuzzed the same way in tests/component/test_admin_api.py
(``test_fuzzed_requests_get_a_clear_status``: 300 random requests of every RPC, INVALID_ARGUMENT messages
start with the field).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import pick

from xds_control.config import parse_config, to_traffic_plan
from xds_control.core.errors import ConfigError, InconsistentSnapshot
from xds_control.signals.scrape import RawMetrics, derive_sample, parse_metrics
from xds_control.snapshot.snapshot import build_snapshot

EXAMPLES = pick(200, 2000)

BASE: dict[str, Any] = {
    "listeners": [{"name": "ingress", "address": "127.0.0.1", "port": 10000}],
    "services": [
        {"name": "llm", "timeout_s": 60, "retry": {"num_retries": 2, "budget_percent": 20},
         "pools": [
             {"name": "static", "weight": 80, "lb_policy": "least_request",
              "outlier_detection": {"consecutive_5xx": 3, "interval_s": 1, "base_ejection_time_s": 30,
                                    "max_ejection_percent": 50},
              "slow_start": {"window_s": 10, "aggression": 1.0, "min_weight_percent": 10},
              "endpoints": [{"address": "127.0.0.1", "port": 18101, "zone": "zone-a", "weight": 5},
                            {"address": "127.0.0.1", "port": 18102, "zone": "zone-b"}]},
             {"name": "auto", "weight": 20,
              "autoscale": {"policy": "comprehensive", "initial_replicas": 2,
                            "overrides": {"min_replicas": 1, "max_replicas": 6,
                                          "traffic": {"ramp_window_s": 10, "drain_timeout_s": 60}},
                            "replica": {"load_delay_s": 1, "max_num_seqs": 8, "zones": ["zone-a"]}}},
         ]},
    ],
    "xds": {"debounce_ms": 100, "max_delay_ms": 1000, "ack_timeout_s": 5, "max_concurrent_pushes": 100},
    "controller": {"tick_s": 1, "signals": {"source": "scrape", "timeout_s": 1}},
}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


PATHS = _paths(BASE)
BAD = st.one_of(
    st.just(float("nan")), st.just(float("inf")), st.just(float("-inf")),
    st.integers(-(2**70), -1), st.integers(2**31, 2**70), st.floats(-1e300, -1e-9), st.just(1e308),
    st.text(max_size=12), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                                 max_size=2),
    st.none(), st.booleans(), st.just(0), st.just(""),
)


def _loc(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any, delete: bool) -> None:
    node: Any = doc
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=BAD, delete=st.booleans())
def test_fuzzed_config_is_accepted_or_names_the_field(path: tuple[Any, ...], value: Any, delete: bool) -> None:
    doc = copy.deepcopy(BASE)
    _set(doc, path, value, delete)
    try:
        cfg = parse_config(doc, "fuzz.yaml")
    except ConfigError as e:
        msg = str(e)
        # The error names the changed key (or, for a removed list item / whole section, its parent).
        names = [_loc(path[:i]) for i in range(len(path), 0, -1)]
        assert msg.startswith("fuzz.yaml: ") and any(n and n in msg for n in names) or "top level" in msg, \
            (path, value, delete, msg)
        return
    # Accepted: it must also become a plan and a consistent Envoy snapshot (no crash on odd values).
    plan = to_traffic_plan(cfg)
    try:
        build_snapshot(plan, 1)
    except InconsistentSnapshot as e:
        raise AssertionError(f"accepted config builds no snapshot: {path}={value!r}: {e}") from None


METRICS = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
           "vllm:gpu_cache_usage_perc", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
           "process_cpu_seconds_total", "vllm:request_success_total", "vllm:time_to_first_token_seconds_sum",
           "vllm:time_to_first_token_seconds_count", "vllm:e2e_request_latency_seconds_sum",
           "vllm:e2e_request_latency_seconds_count", "unrelated_metric"]
VALUES = st.one_of(
    st.sampled_from(["NaN", "+Inf", "-Inf", "-1", "-0.5", "1e308", "1e400", "0", "abc", "", "0x10", "1_000"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr), st.integers(-(10**30), 10**30).map(str),
)


@st.composite
def exposition(draw: Any) -> str:
    lines = []
    for name in draw(st.lists(st.sampled_from(METRICS), max_size=10)):
        label = draw(st.sampled_from(["", '{gpu="0"}', '{model_name="m",engine="0"}', '{a="\\"}']))
        lines.append(f"{name}{label} {draw(VALUES)}")
    if draw(st.booleans()):
        lines.insert(0, "# TYPE vllm:num_requests_running gauge")
    return "\n".join(lines) + ("\n" if draw(st.booleans()) else "")


def _fine(x: float | None) -> bool:
    return x is None or (math.isfinite(x) and x >= 0)


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(text=exposition(), prev_text=exposition(), dt=st.floats(-1, 100))
def test_fuzzed_metrics_parse_to_sane_numbers_or_name_the_metric(text: str, prev_text: str, dt: float) -> None:
    try:
        raw = parse_metrics(text)
    except ValueError as e:
        msg = str(e)
        # An unparsable line is named by number and content; a bad value by its metric.
        assert msg.startswith("line ") or any(m in msg for m in METRICS), (text, msg)
        return
    assert isinstance(raw, RawMetrics)
    assert all(_fine(getattr(raw, f)) for f in raw.__dataclass_fields__), (text, raw)
    try:
        prev = parse_metrics(prev_text)
    except ValueError:
        prev = None
    sample = derive_sample(raw, prev, dt, taken_at=0.0)
    for f in ("gpu_util", "gpu_mem", "cpu_util", "latency_s", "running", "waiting", "kv_cache", "rps"):
        assert _fine(getattr(sample, f)), (f, text, prev_text, sample)


SAMPLE_VALUES = st.one_of(st.none(), st.just(0.0), st.floats(0, 1), st.floats(0, 1e308), st.just(1e308))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(SAMPLE_VALUES, SAMPLE_VALUES, SAMPLE_VALUES, SAMPLE_VALUES, SAMPLE_VALUES,
                               st.booleans()), min_size=1, max_size=6),
       policy=st.sampled_from(["threshold", "predictive", "comprehensive", "hpa", "kpa"]))
def test_extreme_sane_samples_never_break_decide_plan_or_snapshot(rows: list[tuple[Any, ...]], policy: str) -> None:
    """Whatever finite, non-negative numbers the parser lets through (up to 1e308), the policy, planning
    and the Envoy snapshot give valid integer weights and no crash, twice in a row (state carried)."""
    from dataclasses import replace as dc_replace

    from xds_control.config.policy import resolve_policy
    from xds_control.core.model import EndpointSample, ServiceSignals, SignalFrame
    from xds_control.core.traffic import Locality
    from xds_control.planning import apply_to_pool, plan_service
    from xds_control.policies import decide

    spec = resolve_policy(policy, {"min_replicas": 1, "max_replicas": 10})
    keys = [f"127.0.0.1:{20000 + i}" for i in range(len(rows))]
    ready = {k: r[5] for k, r in zip(keys, rows, strict=True)}
    samples = {k: EndpointSample(gpu_util=r[0], cpu_util=r[1], latency_s=r[2], running=r[3], waiting=r[4],
                                 kv_cache=None if r[0] is None else min(r[0], 1.0), taken_at=0.0)
               for k, r in zip(keys, rows, strict=True)}
    frame = SignalFrame.from_samples(samples, ready=ready, locality={k: Locality(zone="z").key for k in keys})
    signals = ServiceSignals("llm", frame, current_replicas=len(keys), pending_replicas=0)
    cfg = copy.deepcopy(BASE)
    base = to_traffic_plan(parse_config(cfg))
    state, table = None, None
    for now in (100.0, 101.0):
        decision, state = decide(signals, state, spec, now)
        assert 1 <= decision.target_replicas <= 10
        result = plan_service(decision, signals, table, spec.traffic, now, now - 1)
        table = result.table
        pool = apply_to_pool(base.pool("auto"), result)
        assert all(1 <= e.weight <= 2**32 - 1 for e in pool.endpoints), pool.endpoints
        plan = dc_replace(base, pools=tuple(pool if p.name == "auto" else p for p in base.pools))
        build_snapshot(plan, 1)
