"""Lists in pages (``limit`` + ``continue``), with a bound on the whole list.

Callers: ``farm.k8s.kube`` (``Kube.list``, ``Kube.list_builds``) and
``farm.k8s.watching`` (``Informer.relist``): every list the controller and the node
monitor make. One unpaged list of a big namespace makes the API server (and etcd) hold
the whole answer in memory at once; pages of ``PAGE`` keep each response small, and
every page comes from the first page's snapshot (the server's ``continue`` token pins
its resourceVersion; a 410 once that is compacted, which callers treat as for a watch:
list again). The bound keeps a namespace flooded with objects (or a selector that
matches far more than it should) from growing the process without end: past
``MAX_ITEMS`` the list fails with :class:`ListTooLargeError`, and
``farm_kube_list_overflow_total{kind}`` counts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from farm.errors import ListTooLargeError
from farm.metrics import Metrics

Obj = dict[str, Any]
#: Items per page: what client-go's pager asks for.
PAGE = 500
#: Items in one whole list; far above what farm makes (a few objects per running Build,
#: Builds kept by their TTL), far below what would exhaust the controller's memory.
MAX_ITEMS = 10_000


def list_all(
    fetch: Callable[..., Obj],
    what: str,
    kind: str,
    *,
    page: int = PAGE,
    max_items: int = MAX_ITEMS,
    metrics: Metrics | None = None,
) -> tuple[list[Obj], str]:
    """Every item ``fetch(limit=, _continue=)`` pages through, and the list's
    resourceVersion (the first page's snapshot).

    Raises ListTooLargeError past ``max_items`` (and counts it under ``kind``), GoneError
    if the snapshot expires between pages, KubernetesError as ``fetch`` does."""
    items: list[Obj] = []
    token: str | None = None
    version: str | None = None
    while True:
        body = fetch(limit=page, **({"_continue": token} if token else {}))
        meta = body.get("metadata") or {}
        version = version or meta.get("resourceVersion")
        items.extend(body.get("items") or [])
        if len(items) > max_items:
            if metrics is not None:
                metrics.list_overflow.labels(kind=kind).inc()
            raise ListTooLargeError(
                f"{what}: more than {max_items} {kind} objects, farm's bound on one list; "
                "delete the leftovers (finished Builds, orphaned Jobs or pods) or narrow "
                "what is listed",
                0,
            )
        token = meta.get("continue")
        if not token:
            return items, version or "0"
