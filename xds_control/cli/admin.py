"""``xds-control admin ...``: the operator's command line over the gRPC admin API.

Rich tables by default, ``--json`` for scripts (one JSON document, or one JSON line per event with
``events --follow``). On failure the exit status is 1 and stderr says ``CODE: message`` (the gRPC status
and the server's message); usage errors exit 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

admin_app = typer.Typer(
    name="admin",
    help="Operate a running xds-control through its gRPC admin API (see README 'Admin API').",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
weight_app = typer.Typer(help="Pin or clear an endpoint's weight.", no_args_is_help=True)
policy_app = typer.Typer(help="Set a pool's scaling policy or its parameters.", no_args_is_help=True)
admin_app.add_typer(weight_app, name="weight")
admin_app.add_typer(policy_app, name="policy")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded in the event with your identity).")]
PoolOpt = Annotated[str, typer.Option("--pool", help="One pool of the service (default: all its autoscaled pools).")]
EpPoolOpt = Annotated[str, typer.Option("--pool", help="The endpoint's pool (only if it is in several).")]


class _Ctx:
    address = "127.0.0.1:18001"
    token: str | None = None
    json = False
    timeout = 10.0
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


CTX = _Ctx()


@admin_app.callback()
def _options(
    address: Annotated[str, typer.Option("--address", envvar="XDS_CONTROL_ADMIN_ADDRESS",
                                         help="HOST:PORT of the admin API.")] = "127.0.0.1:18001",
    token: Annotated[str | None, typer.Option("--token", envvar="XDS_CONTROL_TOKEN", show_default=False,
                                                 help="Bearer token (or env XDS_CONTROL_TOKEN).")] = None,
    json_out: JsonOpt = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per call (not for events --follow).",
                                           min=0.1)] = 10.0,
    ca: Annotated[Path | None, typer.Option("--ca", envvar="XDS_CONTROL_ADMIN_CA",
                                               help="CA bundle: connect with TLS, verifying the server.")] = None,
    cert: Annotated[Path | None, typer.Option("--cert", envvar="XDS_CONTROL_ADMIN_CERT",
                                                 help="Client certificate (mutual TLS).")] = None,
    key: Annotated[Path | None, typer.Option("--key", envvar="XDS_CONTROL_ADMIN_KEY",
                                                help="Client private key (mutual TLS).")] = None,
    server_name: Annotated[str | None, typer.Option("--server-name",
                                                       help="Expected name in the server certificate.")] = None,
) -> None:
    """Global options come before the command: xds-control admin --address HOST:PORT --token T status."""
    CTX.address, CTX.token, CTX.json, CTX.timeout = address, token, json_out, timeout
    CTX.ca, CTX.cert, CTX.key, CTX.server_name = ca, cert, key, server_name
    if (cert is None) != (key is None):
        _usage("--cert and --key go together")
    if cert is not None and ca is None:
        _usage("--cert/--key need --ca (mutual TLS is TLS)")


def _usage(msg: str) -> None:
    typer.echo(f"xds-control admin: {msg}", err=True)
    raise typer.Exit(2)


def _client() -> tuple[Any, Any, list[tuple[str, str]]]:
    import grpc

    from xds_control.admin.proto import load

    pb, pb_grpc = load()
    host, sep, port = CTX.address.rpartition(":")
    if not sep or not host or not port.isdigit():
        _usage(f"--address: {CTX.address!r} is not HOST:PORT")
    opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 512 * 1024 * 1024)]  # large config dumps
    if CTX.ca is not None:
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=CTX.ca.read_bytes(),
                private_key=CTX.key.read_bytes() if CTX.key else None,
                certificate_chain=CTX.cert.read_bytes() if CTX.cert else None,
            )
        except OSError as e:
            _usage(f"cannot read a TLS file: {e}")
        if CTX.server_name:
            opts.append(("grpc.ssl_target_name_override", CTX.server_name))
        channel = grpc.secure_channel(CTX.address, creds, options=opts)
    else:
        channel = grpc.insecure_channel(CTX.address, options=opts)
    md = [("authorization", f"Bearer {CTX.token}")] if CTX.token else []
    return pb, pb_grpc.AdminStub(channel), md


def _call(method: str, request_fn: Any, stream: bool = False) -> Any:
    import grpc

    pb, stub, md = _client()
    try:
        return getattr(stub, method)(request_fn(pb), metadata=md, timeout=None if stream else CTX.timeout)
    except grpc.RpcError as e:
        _rpc_failed(e)


def _rpc_failed(e: Any) -> None:
    code = e.code().name if hasattr(e, "code") and e.code() is not None else "UNKNOWN"
    typer.echo(f"xds-control admin: {code}: {e.details() if hasattr(e, 'details') else e}", err=True)
    raise typer.Exit(1)


def _dict(msg: Any) -> Any:
    """The message as JSON-ready data; 64-bit integers stay numbers (proto JSON would make them strings)."""
    from google.protobuf import json_format

    data = json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _ints(msg.DESCRIPTOR, data)


def _ints(desc: Any, data: Any) -> Any:
    from google.protobuf.descriptor import FieldDescriptor as F

    wide = (F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64, F.TYPE_FIXED64, F.TYPE_SFIXED64)
    if not isinstance(data, dict) or desc.full_name.startswith("google.protobuf."):
        return data
    for f in desc.fields:
        if f.name not in data:
            continue
        v = data[f.name]
        if f.type in wide:
            data[f.name] = [int(x) for x in v] if isinstance(v, list) else int(v)
        elif f.type == F.TYPE_MESSAGE:
            data[f.name] = [_ints(f.message_type, x) for x in v] if isinstance(v, list) else _ints(f.message_type, v)
    return data


def _want_json(local: bool) -> bool:
    return CTX.json or local


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    Console().print(t)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _when(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int((at % 1) * 1000):03d}"


def _result(res: Any, local_json: bool) -> None:
    if _want_json(local_json):
        _print_json(_dict(res))
    else:
        typer.echo(f"{res.message} (event {res.event_seq})")


# -- Read ------------------------------------------------------------------------------------------
@admin_app.command()
def status(json_out: JsonOpt = False) -> None:
    """Snapshot version, leader, policies, and every proxy's sync state with its last NACK."""
    res = _call("GetStatus", lambda pb: pb.GetStatusRequest())
    if _want_json(json_out):
        return _print_json(_dict(res))
    typer.echo(f"version {res.version} (last good {res.last_good_version}), leader {res.leader} "
               f"on {res.instance}; you are {res.caller}")
    if res.last_error:
        typer.echo(f"last error: {res.last_error}")
    for alert in res.alerts:
        typer.echo(f"ALERT: {alert}")
    if res.policies:
        _table("policies", ["service", "pool", "policy", "paused", "min", "max"],
               [[p.service, p.pool, p.policy, "yes" if p.paused else "", p.min_replicas, p.max_replicas]
                for p in res.policies])
    rows = []
    for px in res.proxies:
        types = " ".join(f"{t.type}:{t.state}" + (f"@{t.acked_version}" if t.HasField("acked_version") else "")
                         for t in px.types)
        nack = (f"{px.last_nack.type} v{px.last_nack.version}: {px.last_nack.message}"
                if px.HasField("last_nack") else "")
        rows.append([px.node_id, px.protocol, px.peer, types, nack])
    _table(f"proxies ({len(res.proxies)})", ["node", "protocol", "peer", "types", "last NACK"], rows)


