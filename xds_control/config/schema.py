"""The configuration file format (YAML), validated as a whole before anything starts.

The schema is pydantic so that every error can name the key path, the value and
what was expected (see :func:`xds_control.config.load.format_errors`). Unknown
keys are errors: a typo must never be silently ignored.

Only the ``listeners``/``services`` part is needed to serve Envoy; the other
sections configure the later stages of the pipeline and have defaults.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from xds_control.config.kubernetes import KubernetesConfig

if TYPE_CHECKING:
    from xds_control.config.policy import ResolvedPolicy
    from xds_control.policies import PolicySpec

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
Name = Annotated[str, Field(pattern=_NAME, description="letters, digits, '.', '_', '-'; 1-63 characters")]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"must be an IPv4 or IPv6 address, got {value!r}") from None
    return value


class EndpointConfig(_Strict):
    """One replica serving the pool."""

    address: str
    """IP address of the replica (Envoy's STATIC/EDS endpoints take IPs, not host names)."""
    port: Port
    zone: str = ""
    """Locality zone (``topology.kubernetes.io/zone`` on Kubernetes); empty = unknown."""
    region: str = ""
    sub_zone: str = ""
    weight: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    """Static per-endpoint load-balancing weight; the controller overrides it when autoscaling."""

    _ip = field_validator("address")(_check_ip)


class OutlierDetectionConfig(_Strict):
    """Envoy outlier detection; defaults follow Envoy's outlier_detection.proto."""

    consecutive_5xx: Annotated[int, Field(ge=1, le=1000)] = 5
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    base_ejection_time_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)] = 10
    failure_percentage_threshold: Annotated[int, Field(ge=0, le=100)] | None = None
    """Eject hosts whose failure percentage exceeds this; off when unset (Envoy's default)."""


class SlowStartConfig(_Strict):
    """Envoy slow start: a new endpoint's weight grows over ``window_s``."""

    window_s: Annotated[float, Field(gt=0, le=3600)]
    aggression: Annotated[float, Field(gt=0, le=100)] = 1.0
    min_weight_percent: Annotated[float, Field(ge=0, le=100)] = 10.0


class ReplicaTemplateConfig(_Strict):
    """How the local scaler starts a replica of an autoscaled pool (the emulated vLLM server)."""

    profile: str = "llama3-8b-48gb"
    """Cost-model profile (see ``xds_control.fleet.costmodel.PROFILES``)."""
    load_delay_s: Annotated[float, Field(ge=0, le=3600)] | None = None
    """Emulated model-load time before /health is ready; the profile's cold start when unset."""
    slow_factor: Annotated[float, Field(gt=0, le=100)] | None = None
    fail_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    max_num_seqs: Annotated[int, Field(ge=1, le=4096)] | None = None
    max_queue: Annotated[int, Field(ge=0, le=100_000)] | None = None
    zones: list[str] = Field(default_factory=list)
    """Zones assigned to new replicas in turn (their Envoy locality); none when empty."""

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        from xds_control.fleet.costmodel import PROFILES

        if v not in PROFILES:
            raise ValueError(f"unknown replica profile {v!r}; known: {', '.join(sorted(PROFILES))}")
        return v


#: Most shadow policies one pool may run (each decides every tick).
MAX_SHADOWS = 8


