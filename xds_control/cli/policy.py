"""``xds-control policy show|list``: the presets, and a policy fully resolved with the origin of every key."""

from __future__ import annotations

import json
from typing import Annotated

import typer

policy_app = typer.Typer(help="Scaling policies: the shipped presets, and how a policy resolves.",
                         no_args_is_help=True)

_ORIGIN_STYLE = {"preset": "cyan", "file": "green", "override": "bold yellow", "default": "dim"}


@policy_app.command("show")
def show(
    policy: Annotated[str, typer.Argument(metavar="NAME|FILE", help="A preset (xds-control policy list) "
                                          "or a policy YAML file.")],
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Override a key, merged like a config's autoscale.overrides; the "
        "value is YAML, e.g. max_replicas=8 or load_index.alpha=0.3 (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: policy, source, spec, keys.")] = False,
) -> None:
    """Print the fully resolved policy: every key, its value and where it came from (preset, file,
    override or default). Exit status 2 naming the key, the value and the allowed range if it is invalid."""
    from xds_control.config.policy import parse_set_options, resolve_policy_provenance

    try:
        resolved = resolve_policy_provenance(policy, parse_set_options(set_ or []))
    except ValueError as e:
        typer.echo(f"xds-control policy show: {e}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(resolved.to_json(), indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"{resolved.spec.policy}  ({escape(resolved.source)})", title_justify="left")
    t.add_column("key", overflow="fold")
    t.add_column("value", overflow="fold")
    t.add_column("from")
    for k in resolved.keys:
        t.add_row(k.key, escape(json.dumps(k.value)), f"[{_ORIGIN_STYLE[k.origin]}]{k.origin}[/]")
    Console().print(t)


@policy_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {name, summary, preset}.")] = False,
) -> None:
    """List the policy presets with a one-line summary and the preset file each resolves from."""
    from xds_control.config.policy import preset_path
    from xds_control.policies import POLICIES

    rows = [{"name": name, "summary": d.summary, "preset": str(p) if (p := preset_path(name)) else None}
            for name, d in POLICIES.items()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="policy presets (xds_control/config/presets/NAME.yaml)", title_justify="left")
    t.add_column("name")
    t.add_column("summary", overflow="fold")
    for r in rows:
        t.add_row(r["name"], escape(r["summary"] or ""))
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
