"""The thin API tier: one method per Kubernetes call the controller makes, on dicts.

Callers: ``farm.k8s.reconcile``, ``teardown``, ``watching``, ``leader``, ``nodemonitor``.
It uses the official ``kubernetes`` client (its configuration, auth and URL building)
but asks for raw JSON, so every layer above works on the same plain dicts the objects
module builds. This is the one place ``ApiException`` becomes a farm error
(:func:`translate`): 409 → ConflictError, 410 → GoneError, 404 → KubeNotFoundError.
Every list is paged and bounded (``farm.k8s.paging``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from farm.errors import ConflictError, GoneError, KubeNotFoundError, KubernetesError
from farm.k8s import names, paging
from farm.metrics import Metrics

Obj = dict[str, Any]
#: kind -> (API attribute, create/read/delete/list method stem).
_KINDS: dict[str, tuple[str, str]] = {
    "ServiceAccount": ("core", "service_account"),
    "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    "Secret": ("core", "secret"),
    "Pod": ("core", "pod"),
    "Service": ("core", "service"),
    "NetworkPolicy": ("networking", "network_policy"),
    "Job": ("batch", "job"),
}
#: Kinds the controller creates per Build, in teardown order (Jobs first: their pods
#: hold the volumes and the policies must outlive the pods).
OWNED_KINDS = ("Job", "Secret", "PersistentVolumeClaim", "NetworkPolicy", "ServiceAccount")


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn an ApiException raised inside into the matching farm error."""
    try:
        yield
    except ApiException as exc:
        status = int(exc.status or 0)
        message = f"{what}: {status} {exc.reason}"
        error = {409: ConflictError, 410: GoneError, 404: KubeNotFoundError}.get(
            status, KubernetesError
        )
        raise error(message, status) from exc


