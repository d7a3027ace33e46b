"""Where a build pod's collector uploads: the controller Service's ClusterIP, not its name.

Callers: ``farm.k8s.reconcile``, before it creates a build Job (the collector
container's ``FARM_ARTIFACT_URL``). The collect NetworkPolicy lets the pod reach only
the controller's pods on the artifact port, with no DNS, so the URL must be an IP
literal: the Service's ClusterIP, which kube-proxy DNATs to a controller pod before
the policy is evaluated (docs/kubernetes.md, "Why a ClusterIP and not DNS").
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from farm.errors import ArtifactServiceError, KubeNotFoundError, KubernetesError
from farm.k8s import names
from farm.k8s.config import ControllerConfig
from farm.k8s.kube import Kube, Obj

#: How long a looked-up address is reused. A Service keeps its ClusterIP for its whole
#: life; re-reading now and then catches one deleted and re-created (a reinstall).
CACHE_SECONDS = 60.0


def upload_url(service: Obj) -> str:
    """``http://<clusterIP>:<port named artifacts>`` of ``service`` (IPv6 in brackets).

    Raises ArtifactServiceError if the Service is headless or has no such port."""
    spec = service.get("spec") or {}
    name = (service.get("metadata") or {}).get("name", "?")
    cluster_ip = str(spec.get("clusterIP") or "")
    try:
        address = ipaddress.ip_address(cluster_ip)
    except ValueError:
        raise ArtifactServiceError(
            f"Service {name} has no ClusterIP ({cluster_ip or 'none'}): a headless Service "
            "cannot be reached without DNS, which the collect NetworkPolicy does not allow"
        ) from None
    ports = [p for p in spec.get("ports") or [] if p.get("name") == names.ARTIFACT_PORT_NAME]
    if not ports:
        raise ArtifactServiceError(f"Service {name} has no port named {names.ARTIFACT_PORT_NAME}")
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{int(ports[0]['port'])}"


class ArtifactEndpoint:
    """The configured Service's upload URL, looked up through the API and reused for
    ``CACHE_SECONDS``; a failed lookup is not cached, so the next build Job retries."""

    def __init__(
        self, kube: Kube, config: ControllerConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kube, self.config, self.clock = kube, config, clock
        self._cached: tuple[str, float] | None = None

    def url(self) -> str:
        """The collector's ``FARM_ARTIFACT_URL``. Raises ArtifactServiceError (with what
        the operator must fix) if the Service is missing, headless or cannot be read."""
        now = self.clock()
        if self._cached is not None and now - self._cached[1] < CACHE_SECONDS:
            return self._cached[0]
        self._cached = None
        found = upload_url(self._service())
        self._cached = (found, now)
        return found

    def _service(self) -> Obj:
        namespace, name = self.config.namespace, self.config.artifact_service
        where = f"Service {namespace}/{name} (controller config artifact_service)"
        try:
            return self.kube.get("Service", namespace, name)
        except KubeNotFoundError:
            raise ArtifactServiceError(f"{where} does not exist") from None
        except KubernetesError as exc:
            raise ArtifactServiceError(f"{where} cannot be read: {exc}") from exc
