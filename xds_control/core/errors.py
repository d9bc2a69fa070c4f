"""Errors typed by what the caller should do next."""

from __future__ import annotations


class XdsControlError(Exception):
    """Base of every error xds-control raises on purpose."""


class ConfigError(XdsControlError, ValueError):
    """Invalid configuration: the message names the key, the value and what is allowed.

    Fix the input and try again; nothing was changed.
    """


class InconsistentSnapshot(XdsControlError, ValueError):
    """A snapshot references a resource it does not contain (a dangling reference).

    The message names the referring resource and the missing one. The snapshot was
    refused; the previous one stays in force.
    """