class AutoscaleConfig(_Strict):
    """Autoscaling of one pool: its endpoints are replicas the controller starts, ramps, drains and stops."""

    policy: str = "comprehensive"
    """A preset name (``xds-control policy list``: ``xds_control/config/presets/NAME.yaml``)
    or a YAML file."""
    overrides: dict[str, object] = Field(default_factory=dict)
    """Keys merged into the preset (nested mappings are merged key by key), e.g. ``{max_replicas: 8}``."""
    initial_replicas: Annotated[int, Field(ge=0, le=10_000)] | None = None
    """Replicas started before the first decision; the policy's ``min_replicas`` when unset."""
    replica: ReplicaTemplateConfig = Field(default_factory=ReplicaTemplateConfig)
    shadow: list[str] = Field(default_factory=list)
    """Shadow policies (preset names or YAML files, at most 8, no duplicates): each decides on the pool's live
    signals every tick and never actuates; their decisions and what they would have cost are reported."""

    # The resolution of policy + overrides, done once here; see ``spec``.
    _resolved: Any = PrivateAttr(default=None)
    # The resolution of each shadow, in order; see ``shadows``.
    _shadows: tuple[Any, ...] = PrivateAttr(default=())

    @field_validator("shadow")
    @classmethod
    def _unique_shadows(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_SHADOWS:
            raise ValueError(f"at most {MAX_SHADOWS} shadow policies, got {len(v)}: {v!r}")
        for i, name in enumerate(v):
            if name in v[:i]:
                raise ValueError(f"shadow[{i}] = {name!r}: listed twice (shadow[{v.index(name)}])")
        return v

    @model_validator(mode="after")
    def _spec(self) -> AutoscaleConfig:
        from xds_control.config.policy import resolve_policy_provenance

        self._resolved = resolve_policy_provenance(self.policy, self.overrides)  # raises ValueError naming the key
        shadows = []
        for i, name in enumerate(self.shadow):
            try:
                shadows.append(resolve_policy_provenance(name))
            except ValueError as e:
                raise ValueError(f"shadow[{i}] = {name!r}: {e}") from None
        self._shadows = tuple(shadows)
        return self

    @property
    def spec(self) -> PolicySpec:
        """The validated policy spec (preset or file + overrides), resolved when the config was loaded."""
        return self._resolved.spec

    @property
    def resolved(self) -> ResolvedPolicy:
        """:attr:`spec` with the origin of each key (preset, file, override, default)."""
        return self._resolved

    @property
    def shadows(self) -> tuple[tuple[str, PolicySpec], ...]:
        """The shadow policies as (name as configured, validated spec), resolved when the config was loaded."""
        return tuple((name, r.spec) for name, r in zip(self.shadow, self._shadows, strict=True))


class SignalsConfig(_Strict):
    """Where the controller reads load signals."""

    source: Literal["scrape", "prometheus"] = "scrape"
    """``scrape``: each replica's /metrics directly; ``prometheus``: PromQL against ``prometheus_url``."""
    prometheus_url: str | None = None
    queries: dict[str, str] = Field(default_factory=dict)
    """PromQL per signal field (gpu_util, cpu_util, latency_s, running, waiting, kv_cache, rps, gpu_mem), and
    ``request_rate`` (the gateway rate per pool; ``{pools}`` = the pools' regex, ``{window}`` = ``rate_window_s``)."""
    window: str = "15s"
    """Rate window for the default PromQL (at least 4 scrape intervals)."""
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    envoy_admin: list[str] = Field(default_factory=list)
    """Envoy admin base URLs (``http://127.0.0.1:PORT``), one per proxy, for the gateway request rate."""
    request_rate: Literal["auto", "envoy", "prometheus", "off"] = "auto"
    """Where the gateway arrival rate per pool comes from: ``envoy`` (each proxy's admin ``/stats``),
    ``prometheus`` (PromQL, ``queries.request_rate`` overrides it), ``off``; ``auto``: ``prometheus`` when
    ``source`` is, else ``envoy`` when ``envoy_admin`` is set, else ``off``."""
    rate_window_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """Window of the request rate (the simulator uses 10 s; with Prometheus at least 4 scrape intervals)."""

    @staticmethod
    def check_admin_url(url: str) -> str:
        """``url`` as an Envoy admin base URL (``http(s)://HOST:PORT``, no trailing ``/``); ValueError if not one."""
        from urllib.parse import urlsplit

        if not isinstance(url, str):
            raise ValueError(f"must be a string http://HOST:PORT, got {url!r}")
        try:
            u = urlsplit(url.strip())
            port = u.port
        except ValueError as e:
            raise ValueError(f"{url!r} is not a URL: {e}") from None
        if u.scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: scheme must be http or https")
        if not u.hostname:
            raise ValueError(f"{url!r}: has no host")
        if not port:
            raise ValueError(f"{url!r}: has no port (the Envoy admin port, e.g. http://127.0.0.1:9901)")
        if u.path not in ("", "/") or u.query or u.fragment:
            raise ValueError(f"{url!r}: must be a base URL, without path, query or fragment")
        return f"{u.scheme}://{u.netloc}"

    @field_validator("envoy_admin")
    @classmethod
    def _admin_urls(cls, v: list[str]) -> list[str]:
        out = []
        for i, url in enumerate(v):
            try:
                out.append(cls.check_admin_url(url))
            except ValueError as e:
                raise ValueError(f"item {i}: {e}") from None
        return out

    @model_validator(mode="after")
    def _url(self) -> SignalsConfig:
        if self.source == "prometheus" and not self.prometheus_url:
            raise ValueError("prometheus_url is required when source is 'prometheus'")
        if self.request_rate == "envoy" and not self.envoy_admin:
            raise ValueError("request_rate: 'envoy' needs envoy_admin (the Envoy admin base URLs)")
        if self.request_rate == "prometheus" and not self.prometheus_url:
            raise ValueError("request_rate: 'prometheus' needs prometheus_url")
        q = self.queries.get("request_rate")
        if q is not None and "{pools}" not in q:
            raise ValueError(f"queries.request_rate: must contain '{{pools}}' (the pools' regex), got {q!r}")
        return self

    @property
    def rate_source(self) -> Literal["envoy", "prometheus"] | None:
        """``request_rate`` with ``auto`` resolved (``None`` = off)."""
        if self.request_rate == "auto":
            if self.source == "prometheus":
                return "prometheus"
            return "envoy" if self.envoy_admin else None
        return None if self.request_rate == "off" else self.request_rate


class ControllerConfig(_Strict):
    tick_s: Annotated[float, Field(ge=0.05, le=600)] = 1.0
    """Seconds between two decisions (read signals -> decide -> plan -> push)."""
    signals: SignalsConfig = Field(default_factory=SignalsConfig)


#: Envoy's default per-connection buffer limit: a body the prefix filter buffers must fit in it.
MAX_PREFIX_BODY_BYTES = 1_048_576


class PrefixRoutingConfig(_Strict):
    """Settings of ``routing: prefix`` (prefix-cache affinity with a load bound, decided inside Envoy)."""

    prefix_bytes: Annotated[int, Field(ge=16, le=MAX_PREFIX_BODY_BYTES)] = 4096
    """Bytes of the prompt (as sent, JSON-escaped) hashed into the affinity key; about 4 characters per token,
    so 4096 bytes ~ 1,000 tokens (two 512-token KV blocks: past a shared system prompt, into the conversation)."""
    spill: Literal["least_request", "maglev"] = "least_request"
    """Where a request goes when the key's replica is over the bound. ``least_request``: Envoy's Lua filter picks
    the key's replica by rendezvous hashing over the endpoints the control plane pushes, the first attempt goes
    there, and the replica sheds it (429) when its queued prefill, less what its prefix cache saves the request,
    is over ``affinity_backlog_s``; Envoy retries it on the least loaded replica. Needs replicas that shed (the
    emulated replica does; a model server without it gets affinity with no bound: use ``maglev``).
    ``maglev``: Envoy's Maglev with bounded loads (``hash_balance_factor``), any model server; a spilled or
    retried request lands on a pseudo-random replica."""
    affinity_backlog_s: Annotated[float, Field(ge=0, le=60)] = 0.0
    """``spill: least_request``: the key's replica takes a request while its queued prefill less the cache's
    saving is at most this many seconds (0: only when the cache saves at least the wait)."""
    affinity_choices: Annotated[int, Field(ge=1, le=8)] = 2
    """``spill: least_request``: how many of the key's replicas (rendezvous order) get one attempt each before
    least request; 2 lets a hot key live on two replicas' caches."""
    affinity_stall_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    """``spill: least_request``: the key's replica also turns the request away when its uncached prefill (seconds,
    after the cache's saving) times the requests it is decoding exceeds this: a long prefill stalls every running
    decode. 0 = no such limit. For long prompts with small caches (Mooncake: 20 cut GPU-hours at 99 % SLO by 17 %,
    at fewer cache hits)."""
    hash_balance_factor: Annotated[int, Field(ge=100, le=10_000)] = 125
    """``spill: maglev``: load bound in percent of the mean outstanding requests (Envoy bounded loads): 125 = no
    replica above 1.25x the mean; 100 = strict balance (little affinity)."""
    extract: Literal["auto", "prompt", "messages"] = "auto"
    """Where the prompt is: ``prompt`` (/v1/completions), ``messages[*].content`` concatenated
    (/v1/chat/completions), or ``auto`` (by the request path)."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=MAX_PREFIX_BODY_BYTES)] = 262_144
    """Bodies longer than this (by content-length) are not read: the request goes to the plain bounded-load
    balancer. At most 1 MiB (Envoy's per-connection buffer limit)."""

    @model_validator(mode="after")
    def _sizes(self) -> PrefixRoutingConfig:
        if self.prefix_bytes > self.max_body_bytes:
            raise ValueError(f"prefix_bytes ({self.prefix_bytes}) must be <= max_body_bytes ({self.max_body_bytes})")
        return self


class PoolConfig(_Strict):
    """A set of interchangeable replicas; becomes one Envoy EDS cluster named ``name``."""

    name: Name
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = 1
    """Share of the service's traffic relative to its other pools (0 = none)."""
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    lb_policy: Literal["round_robin", "least_request", "random"] = "round_robin"
    locality_weighted: bool = False
    """Use locality-weighted load balancing (weights per zone) instead of a flat endpoint list."""
    outlier_detection: OutlierDetectionConfig | None = None
    slow_start: SlowStartConfig | None = None
    http2: bool = False
    """Speak HTTP/2 to the replicas (gRPC inference servers)."""
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    health_check_path: str | None = None
    """HTTP path for Envoy active health checks (e.g. ``/health``); none when unset."""
    autoscale: AutoscaleConfig | None = None
    """When set, the controller manages this pool's replicas; static ``endpoints`` must then be empty."""
    routing: Literal["default", "prefix"] = "default"
    """``default``: ``lb_policy``; ``prefix``: prefix-cache affinity, i.e. requests whose prompts start alike go to
    the same replica unless it is above the load bound (see ``prefix_routing``)."""
    prefix_routing: PrefixRoutingConfig | None = None
    """Settings of ``routing: prefix`` (defaults when unset)."""

    @model_validator(mode="after")
    def _routing(self) -> PoolConfig:
        if self.routing == "prefix":
            if "lb_policy" in self.model_fields_set:
                raise ValueError(f"lb_policy: {self.lb_policy!r} cannot be combined with routing: 'prefix' "
                                 "(it picks the key's replica, then spills by prefix_routing.spill); remove lb_policy")
            spill = (self.prefix_routing or PrefixRoutingConfig()).spill
            if self.slow_start is not None and spill == "maglev":
                raise ValueError("slow_start: not supported with routing: 'prefix' and prefix_routing.spill: 'maglev' "
                                 "(Envoy's Maglev has no slow start); use spill: 'least_request' or remove slow_start")
        elif self.prefix_routing is not None:
            raise ValueError(f"prefix_routing: only used with routing: 'prefix', but routing is {self.routing!r}")
        return self

    @model_validator(mode="after")
    def _unique_endpoints(self) -> PoolConfig:
        if self.autoscale is not None and self.endpoints:
            raise ValueError("endpoints: must be empty when autoscale is set (the controller starts the replicas)")
        seen: set[tuple[str, int]] = set()
        for i, ep in enumerate(self.endpoints):
            key = (ep.address, ep.port)
            if key in seen:
                raise ValueError(f"endpoints[{i}] {ep.address}:{ep.port} is listed twice")
            seen.add(key)
        return self


class RetryConfig(_Strict):
    retry_on: str = "connect-failure,refused-stream,reset,503"
    num_retries: Annotated[int, Field(ge=0, le=10)] = 2
    per_try_timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = 30.0
    """Envoy's per-try timeout: how long one attempt may wait for the response to begin (its headers) before
    it is retried on another host; ``null`` = none (only the route's ``timeout_s``). It is what detects a
    replica that stops answering (packets dropped, no reset). 30 s: a non-streaming LLM answer begins only
    when it is complete, so a shorter default would retry long but healthy generations; half the default
    60 s route timeout leaves the retry the other half. Envoy ignores it unless it is below ``timeout_s``
    (or ``timeout_s`` is 0); set it near the p99 time to first byte for short requests."""
    budget_percent: Annotated[float, Field(gt=0, le=100)] = 20.0
    """Envoy retry budget: at most this percentage of active requests may be retries."""


class ServiceConfig(_Strict):
    """A routed service: matching requests are split over its pools by pool weight."""

    name: Name
    pools: Annotated[list[PoolConfig], Field(min_length=1)]
    hosts: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["*"])
    """HTTP Host/authority values that select this service; ``*`` matches any."""
    prefix: str = "/"
    """Path prefix that selects this service."""
    regex: str | None = None
    """RE2 path regex; replaces ``prefix`` when set. Envoy compiles it: RE2 has no look-arounds."""
    timeout_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    """Route timeout for a whole request (0 = none); LLM responses are long."""
    retry: RetryConfig | None = None
    tenant: Name = "default"
    """Who owns the service: admin tokens of another tenant neither see nor act on it."""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must start with '/', got {v!r}")
        return v

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"is not a valid regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _weights(self) -> ServiceConfig:
        if sum(p.weight for p in self.pools) <= 0:
            raise ValueError("pools: at least one pool needs a weight above 0")
        return self


class ListenerConfig(_Strict):
    name: Name
    address: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)]
    """Port Envoy listens on (0 = any free port; read it from Envoy's admin /listeners)."""
    services: list[str] | None = None
    """Services this listener carries, in match order; all services when unset."""

    _ip = field_validator("address")(_check_ip)


