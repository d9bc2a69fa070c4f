"""prometheus-operator's ServiceMonitor (monitoring.coreos.com/v1) as a JSON Schema, for the chart's object.

Written from the OpenAPI schema in the operator's CRD (``monitoring.coreos.com_servicemonitors.yaml``), for the
fields a ServiceMonitor of one Service's metrics port uses: the same names, types and duration pattern.
Stricter than the CRD on purpose, as ``istio_schema`` is: unknown fields are errors (the API server would
prune them silently and hide a typo), and only the fields listed here are known.
"""

from __future__ import annotations

from typing import Any

import jsonschema

# The CRD's Duration: "30s", "1m30s", "500ms", ...
_DURATION = {"type": "string",
             "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STR = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DNS_SUBDOMAIN = {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


_SELECTOR = _obj({
    "matchLabels": _STRING_MAP,
    "matchExpressions": {"type": "array", "items": _obj(
        {"key": _STR, "operator": _STR, "values": {"type": "array", "items": _STR}}, ("key", "operator"))},
})
_ENDPOINT = _obj({
    "port": _STR, "targetPort": {"type": ["integer", "string"]}, "path": _STR, "scheme": {"enum": ["http", "https"]},
    "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
    "params": {"type": "object", "additionalProperties": {"type": "array", "items": _STR}},
})

SERVICE_MONITOR = _obj({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "ServiceMonitor"},
    "metadata": _obj({"name": _DNS_SUBDOMAIN, "namespace": _DNS_SUBDOMAIN, "labels": _STRING_MAP,
                      "annotations": _STRING_MAP}, ("name",)),
    "spec": _obj({
        "selector": _SELECTOR,
        "namespaceSelector": _obj({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}),
        "endpoints": {"type": "array", "items": _ENDPOINT},
        "jobLabel": _STR,
        "targetLabels": {"type": "array", "items": _STR},
        "podTargetLabels": {"type": "array", "items": _STR},
        "sampleLimit": {"type": "integer", "minimum": 0},
    }, ("selector",)),
}, ("apiVersion", "kind", "metadata", "spec"))


def validate_servicemonitor(doc: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` is a well-formed ServiceMonitor."""
    jsonschema.validate(doc, SERVICE_MONITOR)
