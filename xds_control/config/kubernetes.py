"""The ``kubernetes:`` section of the config file: where the replicas of autoscaled pools live
on Kubernetes, how to reach the API server, leader election, and what ``istio render`` needs.

Example::

    kubernetes:
      namespace: inference            # default: the service account's namespace in-cluster, else "default"
      kubeconfig: ~/.kube/config      # unset: in-cluster service account, else the default kubeconfig
      pools:
        llm-v1: {deployment: llm-v1, service: llm-v1, port: 8000}
      leader_election:
        lease_name: xds-control
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DnsLabel = Annotated[str, Field(pattern=_DNS_LABEL, max_length=63,
                                description="a DNS-1123 label: lower-case letters, digits and '-'")]
DnsName = Annotated[str, Field(pattern=_DNS_SUBDOMAIN, max_length=253,
                               description="a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KubePoolConfig(_Strict):
    """Where one autoscaled pool's replicas are: a Deployment, selected by a Service."""

    deployment: DnsName
    """The ``apps/v1`` Deployment whose ``scale`` subresource is read and patched."""
    service: DnsLabel | None = None
    """The Service selecting exactly the Deployment's pods (its EndpointSlices are watched);
    the deployment's name when unset."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """The Service port: the sidecar's outbound cluster is ``outbound|PORT||SERVICE.NAMESPACE.svc.<domain>``."""
    target_port: str | Annotated[int, Field(ge=1, le=65535)] | None = None
    """Which EndpointSlice port the replicas serve on (a port name or number); the slice's first port when unset."""

    @property
    def service_name(self) -> str:
        return self.service or self.deployment


class LeaderElectionConfig(_Strict):
    """A ``coordination.k8s.io/v1`` Lease; only its holder decides and scales (client-go's timings)."""

    enabled: bool = True
    lease_name: DnsName = "xds-control"
    lease_namespace: DnsLabel | None = None
    """The namespace of the Lease; ``kubernetes.namespace`` when unset."""
    identity: str | None = None
    """This replica's identity in the Lease; ``$POD_NAME``, else the host name, plus a random suffix."""
    lease_duration_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    """How long a non-leader waits, after it last saw the Lease change, before it may take it."""
    renew_deadline_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """A leader that has not renewed for this long stops deciding (must be < lease_duration_s)."""
    retry_period_s: Annotated[float, Field(gt=0, le=600)] = 2.0
    """How often the Lease is renewed or tried."""

    @model_validator(mode="after")
    def _timings(self) -> LeaderElectionConfig:
        if not self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(f"renew_deadline_s ({self.renew_deadline_s:g}) must be below lease_duration_s "
                             f"({self.lease_duration_s:g}), or two replicas could both lead")
        if not self.retry_period_s < self.renew_deadline_s:
            raise ValueError(f"retry_period_s ({self.retry_period_s:g}) must be below renew_deadline_s "
                             f"({self.renew_deadline_s:g})")
        return self


class IstioConfig(_Strict):
    """What ``xds-control istio render`` needs to attach sidecars to xds-control."""

    xds_service: DnsLabel = "xds-control"
    """The Service in front of xds-control's ADS/EDS port."""
    xds_namespace: DnsLabel | None = None
    """Its namespace; ``kubernetes.namespace`` when unset."""
    xds_port: Annotated[int, Field(ge=1, le=65535)] = 18000
    cluster_domain: DnsName = "cluster.local"


class KubernetesConfig(_Strict):
    """Replicas of autoscaled pools are pods of Deployments; see README "Kubernetes"."""

    namespace: DnsLabel | None = None
    """Namespace of the Deployments, Services and (by default) the Lease; the service account's
    namespace in-cluster, else the kubeconfig context's, else ``default``."""
    kubeconfig: str | None = None
    """Path of a kubeconfig; unset: the in-cluster service account when running in a pod, else the default
    kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``)."""
    context: str | None = None
    """kubeconfig context (its current context when unset)."""
    pools: dict[str, KubePoolConfig] = Field(default_factory=dict)
    """Pool name -> where its replicas are. Every autoscaled pool must be listed."""
    resync_s: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    """The EndpointSlice cache is rebuilt from a fresh list this often, whatever the watch said."""
    watch_timeout_s: Annotated[int, Field(ge=1, le=3600)] = 60
    """Server-side timeout of one watch request (``timeoutSeconds``); the watch then resumes."""
    stop_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    """A pod the scaler asked to remove that is still there after this long may be asked again."""
    leader_election: LeaderElectionConfig = Field(default_factory=LeaderElectionConfig)
    istio: IstioConfig = Field(default_factory=IstioConfig)

    def check_pools(self, autoscaled: list[str], all_pools: list[str]) -> None:
        """Raise ValueError unless the pool map names exactly autoscaled pools and covers all of them."""
        for name in self.pools:
            if name not in all_pools:
                raise ValueError(f"kubernetes.pools: {name!r} is not a pool; known pools: {sorted(all_pools)}")
            if name not in autoscaled:
                raise ValueError(f"kubernetes.pools: pool {name!r} has no autoscale section; only autoscaled "
                                 "pools are scaled on Kubernetes")
        missing = [p for p in autoscaled if p not in self.pools]
        if missing:
            raise ValueError(f"kubernetes.pools: autoscaled pools {missing} are missing; with a kubernetes "
                             "section every autoscaled pool runs as a Deployment")
        deps = [p.deployment for p in self.pools.values()]
        if len(set(deps)) != len(deps):
            raise ValueError("kubernetes.pools: two pools name the same deployment")
