"""The operator surface: gRPC admin API (``admin.proto``), bearer-token auth with tenants and roles, TLS.

Kept import-light: the controller imports :mod:`xds_control.control.operator` (operator overrides and drains,
pure) without pulling in gRPC. The generated protobuf modules come from :mod:`xds_control.admin.proto`.
"""
