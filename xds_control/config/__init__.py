"""Configuration: the YAML schema and its translation into a static traffic plan."""

from xds_control.config.load import load_config, parse_config, parse_text, to_traffic_plan
from xds_control.config.schema import Config

__all__ = ["Config", "load_config", "parse_config", "parse_text", "to_traffic_plan"]
