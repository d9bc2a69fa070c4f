"""``python -m xds_control.cli`` = the ``xds-control`` console script."""

from xds_control.cli.main import main

main()
