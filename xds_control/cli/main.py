"""The ``xds-control`` command line.

Each sub-command is a module of this package that registers itself here, so
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


#: Modules that each add their commands with ``register(app)``, in --help order.
_COMMAND_MODULES = ("serve", "istio", "demo", "evaluate", "live", "policy", "admin")


def _register() -> None:
    # Imported here, not at module level, so importing xds_control.cli stays cheap. A module that fails to
    # import is a bug and must fail loudly, not drop its commands from --help.
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f"xds_control.cli.{name}").register(app)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