def _decode(response: Any) -> Obj:
    return json.loads(response.data or b"{}")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """Typed-by-convention access to the few endpoints farm uses."""

    def __init__(
        self,
        api_client: client.ApiClient,
        request_timeout: float = 30.0,
        *,
        metrics: Metrics | None = None,
        page: int = paging.PAGE,
        max_list_items: int = paging.MAX_ITEMS,
    ) -> None:
        self.api_client = api_client
        #: Where a list over ``max_list_items`` is counted (farm.k8s.paging).
        self.metrics = metrics
        self.page, self.max_list_items = page, max_list_items
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.timeout = request_timeout

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        with translate(what):
            response = fn(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
        return _decode(response)

    # --- Builds -------------------------------------------------------------------
    def _build_args(self, namespace: str) -> tuple[str, str, str, str]:
        return (names.GROUP, names.VERSION, namespace, names.PLURAL)

    def get_build(self, namespace: str, name: str) -> Obj:
        fn = self.custom.get_namespaced_custom_object
        return self._call(f"get Build {namespace}/{name}", fn, *self._build_args(namespace), name)

    def list_builds(self, max_items: int | None = None, *, keep: bool = False) -> list[Obj]:
        """Every Build in every namespace (paged; ListTooLargeError past ``max_items``,
        default ``max_list_items``; with ``keep``, a fair share instead: paging.list_all)."""
        fn = self.custom.list_cluster_custom_object
        args = (names.GROUP, names.VERSION, names.PLURAL)
        return self._paged("list Builds", names.KIND, fn, *args, max_items=max_items, keep=keep)

    def _paged(
        self,
        what: str,
        kind: str,
        fn: Callable[..., Any],
        *args: Any,
        max_items: int | None = None,
        keep: bool = False,
        **kwargs: Any,
    ) -> list[Obj]:
        def fetch(**page: Any) -> Obj:
            return self._call(what, fn, *args, **kwargs, **page)

        items, _ = paging.list_all(
            fetch,
            what,
            kind,
            page=self.page,
            max_items=self.max_list_items if max_items is None else max_items,
            metrics=self.metrics,
            keep=keep,
        )
        return items

    def patch_build_metadata(self, build: Obj, metadata: Obj) -> Obj:
        """Merge-patch metadata, guarded by the Build's resourceVersion (409 if stale)."""
        meta = build["metadata"]
        body = {"metadata": {**metadata, "resourceVersion": meta["resourceVersion"]}}
        fn = self.custom.patch_namespaced_custom_object
        args = (*self._build_args(meta["namespace"]), meta["name"], body)
        return self._call(f"patch Build {meta['name']}", fn, *args)

    def replace_build_status(self, build: Obj, status: Obj) -> Obj:
        """PUT the status subresource with the Build's resourceVersion (409 if stale)."""
        meta = build["metadata"]
        body = {**build, "status": status}
        fn = self.custom.replace_namespaced_custom_object_status
        args = (*self._build_args(meta["namespace"]), meta["name"], body)
        return self._call(f"update status of Build {meta['name']}", fn, *args)

    def patch_build_status(self, namespace: str, name: str, status: Obj) -> Obj:
        """Merge-patch part of the status without a resourceVersion (node monitor counts)."""
        fn = self.custom.patch_namespaced_custom_object_status
        args = (*self._build_args(namespace), name, {"status": status})
        return self._call(f"patch status of Build {name}", fn, *args)

    def delete_build(self, namespace: str, name: str, uid: str) -> Obj:
        """Delete one Build, only if it is still the one with ``uid`` (409 otherwise: a
        Build re-created under the same name is not the expired one). Its finalizer
        holds it until the controller has torn it down."""
        fn = self.custom.delete_namespaced_custom_object
        body = {"preconditions": {"uid": uid}}
        args = (*self._build_args(namespace), name)
        return self._call(f"delete Build {namespace}/{name}", fn, *args, body=body)

    # --- owned objects ------------------------------------------------------------
    def _method(self, verb: str, kind: str, namespaced: bool = True) -> Callable[..., Any]:
        api, stem = _KINDS[kind]
        scope = "namespaced_" if namespaced else ""
        suffix = "_for_all_namespaces" if not namespaced else ""
        return getattr(getattr(self, api), f"{verb}_{scope}{stem}{suffix}")

    def create(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        fn = self._method("create", obj["kind"])
        return self._call(f"create {obj['kind']} {meta['name']}", fn, meta["namespace"], obj)

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        fn = self._method("read", kind)
        return self._call(f"get {kind} {namespace}/{name}", fn, name, namespace)

    def delete(self, kind: str, namespace: str, name: str) -> Obj:
        """Delete with foreground propagation: the object goes after its dependents."""
        fn = self._method("delete", kind)
        body = {"propagationPolicy": "Foreground"}
        return self._call(f"delete {kind} {namespace}/{name}", fn, name, namespace, body=body)

    def list(
        self, kind: str, namespace: str | None, selector: str, fields: str | None = None
    ) -> list[Obj]:
        """Every ``kind`` matching the selectors (paged; ListTooLargeError past the bound)."""
        extra = {"field_selector": fields} if fields else {}
        if namespace is None:
            fn = self._method("list", kind, namespaced=False)
            return self._paged(f"list {kind}", kind, fn, label_selector=selector, **extra)
        fn = self._method("list", kind)
        what = f"list {kind} in {namespace}"
        return self._paged(what, kind, fn, namespace, label_selector=selector, **extra)

    def pod_log(self, namespace: str, pod: str, container: str, limit: int) -> bytes:
        with translate(f"read log of {namespace}/{pod}"):
            response = self.core.read_namespaced_pod_log(
                pod,
                namespace,
                container=container,
                limit_bytes=limit,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        return bytes(response.data)

    def event(self, involved: Obj, reason: str, message: str, warning: bool = False) -> None:
        """Record a core/v1 Event on ``involved`` (failures are not worth a retry)."""
        body = event_body(involved, reason, message, warning)
        namespace = involved["metadata"]["namespace"]
        with contextlib.suppress(KubernetesError):
            self._call(f"event {reason}", self.core.create_namespaced_event, namespace, body)

    # --- Leases ---------------------------------------------------------------------
    def get_lease(self, namespace: str, name: str) -> Obj:
        fn = self.coordination.read_namespaced_lease
        return self._call(f"get Lease {name}", fn, name, namespace)

    def create_lease(self, namespace: str, body: Obj) -> Obj:
        fn = self.coordination.create_namespaced_lease
        return self._call(f"create Lease {body['metadata']['name']}", fn, namespace, body)

    def replace_lease(self, namespace: str, body: Obj) -> Obj:
        fn = self.coordination.replace_namespaced_lease
        name = body["metadata"]["name"]
        return self._call(f"update Lease {name}", fn, name, namespace, body)


def event_body(involved: Obj, reason: str, message: str, warning: bool = False) -> Obj:
    meta = involved["metadata"]
    stamp = now()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", names.API_VERSION),
            "kind": involved.get("kind", names.KIND),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": names.MANAGED_BY},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
