"""The Kubernetes backend: the part of the ``Backend`` protocol a cluster can serve.

Callers: tools that list or clean up sandboxes through ``farm.sandbox.Backend`` (the
reaper logic of ``farm.runner``), pointed at a cluster. A cluster sandbox is one Build's
set of objects, identified as ``<namespace>/<build label>`` (the Build's uid); the
objects of every Build are in the controller's run namespace (``farm.k8s.names``).

``run`` does not fit a cluster and is refused: the protocol hands over host paths
(``SandboxSpec.mounts``) that no pod can mount, and a cluster build is asynchronous.
On a cluster, a build is a ``Build`` resource that ``farm controller`` runs
(``kubectl apply -f examples/k8s/build.yaml``); ``farm.k8s`` translates the same
policy (``farm.policy.sandbox_for``) into pods there.
"""

from __future__ import annotations

from collections.abc import Callable

from farm.errors import InputError
from farm.k8s import names
from farm.k8s.kube import Kube
from farm.k8s.teardown import MANAGED, Teardown
from farm.metrics import Metrics
from farm.sandbox import LogSink, SandboxResult, SandboxSpec


class KubernetesBackend:
    name = "kubernetes"

    def __init__(
        self, kube: Kube, metrics: Metrics, namespace: str | None = names.RUN_NAMESPACE
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self._teardown = Teardown(kube, metrics)

    def preflight(self, spec: SandboxSpec) -> str:
        """Always raises InputError: see the module docstring."""
        raise _no_local_sandboxes()

    def image_id(self, image: str) -> str:
        """Always raises InputError, like ``preflight``: a cluster build is a Build."""
        raise _no_local_sandboxes()

    def run(
        self, spec: SandboxSpec, *, log: LogSink, on_created: Callable[[str], None]
    ) -> SandboxResult:
        """Always raises InputError, before creating anything."""
        self.preflight(spec)
        raise AssertionError("unreachable")

    def list_sandboxes(self) -> dict[str, str]:
        """``ns/label`` -> Build name, for every Build with objects left on the cluster."""
        found: dict[str, str] = {}
        for kind in ("Job", "Pod", "NetworkPolicy", "Secret", "PersistentVolumeClaim"):
            for obj in self.kube.list(kind, self.namespace, MANAGED):
                meta = obj["metadata"]
                label = (meta.get("labels") or {}).get(names.BUILD_LABEL)
                if label:
                    build = (meta.get("annotations") or {}).get(f"{names.GROUP}/build-name", "")
                    found[f"{meta['namespace']}/{label}"] = build
        return found

    def teardown(self, sandbox_id: str) -> list[str]:
        """Delete everything left of one sandbox (foreground); idempotent. Returns the
        ``Kind/name`` of each object it asked to delete."""
        namespace, label = sandbox_id.split("/", 1)
        removed = [
            f"{o['kind']}/{o['metadata']['name']}"
            for o in self._teardown.remaining(namespace, label)
        ]
        self._teardown.step(namespace, label)
        return removed


def _no_local_sandboxes() -> InputError:
    return InputError(
        "the kubernetes backend does not run local sandboxes; submit a Build resource "
        "(kubectl apply -f examples/k8s/build.yaml) to a cluster running `farm controller`"
    )
