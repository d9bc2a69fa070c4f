"""Hand-assembled protobuf wire bytes for the parts of xDS responses that fan out.

A DiscoveryResponse sent to a thousand streams differs only in its nonce, so each
resource is serialized once per version and responses are concatenations of
already-serialized fields (protobuf allows fields in any order and repeated
fields to be emitted one by one). Only length-delimited and varint fields are
needed here.
"""

from __future__ import annotations


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes and embedded messages."""
    return varint((number << 3) | 2) + varint(len(data)) + data


def field_str(number: int, s: str) -> bytes:
    return field_bytes(number, s.encode()) if s else b""


# google.protobuf.Any: type_url = 1, value = 2
def any_bytes(type_url: str, value: bytes) -> bytes:
    return field_str(1, type_url) + field_bytes(2, value)


# envoy.service.discovery.v3.Resource: version = 1, resource = 2 (Any), name = 3
def delta_resource_bytes(name: str, version: str, packed_any: bytes) -> bytes:
    return field_str(3, name) + field_str(1, version) + field_bytes(2, packed_any)
