"""A real Envoy for tests: the package's EnvoyProcess under its short test name."""

from xds_control.envoy.process import EnvoyProcess as Envoy

__all__ = ["Envoy"]
