"""The ``xds-control`` command line: one module per command group, registered by :mod:`.main`."""

from xds_control.cli.main import app, main

__all__ = ["app", "main"]
