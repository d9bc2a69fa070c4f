"""``xds-control istio render``: the EnvoyFilters that attach Istio sidecars to xds-control."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

istio_app = typer.Typer(help="Istio integration: EnvoyFilters for sidecars (see README 'Istio').",
                        no_args_is_help=True)


@istio_app.command("render")
def render(
    config: Annotated[Path, typer.Option("--config", "-c", help="xds-control YAML config with a kubernetes section.")],
    namespace: Annotated[str | None, typer.Option(
        "--namespace", "-n", help="Namespace of the EnvoyFilters (the clients' namespace, or Istio's root "
        "namespace for the whole mesh); default: kubernetes.namespace.")] = None,
    xds_address: Annotated[str | None, typer.Option(
        "--xds-address", help="HOST:PORT sidecars use to reach xds-control; default: its Service "
        "(kubernetes.istio.xds_service, .xds_port).")] = None,
) -> None:
    """Print (YAML, one document per EnvoyFilter) the EnvoyFilters for the config's kubernetes.pools.

    Apply them with `kubectl apply -f -`. Exit status 2 with the reason if the config is invalid.
    """
    from xds_control.config import load_config
    from xds_control.core.errors import ConfigError
    from xds_control.istio import render_envoyfilters

    addr = None
    if xds_address is not None:
        host, sep, port = xds_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            typer.echo(f"xds-control: --xds-address: {xds_address!r} is invalid; expected HOST:PORT", err=True)
            raise typer.Exit(2)
        addr = (host.strip("[]"), int(port))
    try:
        docs = render_envoyfilters(load_config(config), namespace, addr)
    except (ConfigError, ValueError) as e:
        typer.echo(f"xds-control: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(render_yaml(docs), nl=False)


def render_yaml(docs: list[dict]) -> str:
    import yaml

    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=120)


def register(app: typer.Typer) -> None:
    app.add_typer(istio_app, name="istio")
