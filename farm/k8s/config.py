"""The controller's installation settings: images, mirrors, sizes, the artifact endpoint.

Callers: ``farm.cli`` builds one from flags/a file for ``farm controller``; tests build
their own. Everything a cluster admin decides lives here; everything a build author
decides lives in ``Build.spec`` (``farm.k8s.resource``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from farm.admission import Admission, Ceilings, ImageAllowlist
from farm.errors import SpecError
from farm.fetch.registry import CRATES_IO, CRATES_IO_INDEX, Registry
from farm.httpserver import HttpLimits
from farm.k8s import names


class Mirror(BaseModel):
    """One place the fetch phase may reach: a CIDR and its TCP ports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cidr: str
    ports: list[int] = Field(default_factory=lambda: [443], min_length=1)

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError as exc:
            raise ValueError(f"mirror cidr {value!r}: {exc}") from None


class ClusterRegistry(BaseModel):
    """One of the operator's cargo registries, as the fetch pod reaches it. A Build may
    only name one (``spec.registry``); its URL and token are never the tenant's.
    ``token_secret``: a Secret in the run namespace whose key ``token`` the fetch pod
    mounts read-only (never in the spec, the environment or a log)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = CRATES_IO
    index: str = CRATES_IO_INDEX
    token_secret: str | None = Field(None, pattern=names.DNS_SUBDOMAIN, max_length=253)

    @field_validator("index")
    @classmethod
    def _index(cls, value: str) -> str:
        return Registry(index=value).index  # farm.fetch's rule: a sparse http(s) index

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return Registry(name=value).name

    def registry(self, token_file: str | None) -> Registry:
        """The ``farm.fetch`` registry of the fetch pod (``token_file``: its mount)."""
        token = Path(token_file) if self.token_secret and token_file else None
        return Registry(name=self.name, index=self.index, token_file=token)


def _image_tag(name: str) -> str:
    # Imported here: farm.images pulls in the Docker SDK, which a controller that only
    # reads its config does not otherwise need at import time.
    from farm.images import recipe

    return recipe(name).tag


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Namespace and pod labels of the controller: the collect phase may reach only it.
    namespace: str = "farm-system"
    controller_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "farm-controller"}
    )
    #: Where every Build's Jobs, pods, sources volume, token Secrets, NetworkPolicies
    #: and ServiceAccounts are created, whatever namespace the Build is in. Tenants get
    #: no grant here (only on ``builds`` in their own namespaces), so nobody but the
    #: controller and the Job controller creates objects in it: a tenant who may edit
    #: their namespace cannot mount a build's volume, read or plant its token, or pass
    #: a pod off as its build pod (docs/kubernetes.md, "Where a Build's objects live").
    run_namespace: str = Field(names.RUN_NAMESPACE, pattern=names.DNS_LABEL, max_length=63)
    #: The controller's Service in ``namespace``: the collector uploads to its ClusterIP
    #: and its port named ``artifacts`` (farm.k8s.endpoint), never to its DNS name,
    #: since the collect NetworkPolicy allows no DNS (docs/kubernetes.md).
    artifact_service: str = names.ARTIFACT_SERVICE
    #: The port the controller's pods listen on for uploads (the Service's targetPort):
    #: the one port the collect NetworkPolicy opens, as it is evaluated after the DNAT.
    artifact_port: int = 8443
    #: Timeout and connection caps of that endpoint (farm.httpserver).
    artifact_http: HttpLimits = Field(default_factory=HttpLimits)
    #: farm's own images (farm.images): the fetch phase's git + cargo, and the farm
    #: image whose collector runs in build pods. Helm sets both from its values.
    fetch_image: str = Field(default_factory=lambda: _image_tag("fetch"))
    collector_image: str = Field(default_factory=lambda: _image_tag("farm"))
    #: Where the fetch pod may connect (its NetworkPolicy's egress, with cluster DNS):
    #: list the CIDRs of the registries' hosts (index and download), and of the git hosts.
    mirrors: list[Mirror] = Field(default_factory=list)
    #: The cargo registries the fetch pod downloads from (``farm fetch``); a Build names
    #: one in ``spec.registry`` (default: the first). Their hosts must be in ``mirrors``.
    registries: list[ClusterRegistry] = Field(
        default_factory=lambda: [ClusterRegistry()], min_length=1
    )
    #: Hosts Cargo.lock's git dependencies may be fetched from (``farm fetch --git-host``);
    #: none by default, so a tenant's lock cannot aim git at an internal address.
    git_hosts: list[str] = Field(default_factory=list)
    #: Extra environment of the fetch pod, e.g. git insteadOf for the sources' mirror.
    fetch_env: dict[str, str] = Field(default_factory=dict)
    runtime_class: str = names.RUNTIME_CLASS
    storage_class: str | None = None
    source_size: str = "5Gi"
    fetch_deadline_seconds: int = Field(900, ge=60)
    #: Added to a build's timeout for scheduling and collection.
    collect_grace_seconds: int = Field(300, ge=30)
    #: How long the collector keeps retrying a controller that is unreachable or not
    #: serving (a restart, a rollout, a takeover) before the collect fails: at most
    #: ``collect_grace_seconds``, the time a build that used its whole timeout has left.
    collect_retry_seconds: int = Field(240, ge=10)
    #: Backstop only: the controller deletes Jobs itself as soon as it has recorded them.
    ttl_seconds_after_finished: int = Field(3600, ge=60)
    #: How long the controller waits, after the build container ended, for the node
    #: monitor's record before it finishes the build with an incomplete observation
    #: (which enforce mode quarantines). Teardown waits too, so the pod outlives it.
    observe_grace_seconds: int = Field(120, ge=1)
    #: Finished Builds are deleted (with their records in the controller's store) this
    #: long after they finished, once torn down (farm.k8s.expiry); 0 keeps them forever.
    build_ttl_seconds: int = Field(7 * 86400, ge=0)
    #: And beyond this many finished Builds per namespace, oldest first; 0: no limit.
    build_history_limit: int = Field(100, ge=0)
    #: The most Builds (all namespaces) the controller holds from one list: its Build
    #: informer and the expiry sweep keep this many, trimmed from the namespaces holding
    #: the most, and go on (farm.k8s.paging); the orphan reaper, which must see every
    #: Build, skips its pass. Bounds the controller's memory; the per-tenant bound is a
    #: ResourceQuota on count/builds.farm.dev (docs/kubernetes.md, "Builds per namespace").
    max_builds: int = Field(100_000, ge=1)
    #: The most a Build's spec may ask for, keyed by spec field (farm.admission has the
    #: defaults); a Build above one fails with reason ExceedsLimits, creating nothing.
    ceilings: Ceilings = Field(default_factory=Ceilings)
    #: Images a Build may run (farm.imageref patterns); others fail with reason
    #: ImageNotAllowed, creating nothing. Default: farm's builder image only.
    allowed_images: ImageAllowlist = Field(default_factory=ImageAllowlist)

    @field_validator("registries")
    @classmethod
    def _unique(cls, value: list[ClusterRegistry]) -> list[ClusterRegistry]:
        seen = [r.name for r in value]
        twice = sorted({n for n in seen if seen.count(n) > 1})
        if twice:
            raise ValueError(f"registry {twice[0]!r} is named twice")
        return value

    @field_validator("git_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not names.GIT_HOST.fullmatch(host):
                raise ValueError(f"git host {host!r}: give a host name, e.g. github.com")
        return [h.lower() for h in value]

    @model_validator(mode="after")
    def _retry_within_grace(self) -> ControllerConfig:
        if self.collect_retry_seconds > self.collect_grace_seconds:
            raise ValueError(
                f"collect_retry_seconds ({self.collect_retry_seconds}) is more than "
                f"collect_grace_seconds ({self.collect_grace_seconds}): the Job's deadline "
                "would end the collector first; lower it or raise collect_grace_seconds"
            )
        return self

    def registry_for(self, name: str | None) -> ClusterRegistry:
        """The registry a Build's ``spec.registry`` names (None: the first). Raises
        SpecError naming the operator's registries, before anything is created."""
        if name is None:
            return self.registries[0]
        for registry in self.registries:
            if registry.name == name:
                return registry
        known = ", ".join(r.name for r in self.registries)
        raise SpecError(
            [
                f"registry: {name!r} is not one of this cluster's registries ({known}); "
                "name one of them or leave it out"
            ]
        )

    def admission(self) -> Admission:
        return Admission(ceilings=self.ceilings, allowed_images=self.allowed_images)
