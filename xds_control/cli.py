"""The ``xds-control`` command line.

Each sub-command lives next to the code it drives and registers itself here, so
this module stays a table of contents.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="xds-control",
    help="A load-aware xDS control plane for generative-AI inference fleets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported lazily so `xds-control --help` stays fast and a broken optional
    # part cannot stop the others from loading.
    from xds_control import cli_serve

    cli_serve.register(app)
    try:
        from xds_control import cli_istio  # issue 7: Istio EnvoyFilters
    except ImportError:
        pass
    else:
        cli_istio.register(app)
    from xds_control import cli_demo

    cli_demo.register(app)
    try:
        from xds_control import cli_evaluate  # issue 4: simulator
    except ImportError:
        pass
    else:
        cli_evaluate.register(app)
    try:
        from xds_control import cli_live  # issue 5: replica, loadgen, demo
    except ImportError:
        pass
    else:
        cli_live.register(app)
    try:
        from xds_control import cli_admin  # issue 6: operator surface
    except ImportError:
        pass
    else:
        cli_admin.register(app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