@admin_app.command()
def services(json_out: JsonOpt = False) -> None:
    """Services you can see, with their pools, replicas, targets and policies."""
    res = _call("ListServices", lambda pb: pb.ListServicesRequest())
    if _want_json(json_out):
        return _print_json(_dict(res)["services"])
    rows = []
    for s in res.services:
        for p in s.pools:
            rows.append([s.name, s.tenant, p.name, p.weight, p.policy + (" (paused)" if p.paused else ""),
                         p.replicas, p.target, p.ready, p.in_rotation,
                         f"{p.min_replicas}..{p.max_replicas}" if p.autoscaled else ""])
    _table("services", ["service", "tenant", "pool", "route weight", "policy", "replicas", "target", "ready",
                        "in rotation", "bounds"], rows)


@admin_app.command()
def endpoints(service: Annotated[str | None, typer.Argument(help="Only this service.")] = None,
              json_out: JsonOpt = False) -> None:
    """Endpoints with state, phase, weight, load index and signals."""
    res = _call("ListEndpoints", lambda pb: pb.ListEndpointsRequest(service=service or ""))
    if _want_json(json_out):
        return _print_json(_dict(res)["endpoints"])
    rows = []
    for e in res.endpoints:
        rows.append([e.service, e.pool, e.address, e.state, e.phase, e.weight, e.health, e.zone,
                     _fmt(e.load_index if e.HasField("load_index") else None),
                     _fmt(e.latency_s if e.HasField("latency_s") else None, 3),
                     _fmt(e.running if e.HasField("running") else None, 0),
                     _fmt(e.waiting if e.HasField("waiting") else None, 0),
                     (f"pinned {e.weight_override}" if e.HasField("weight_override") else "")
                     + (" drained" if e.operator_drain else "")])
    _table("endpoints", ["service", "pool", "endpoint", "state", "phase", "weight", "health", "zone", "load",
                         "latency s", "running", "waiting", "operator"], rows)


