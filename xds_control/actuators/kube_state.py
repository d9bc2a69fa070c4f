"""Operator state (pins, drains, pauses, policies set through the admin API) on Kubernetes: one ConfigMap that every
control-plane instance reads and writes, so the state survives a restart *and* is the same on every instance.

The store has the interface of :class:`xds_control.runtime.operator_store.FileStateStore` (``load`` / ``save``)
plus :meth:`KubeStateStore.changed`, which a poll loop calls: it returns the stored data when another instance
wrote something since this one last read or wrote it, else None. The data sits under one key (``state.json``)
of the ConfigMap ``<lease_name>-operator``, written with a merge patch (the whole state, so the last writer wins, as
with two operators on the same file); the ConfigMap is created on the first save.

RBAC: ``configmaps`` create, and get, patch of that name (``istio/rbac.yaml``).
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.rest import ApiException

from xds_control.actuators.peers import configmap_manifest

__all__ = ["KubeStateStore", "STATE_KEY"]

STATE_KEY = "state.json"


class KubeStateStore:
    def __init__(self, api_client: ApiClient, namespace: str, name: str, *, request_timeout_s: float = 5.0) -> None:
        self.api = CoreV1Api(api_client)
        self.namespace, self.name = namespace, name
        self.request_timeout_s = request_timeout_s
        #: The text last read or written by this instance (what :meth:`changed` compares with).
        self._known: str | None = None

    def __str__(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def _read(self) -> str | None:
        try:
            cm = self.api.read_namespaced_config_map(self.name, self.namespace, _request_timeout=self.request_timeout_s)
        except ApiException as e:
            if e.status == 404:
                return None
            raise OSError(f"reading {self} failed: HTTP {e.status} {e.reason}") from None
        return (cm.data or {}).get(STATE_KEY)

    @staticmethod
    def _parse(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{STATE_KEY} is not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None

    def load(self) -> Any | None:
        text = self._read()
        self._known = text
        return None if text is None else self._parse(text)

    def changed(self) -> Any | None:
        """The stored data if it differs from what this instance last read or wrote, else None."""
        text = self._read()
        if text is None or text == self._known:
            return None
        self._known = text
        return self._parse(text)

    def save(self, data: Any) -> None:
        text = json.dumps(data, indent=1, sort_keys=True)
        patch = {"data": {STATE_KEY: text}}
        try:
            self.api.patch_namespaced_config_map(self.name, self.namespace, patch,
                                                 _request_timeout=self.request_timeout_s)
        except ApiException as e:
            if e.status != 404:
                raise OSError(f"writing {self} failed: HTTP {e.status} {e.reason}") from None
            body = configmap_manifest(self.name, self.namespace, {STATE_KEY: text})
            try:
                self.api.create_namespaced_config_map(self.namespace, body, _request_timeout=self.request_timeout_s)
            except ApiException as e2:
                if e2.status != 409:
                    raise OSError(f"creating {self} failed: HTTP {e2.status} {e2.reason}") from None
                self.api.patch_namespaced_config_map(self.name, self.namespace, patch,
                                                     _request_timeout=self.request_timeout_s)
        self._known = text
