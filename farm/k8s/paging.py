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

A list whose overflow must not stop its caller (``keep=True``: the controller's Build
informer and the expiry sweep, whose Builds any tenant with ``create builds`` can pile
up) reads every page instead and keeps at most ``max_items`` of them, trimmed from the
namespaces that hold the most (:class:`FairShare`): one tenant's flood costs that
tenant's Builds their turn, never another namespace's. It is still counted, and logged
with the namespaces holding the most. Only callers for which a missing object is merely
"not handled yet" may keep; one that would judge an unseen object gone (the orphan
reaper) must let the list fail.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from farm.errors import ListTooLargeError
from farm.metrics import Metrics

log = logging.getLogger(__name__)
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
    keep: bool = False,
) -> tuple[list[Obj], str]:
    """Every item ``fetch(limit=, _continue=)`` pages through, and the list's
    resourceVersion (the first page's snapshot).

    Raises ListTooLargeError past ``max_items`` (and counts it under ``kind``), GoneError
    if the snapshot expires between pages, KubernetesError as ``fetch`` does. With
    ``keep``, past ``max_items`` it counts and logs instead, and returns a fair share
    of at most ``max_items`` (:class:`FairShare`)."""
    if keep:
        return _list_fair(fetch, what, kind, page, max_items, metrics)
    items: list[Obj] = []
    pages = _Pages(fetch, page)
    for got in pages:
        items.extend(got)
        if len(items) > max_items:
            if metrics is not None:
                metrics.list_overflow.labels(kind=kind).inc()
            raise ListTooLargeError(
                f"{what}: more than {max_items} {kind} objects, farm's bound on one list; "
                "delete the leftovers (finished Builds, orphaned Jobs or pods) or narrow "
                "what is listed",
                0,
            )
    return items, pages.version


class _Pages:
    """Each page's items, following the server's continue tokens; ``version`` is the
    first resourceVersion a page names ("0" if none): the list's snapshot, that a watch
    continues from."""

    def __init__(self, fetch: Callable[..., Obj], page: int) -> None:
        self.fetch, self.page, self.version = fetch, page, "0"

    def __iter__(self) -> Iterator[list[Obj]]:
        token: str | None = None
        while True:
            body = self.fetch(limit=self.page, **({"_continue": token} if token else {}))
            meta = body.get("metadata") or {}
            if self.version == "0":  # the first page that names one
                self.version = meta.get("resourceVersion") or "0"
            yield body.get("items") or []
            token = meta.get("continue")
            if not token:
                return


class FairShare:
    """At most ``bound`` objects, kept per namespace: when more arrive, the namespaces
    holding the most are trimmed to a common cap (the largest that fits; the remainder
    goes one each to the first namespaces over it), so every namespace under the cap
    keeps all of its objects. ``seen`` counts every object offered, per namespace."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.kept: dict[str, list[Obj]] = {}
        self.seen: Counter[str] = Counter()

    def add(self, items: list[Obj]) -> None:
        for obj in items:
            namespace = (obj.get("metadata") or {}).get("namespace", "")
            self.kept.setdefault(namespace, []).append(obj)
            self.seen[namespace] += 1
        if sum(len(v) for v in self.kept.values()) > self.bound:
            self._trim()

    @property
    def overflowed(self) -> bool:
        return sum(self.seen.values()) > self.bound

    def items(self) -> list[Obj]:
        return [obj for objs in self.kept.values() for obj in objs]

    def _trim(self) -> None:
        sizes = [len(v) for v in self.kept.values()]
        low, high = 0, max(sizes)  # the largest cap whose total fits the bound
        while low < high:
            cap = (low + high + 1) // 2
            if sum(min(n, cap) for n in sizes) <= self.bound:
                low = cap
            else:
                high = cap - 1
        spare = self.bound - sum(min(n, low) for n in sizes)
        for objs in self.kept.values():
            extra = 1 if spare > 0 and len(objs) > low else 0
            spare -= extra
            del objs[low + extra :]


def _list_fair(
    fetch: Callable[..., Obj],
    what: str,
    kind: str,
    page: int,
    max_items: int,
    metrics: Metrics | None,
) -> tuple[list[Obj], str]:
    share = FairShare(max_items)
    pages = _Pages(fetch, page)
    for got in pages:
        share.add(got)
    if share.overflowed:
        if metrics is not None:
            metrics.list_overflow.labels(kind=kind).inc()
        most = ", ".join(f"{ns or '(cluster)'}: {n}" for ns, n in share.seen.most_common(5))
        log.warning(
            "%s: %d %s objects, more than farm's bound of %d on one list; kept %d, trimmed "
            "from the namespaces holding the most (%s). Limit those namespaces with a "
            'ResourceQuota (docs/kubernetes.md, "Builds per namespace") or raise the bound',
            what,
            sum(share.seen.values()),
            kind,
            max_items,
            max_items,
            most,
        )
    return share.items(), pages.version