@admin_app.command()
def plan(service: Annotated[str | None, typer.Argument(help="Only this service.")] = None,
         json_out: JsonOpt = False) -> None:
    """The published plan: pools, route weights, endpoint weights and health, targets."""
    res = _call("GetPlan", lambda pb: pb.GetPlanRequest(service=service or ""))
    if _want_json(json_out):
        return _print_json(_dict(res))
    typer.echo(f"plan v{res.version}" + (f": {res.reason}" if res.reason else ""))
    rows = []
    for p in res.pools:
        eps = ", ".join(f"{e.address}={e.weight}" + ("(draining)" if e.health == "DRAINING" else "")
                        for e in p.endpoints)
        rows.append([p.service, p.name, p.route_weight, p.lb_policy,
                     p.target_replicas if p.HasField("target_replicas") else "", eps, p.explanation])
    _table("pools", ["service", "pool", "route weight", "lb", "target", "endpoints", "explanation"], rows)
    shadows = [[p.service, p.name, sh.policy, sh.current, sh.target, _fmt(sh.would_replica_seconds, 0),
                _fmt(sh.actual_replica_seconds, 0), sh.explanation] for p in res.pools for sh in p.shadows]
    if shadows:
        _table("shadow policies (decide, never act)", ["service", "pool", "shadow", "current", "would target",
                                                       "would replica-s", "actual replica-s", "explanation"],
               shadows)


@admin_app.command("config-dump")
def config_dump(type_: Annotated[str | None, typer.Argument(metavar="[TYPE]", help="CDS|EDS|LDS|RDS (or "
                                                                "clusters, endpoints, listeners, routes).")] = None,
                json_out: JsonOpt = False) -> None:
    """The current snapshot's resources (full Envoy protos as JSON with --json)."""
    res = _call("GetConfigDump", lambda pb: pb.GetConfigDumpRequest(type=type_ or ""))
    if _want_json(json_out):
        from google.protobuf import json_format

        import xds_control.snapshot.resources  # noqa: F401 - registers the Envoy message types

        out = {"version": res.version, "types": {}}
        for t in res.types:
            out["types"][t.type] = [
                {"name": r.name, "version": r.version,
                 "resource": json_format.MessageToDict(r.resource, preserving_proto_field_name=True)}
                for r in t.resources
            ]
        return _print_json(out)
    rows = [[t.type, r.name, r.version, len(r.resource.value)] for t in res.types for r in t.resources]
    _table(f"snapshot v{res.version}", ["type", "name", "version", "bytes"], rows)


@admin_app.command()
def decisions(service: Annotated[str | None, typer.Argument(help="Only this service.")] = None,
              limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
              changes: Annotated[bool, typer.Option("--changes", help="Only ticks that changed the target.")] = False,
              json_out: JsonOpt = False) -> None:
    """Recent decisions with their explanations (newest last)."""
    res = _call("ListDecisions", lambda pb: pb.ListDecisionsRequest(service=service or "", limit=limit,
                                                                      changes_only=changes))
    if _want_json(json_out):
        return _print_json(_dict(res)["decisions"])
    rows = [[_when(d.at), d.service, d.pool, d.policy, d.mode, f"{d.current} -> {d.target}", d.ready,
             _fmt(d.load_index if d.HasField("load_index") else None), d.version, d.explanation]
            for d in res.decisions]
    _table("decisions", ["time", "service", "pool", "policy", "mode", "replicas", "ready", "L", "version",
                         "explanation"], rows)


@admin_app.command()
def events(follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
           after: Annotated[int, typer.Option("--after", min=0, help="Resume after this event number.")] = 0,
           kind: Annotated[list[str] | None, typer.Option("--kind", help="Only these kinds (repeatable).")] = None,
           service: Annotated[str | None, typer.Option("--service", help="Only this service.")] = None,
           json_out: JsonOpt = False) -> None:
    """Decisions, scale actions, pushes, ACK/NACKs, drains and operator actions; --follow to stream."""
    import grpc

    stream = _call("WatchEvents", lambda pb: pb.WatchEventsRequest(after_seq=after, follow=follow,
                                                                    kinds=kind or [], service=service or ""),
                   stream=True)
    as_json = _want_json(json_out)
    try:
        for ev in stream:
            if as_json:
                typer.echo(json.dumps(_dict(ev)))
            else:
                where = "/".join(x for x in (ev.service, ev.pool) if x)
                typer.echo(f"{ev.seq:>6} {_when(ev.at)} {ev.kind:<14} {where:<20} {ev.endpoint:<21} "
                           f"{ev.message}" + (f"  [by {ev.actor}]" if ev.actor else ""))
            sys.stdout.flush()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.CANCELLED:
            return
        _rpc_failed(e)
    except KeyboardInterrupt:
        stream.cancel()


