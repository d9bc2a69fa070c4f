"""A Typer app holding one sub-command group, to drive a command through ``typer.testing.CliRunner``."""

from __future__ import annotations

from collections.abc import Callable

import typer


def command_app(register: Callable[[typer.Typer], None]) -> typer.Typer:
    """An app with the commands ``register`` adds, kept as sub-commands (``app ["evaluate", ...]``) by a no-op
    callback, as ``xds-control`` has them."""
    app = typer.Typer(add_completion=False)
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app
