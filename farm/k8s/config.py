"""The controller's installation settings: images, mirrors, sizes, the artifact endpoint.

Callers: ``farm.cli`` builds one from flags/a file for ``farm controller``; tests build
their own. Everything a cluster admin decides lives here; everything a build author
decides lives in ``Build.spec`` (``farm.k8s.resource``).
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

from farm.admission import Admission, Ceilings, ImageAllowlist
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
    mirrors: list[Mirror] = Field(default_factory=list)
    #: Extra environment of the fetch phase, e.g. git insteadOf or a cargo registry mirror.
    fetch_env: dict[str, str] = Field(default_factory=dict)
    runtime_class: str = names.RUNTIME_CLASS
    storage_class: str | None = None
    source_size: str = "5Gi"
    fetch_deadline_seconds: int = Field(900, ge=60)
    #: Added to a build's timeout for scheduling and collection.
    collect_grace_seconds: int = Field(300, ge=30)
    #: Backstop only: the controller deletes Jobs itself as soon as it has recorded them.
    ttl_seconds_after_finished: int = Field(3600, ge=60)
    #: How long the controller waits, after the build container ended, for the node
    #: monitor's record before it finishes the build with an incomplete observation
    #: (which enforce mode quarantines). Teardown waits too, so the pod outlives it.
    observe_grace_seconds: int = Field(120, ge=1)
    #: The most a Build's spec may ask for, keyed by spec field (farm.admission has the
    #: defaults); a Build above one fails with reason ExceedsLimits, creating nothing.
    ceilings: Ceilings = Field(default_factory=Ceilings)
    #: Images a Build may run (farm.imageref patterns); others fail with reason
    #: ImageNotAllowed, creating nothing. Default: farm's builder image only.
    allowed_images: ImageAllowlist = Field(default_factory=ImageAllowlist)

    def admission(self) -> Admission:
        return Admission(ceilings=self.ceilings, allowed_images=self.allowed_images)