class XdsConfig(_Strict):
    """How the xDS server pushes."""

    debounce_ms: Annotated[float, Field(ge=0, le=60_000)] = 100.0
    """Quiet period after the last change before a push (Istio's PILOT_DEBOUNCE_AFTER is 100 ms)."""
    max_delay_ms: Annotated[float, Field(ge=0, le=600_000)] = 1000.0
    """A push happens at most this long after the first pending change, however busy."""
    max_concurrent_pushes: Annotated[int, Field(ge=1, le=100_000)] = 100
    """Global limit on responses being written at once across all streams."""
    ack_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    """How long a stream waits for a proxy's ACK of one type before sending the next type anyway."""
    removal_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Clusters no longer routed to are removed after every proxy ACKed the new routes, or after this long."""
    rollback_on_nack: bool = True
    """Roll back to the last good version when a proxy that accepted the previous version rejects a new one."""

    @model_validator(mode="after")
    def _delays(self) -> XdsConfig:
        if self.max_delay_ms < self.debounce_ms:
            raise ValueError(
                f"max_delay_ms ({self.max_delay_ms}) must be >= debounce_ms ({self.debounce_ms})"
            )
        return self



class TlsConfig(_Strict):
    """Server TLS; with ``client_ca`` the server requires client certificates signed by it (mutual TLS)."""

    cert: str
    """PEM certificate chain file of the server."""
    key: str
    """PEM private key file of the server."""
    client_ca: str | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""

    @model_validator(mode="after")
    def _files(self) -> TlsConfig:
        from pathlib import Path

        for k in ("cert", "key", "client_ca"):
            v = getattr(self, k)
            if v is not None and not Path(v).is_file():
                raise ValueError(f"{k}: {v!r} is not a readable file")
        return self


class AdminTokenConfig(_Strict):
    """One bearer token. Its value is never logged or shown; errors name the token by ``name``."""

    name: Name
    """Who holds it (recorded as the actor of every action taken with it)."""
    token: SecretStr
    tenant: str = "default"
    """The tenant whose services it sees and acts on; ``*`` for every tenant."""
    role: Literal["viewer", "operator", "admin"] = "viewer"
    """viewer: read and watch; operator: also pause/resume, drain, weights, replica bounds; admin: also policies."""

    @model_validator(mode="before")
    @classmethod
    def _token(cls, data: object) -> object:
        if isinstance(data, dict):
            t = data.get("token")
            if not isinstance(t, str) or len(t) < 16 or any(c.isspace() for c in t):
                # The value itself is never echoed.
                raise ValueError("token: must be a string of at least 16 characters without spaces")
        return data

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        if v != "*" and not re.match(_NAME, v):
            raise ValueError(f"must be '*' or a name (letters, digits, '.', '_', '-'), got {v!r}")
        return v


class AdminConfig(_Strict):
    """The operator API (gRPC, ``xds-control admin ...``) and TLS for the admin and xDS ports."""

    enabled: bool = True
    address: str = "127.0.0.1"
    """Bind address of the admin API; beyond loopback it needs at least one token."""
    port: Annotated[int, Field(ge=0, le=65535)] = 18001
    """Admin API port (0 = any free port)."""
    tokens: list[AdminTokenConfig] = Field(default_factory=list)
    tokens_file: str | None = None
    """YAML file with a list of tokens (same keys as ``tokens``), read when the config is loaded."""
    tls: TlsConfig | None = None
    """TLS (mTLS with ``client_ca``) for the admin port."""
    xds_tls: TlsConfig | None = None
    """TLS (mTLS with ``client_ca``) for the xDS port."""

    _ip = field_validator("address")(_check_ip)

    @model_validator(mode="before")
    @classmethod
    def _token_entries(cls, data: object) -> object:
        # Checked on the whole section, whose errors never echo a value: a token written as a bare string
        # must not end up in an error message (or the log, on a reload).
        if isinstance(data, dict) and "tokens" in data:
            v = data["tokens"]
            if not isinstance(v, list):
                raise ValueError("tokens: must be a list of {name, token, tenant, role} mappings")
            for i, entry in enumerate(v):
                if not isinstance(entry, dict):
                    raise ValueError(f"tokens[{i}]: must be a mapping with name, token, tenant and role")
        return data

    @model_validator(mode="after")
    def _tokens(self) -> AdminConfig:
        all_tokens = self.all_tokens()
        _unique("admin tokens", [t.name for t in all_tokens])
        if len({t.token.get_secret_value() for t in all_tokens}) != len(all_tokens):
            raise ValueError("tokens: two tokens have the same value")
        return self

    def all_tokens(self) -> list[AdminTokenConfig]:
        """Inline tokens plus those of ``tokens_file`` (raises ValueError naming the file, never a value)."""
        if self.tokens_file is None:
            return list(self.tokens)
        from pathlib import Path

        import yaml
        from pydantic import ValidationError

        path = Path(self.tokens_file)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ValueError(f"tokens_file: cannot read {str(path)!r}: {e.strerror}") from None
        except yaml.YAMLError:
            raise ValueError(f"tokens_file: {str(path)!r} is not valid YAML") from None
        if isinstance(data, dict):
            data = data.get("tokens")
        if not isinstance(data, list):
            raise ValueError(f"tokens_file: {str(path)!r} must hold a list of tokens (or tokens: [...])")
        out = list(self.tokens)
        for i, entry in enumerate(data):
            try:
                out.append(AdminTokenConfig.model_validate(entry))
            except ValidationError as e:
                where = "; ".join((f"{'.'.join(str(p) for p in err['loc'])}: " if err["loc"] else "")
                                  + err["msg"].removeprefix("Value error, ") for err in e.errors())
                raise ValueError(f"tokens_file: {str(path)!r} entry [{i}]: {where}") from None
        return out


class Config(_Strict):
    """The whole configuration file."""

    listeners: list[ListenerConfig] = Field(default_factory=list)
    services: list[ServiceConfig] = Field(default_factory=list)
    xds: XdsConfig = Field(default_factory=XdsConfig)
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    kubernetes: KubernetesConfig | None = None
    """Autoscaled pools run as Kubernetes Deployments, with leader election (see config/kubernetes.py)."""

    @model_validator(mode="after")
    def _references(self) -> Config:
        service_names = [s.name for s in self.services]
        _unique("services", service_names)
        _unique("listeners", [l.name for l in self.listeners])
        _unique("pools", [p.name for s in self.services for p in s.pools])
        if self.kubernetes is not None:
            self.kubernetes.check_pools([p.name for s in self.services for p in s.pools if p.autoscale is not None],
                                        [p.name for s in self.services for p in s.pools])
        known = set(service_names)
        for i, lst in enumerate(self.listeners):
            carried = lst.services if lst.services is not None else service_names
            for name in carried:
                if name not in known:
                    raise ValueError(
                        f"listeners[{i}].services: {name!r} is not a service; known services: "
                        f"{sorted(known) or 'none'}"
                    )
            _check_domains(f"listeners[{i}]", [s for s in self.services if s.name in set(carried)])
        binds = [(l.address, l.port) for l in self.listeners if l.port]
        _unique("listener address:port", [f"{a}:{p}" for a, p in binds])
        return self


def _unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{what}: name {n!r} is used twice; names must be unique")
        seen.add(n)


def _check_domains(where: str, services: list[ServiceConfig]) -> None:
    """Services with the same ``hosts`` share one virtual host; Envoy rejects two virtual hosts
    that share a domain, so a host may not appear in two different host lists."""
    owner: dict[str, tuple[str, tuple[str, ...]]] = {}
    for s in services:
        hosts = tuple(s.hosts)
        for h in hosts:
            if h in owner and owner[h][1] != hosts:
                raise ValueError(
                    f"{where}: host {h!r} is in the hosts of services {owner[h][0]!r} and {s.name!r} "
                    "with different host lists; give them the same hosts (they then share a virtual "
                    "host, matched in order) or disjoint ones"
                )
            owner.setdefault(h, (s.name, hosts))
