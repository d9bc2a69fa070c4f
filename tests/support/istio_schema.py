"""Istio's EnvoyFilter (networking.istio.io/v1alpha3) as a JSON Schema, for validating rendered resources.

Written from the OpenAPI schema Istio publishes in its CRD (the ``EnvoyFilter`` entry of the CRDs in
istio/api and istio/istio): the same fields, types, enums and the rule that a match names at most one
of listener / routeConfiguration / cluster. Stricter than the CRD in one way on purpose: unknown fields
are errors (the API server would silently prune them, which would hide a typo). ``patch.value`` is free
form, as in the CRD (``x-kubernetes-preserve-unknown-fields``): Envoy validates it (see the e2e tests).
"""

from __future__ import annotations

from typing import Any

import jsonschema

_STR = {"type": "string"}
_INT = {"type": "integer"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


_DNS_SUBDOMAIN = {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
_DNS_LABEL = {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

CLUSTER_MATCH = _obj({"name": _STR, "portNumber": {"type": "integer", "minimum": 0, "maximum": 65535},
                      "service": _STR, "subset": _STR})
LISTENER_MATCH = _obj({
    "name": _STR, "portName": _STR, "portNumber": _INT,
    "filterChain": _obj({
        "applicationProtocols": _STR, "destinationPort": _INT, "name": _STR, "sni": _STR,
        "transportProtocol": _STR,
        "filter": _obj({"name": _STR, "subFilter": _obj({"name": _STR})}),
    }),
    "listenerFilter": _STR,
})
ROUTE_MATCH = _obj({
    "gateway": _STR, "name": _STR, "portName": _STR, "portNumber": _INT,
    "vhost": _obj({"name": _STR, "domainName": _STR,
                   "route": _obj({"name": _STR, "action": {"enum": ["ANY", "ROUTE", "REDIRECT", "DIRECT_RESPONSE"]}})}),
})

ENVOY_FILTER_SPEC = _obj({
    "workloadSelector": _obj({"labels": _STRING_MAP}),
    "targetRefs": {"type": "array", "items": _obj({"group": _STR, "kind": _STR, "name": _STR}, ("kind", "name"))},
    "priority": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
    "configPatches": {"type": "array", "items": _obj({
        "applyTo": {"enum": ["INVALID", "LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER",
                             "ROUTE_CONFIGURATION", "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG",
                             "BOOTSTRAP", "LISTENER_FILTER"]},
        "match": {
            **_obj({
                "context": {"enum": ["ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"]},
                "proxy": _obj({"metadata": _STRING_MAP, "proxyVersion": _STR}),
                "listener": LISTENER_MATCH, "routeConfiguration": ROUTE_MATCH, "cluster": CLUSTER_MATCH,
            }),
            # At most one of listener / routeConfiguration / cluster (a oneof in the proto).
            "oneOf": [
                {"not": {"anyOf": [{"required": ["listener"]}, {"required": ["routeConfiguration"]},
                                   {"required": ["cluster"]}]}},
                {"required": ["listener"]}, {"required": ["routeConfiguration"]}, {"required": ["cluster"]},
            ],
        },
        "patch": _obj({
            "operation": {"enum": ["INVALID", "MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER",
                                   "INSERT_FIRST", "REPLACE"]},
            "value": {"type": "object"},
            "filterClass": {"enum": ["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]},
        }),
    })},
})

ENVOY_FILTER = _obj({
    "apiVersion": {"const": "networking.istio.io/v1alpha3"},
    "kind": {"const": "EnvoyFilter"},
    "metadata": _obj({"name": _DNS_SUBDOMAIN, "namespace": _DNS_LABEL, "labels": _STRING_MAP,
                      "annotations": _STRING_MAP}, ("name",)),
    "spec": ENVOY_FILTER_SPEC,
}, ("apiVersion", "kind", "metadata", "spec"))


def validate_envoyfilter(obj: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``obj`` is not a valid EnvoyFilter."""
    jsonschema.validate(obj, ENVOY_FILTER, cls=jsonschema.Draft202012Validator)
    for label_value in (obj["metadata"].get("labels") or {}).values():
        if len(label_value) > 63:
            raise jsonschema.ValidationError(f"label value {label_value!r} is longer than 63 characters")
