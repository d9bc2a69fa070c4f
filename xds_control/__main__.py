"""``python -m xds_control ...`` works like the ``xds-control`` console script."""

from xds_control.cli.main import main

main()