# -- Act -------------------------------------------------------------------------------------------
@admin_app.command()
def pause(service: str, pool: PoolOpt = "", reason: ReasonOpt = "", json_out: JsonOpt = False) -> None:
    """Pause autoscaling of a service (traffic shaping keeps running)."""
    _result(_call("PauseAutoscaling", lambda pb: pb.ServiceRef(service=service, pool=pool, reason=reason)), json_out)


@admin_app.command()
def resume(service: str, pool: PoolOpt = "", reason: ReasonOpt = "", json_out: JsonOpt = False) -> None:
    """Resume autoscaling of a service."""
    _result(_call("ResumeAutoscaling", lambda pb: pb.ServiceRef(service=service, pool=pool, reason=reason)), json_out)


@admin_app.command()
def drain(service: str, endpoint: Annotated[str, typer.Argument(help="HOST:PORT")],
          cancel: Annotated[bool, typer.Option("--cancel", help="Undo an operator drain.")] = False,
          pool: EpPoolOpt = "", reason: ReasonOpt = "", json_out: JsonOpt = False) -> None:
    """Drain an endpoint: no new requests, in-flight ones finish; autoscaled replicas are then replaced."""
    method = "UndrainEndpoint" if cancel else "DrainEndpoint"
    _result(_call(method, lambda pb: pb.EndpointRef(service=service, endpoint=endpoint, pool=pool, reason=reason)),
            json_out)


@admin_app.command()
def bounds(service: str,
           min_replicas: Annotated[int | None, typer.Option("--min", min=0)] = None,
           max_replicas: Annotated[int | None, typer.Option("--max", min=0)] = None,
           pool: PoolOpt = "", reason: ReasonOpt = "", json_out: JsonOpt = False) -> None:
    """Set min and/or max replicas of a service's autoscaled pools."""

    def req(pb: Any) -> Any:
        r = pb.SetReplicaBoundsRequest(service=service, pool=pool, reason=reason)
        if min_replicas is not None:
            r.min_replicas = min_replicas
        if max_replicas is not None:
            r.max_replicas = max_replicas
        return r

    _result(_call("SetReplicaBounds", req), json_out)


@weight_app.command("set")
def weight_set(service: str, endpoint: Annotated[str, typer.Argument(help="HOST:PORT")],
               weight: Annotated[int, typer.Argument(min=0)], pool: EpPoolOpt = "", reason: ReasonOpt = "",
               json_out: JsonOpt = False) -> None:
    """Pin an endpoint's Envoy weight (1..1000000) until cleared."""
    _result(_call("SetWeightOverride", lambda pb: pb.SetWeightOverrideRequest(
        service=service, endpoint=endpoint, weight=min(weight, 2**32 - 1), pool=pool, reason=reason)), json_out)


@weight_app.command("clear")
def weight_clear(service: str, endpoint: Annotated[str, typer.Argument(help="HOST:PORT")], pool: EpPoolOpt = "",
                 reason: ReasonOpt = "", json_out: JsonOpt = False) -> None:
    """Give an endpoint's weight back to the controller (or the config)."""
    _result(_call("ClearWeightOverride", lambda pb: pb.EndpointRef(service=service, endpoint=endpoint, pool=pool,
                                                                    reason=reason)), json_out)


@policy_app.command("set")
def policy_set(service: str,
               policy: Annotated[str | None, typer.Argument(help="A preset (xds-control policy list; "
                                                               "default: keep the current one).")] = None,
               set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                                 help="A parameter, e.g. max_replicas=8 or "
                                                                      "traffic.ramp_window_s=5 (repeatable).")] = None,
               pool: PoolOpt = "", reason: ReasonOpt = "", json_out: JsonOpt = False) -> None:
    """Set a policy and/or its parameters (validated like the config; admin role)."""
    import yaml

    overrides: dict[str, Any] = {}
    for item in set_ or []:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            _usage(f"--set: {item!r} is not KEY=VALUE")
        try:
            value = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            value = v
        node = overrides
        parts = k.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def req(pb: Any) -> Any:
        r = pb.SetPolicyRequest(service=service, pool=pool, policy=policy or "", reason=reason)
        r.overrides.update(overrides)
        return r

    _result(_call("SetPolicy", req), json_out)


def register(app: typer.Typer) -> None:
    app.add_typer(admin_app, name="admin")
