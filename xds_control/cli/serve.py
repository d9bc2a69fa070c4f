"""``serve``, ``bootstrap`` and ``validate``: the foundation's command-line contract."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from xds_control.core.errors import ConfigError


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"xds-control: {msg}", err=True)
    raise typer.Exit(code)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file (see README 'Configuration').")],
    xds_port: Annotated[int, typer.Option("--xds-port", help="ADS gRPC port on --host (0 = pick a free one).",
                                          min=0, max=65535)] = 18000,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="HTTP port on --host for /metrics, the dashboard "
                                              "(/) and /debug/syncz (0 = pick a free one).", min=0, max=65535)] = 9102,
    host: Annotated[str, typer.Option("--host", help="Address the xDS and HTTP ports bind (loopback by default).")] = "127.0.0.1",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    admin_port: Annotated[int | None, typer.Option("--admin-port", help="Admin API port on admin.address "
                                                      "(default: admin.port of the config, 18001; 0 = any free "
                                                      "one).", min=0, max=65535)] = None,
) -> None:
    """Serve the listeners, routes, clusters and endpoints in CONFIG to Envoy over ADS (SotW and Delta).

    The whole file is validated before anything starts (exit status 2 on error). While running, the file is
    watched: a valid new version is pushed within a second; an invalid one is logged and the last good config
    stays in force. Prints one JSON line with the bound ports once serving.
    """
    from xds_control.config import load_config
    from xds_control.runtime.app import ControlPlane, serve_forever

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        _fail(f"--log-level: {log_level!r} is invalid; use debug, info, warning or error")
    _setup_logging(log_level)
    try:
        cfg = load_config(config)
    except ConfigError as e:
        _fail(str(e))
    from xds_control.admin.auth import admin_bind_problem

    problem = admin_bind_problem(cfg)
    if problem:
        _fail(f"{config}: {problem}")
    cp = ControlPlane(cfg, config_path=config, host=host, xds_port=xds_port, metrics_port=metrics_port,
                      admin_port=(cfg.admin.port if admin_port is None else admin_port) if cfg.admin.enabled else None)
    try:
        code = asyncio.run(serve_forever(cp))
    except OSError as e:
        _fail(f"cannot start: {e}", 1)
    raise typer.Exit(code)


def bootstrap(
    node_id: Annotated[str, typer.Option("--node-id", help="Envoy node id (shown in the sync status).")],
    xds_address: Annotated[str, typer.Option("--xds-address", help="HOST:PORT of xds-control's ADS server.")],
    delta: Annotated[bool, typer.Option("--delta", help="Use Delta (incremental) ADS instead of SotW.")] = False,
    admin_port: Annotated[int, typer.Option("--admin-port", help="Envoy admin port on 127.0.0.1 (0 = any).",
                                            min=0, max=65535)] = 9901,
    cluster: Annotated[str, typer.Option("--cluster", help="Envoy node cluster.")] = "xds-control",
    xds_ca: Annotated[Path | None, typer.Option("--xds-ca", help="CA file: connect to a TLS xDS port "
                                                   "(admin.xds_tls), verifying the server.")] = None,
    xds_cert: Annotated[Path | None, typer.Option("--xds-cert", help="Client certificate for mutual TLS.")] = None,
    xds_key: Annotated[Path | None, typer.Option("--xds-key", help="Client private key for mutual TLS.")] = None,
    xds_sni: Annotated[str | None, typer.Option("--xds-sni", help="Server name (SNI) to send.")] = None,
    reconnect_base_ms: Annotated[int, typer.Option("--reconnect-base-ms", help="First delay before Envoy "
                                 "reconnects a lost ADS stream (doubles, jittered).", min=10, max=60_000)] = 250,
    reconnect_max_ms: Annotated[int, typer.Option("--reconnect-max-ms", help="Longest reconnect delay.",
                                                  min=10, max=600_000)] = 2000,
) -> None:
    """Print an Envoy bootstrap (YAML) that connects to xds-control over ADS. Run it with `envoy -c FILE`."""
    from xds_control.envoy.bootstrap import render_bootstrap_yaml

    host, sep, port_s = xds_address.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        _fail(f"--xds-address: {xds_address!r} is invalid; expected HOST:PORT, e.g. 127.0.0.1:18000")
    if not node_id.strip():
        _fail("--node-id: must not be empty")
    tls = None
    if xds_ca is not None:
        if (xds_cert is None) != (xds_key is None):
            _fail("--xds-cert and --xds-key go together")
        tls = {"ca": str(xds_ca.resolve())}
        if xds_cert is not None and xds_key is not None:
            tls.update(cert=str(xds_cert.resolve()), key=str(xds_key.resolve()))
        if xds_sni:
            tls["sni"] = xds_sni
    elif xds_cert is not None or xds_key is not None or xds_sni:
        _fail("--xds-cert, --xds-key and --xds-sni need --xds-ca")
    if reconnect_max_ms < reconnect_base_ms:
        _fail(f"--reconnect-max-ms: {reconnect_max_ms} is below --reconnect-base-ms {reconnect_base_ms}")
    typer.echo(render_bootstrap_yaml(node_id, host.strip("[]"), int(port_s), delta=delta, admin_port=admin_port,
                                     cluster=cluster, tls=tls, reconnect_base_s=reconnect_base_ms / 1000,
                                     reconnect_max_s=reconnect_max_ms / 1000), nl=False)


def validate(
    config: Annotated[Path, typer.Argument(help="YAML config file to check.")],
    envoy: Annotated[bool, typer.Option("--envoy/--no-envoy", help="Also have Envoy validate the built "
                                        "resources (needs the envoy binary).")] = False,
) -> None:
    """Check a config file without serving it: exit 0 if valid, 2 with the reasons if not."""
    from xds_control.config import load_config, to_traffic_plan
    from xds_control.core.errors import InconsistentSnapshot
    from xds_control.snapshot import build_snapshot

    try:
        cfg = load_config(config)
        snap = build_snapshot(to_traffic_plan(cfg), 1)
    except (ConfigError, InconsistentSnapshot) as e:
        _fail(str(e))
    if envoy:
        from xds_control.envoy.check import validate_with_envoy

        err = validate_with_envoy(snap)
        if err:
            _fail(f"{config}: Envoy rejects the built resources:\n{err}")
    typer.echo(f"{config}: valid ({', '.join(f'{k}={v}' for k, v in snap.summary().items())})")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("bootstrap")(bootstrap)
    app.command("validate")(validate)
