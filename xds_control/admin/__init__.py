"""The operator surface: gRPC admin API (``admin.proto``), bearer-token auth with tenants and roles, TLS.

The admin API sees a running control plane only through :class:`xds_control.admin.port.ControlPlanePort`
(read views and operator commands), which the runtime implements; it never imports the runtime. Operator
overrides live in :mod:`xds_control.control.operator` (pure). The generated protobuf modules come from
:mod:`xds_control.admin.proto`.
"""
