"""Delete finished Builds past the operator's TTL or per-namespace history limit.

Callers: ``farm.k8s.controller`` (the leader, at start and on each reaper pass) and the
k8s tests. Only a Build that has finished *and* been torn down (``status.tornDown``) is
expired, so its finalizer has nothing left to do but remove itself: no Build is left
stuck Terminating, and no Job or pod is cut off mid-collection. Its records leave the
controller's store first (``Store.delete``; blobs they alone referenced go at the next
``farm gc``), then the Build is deleted with its uid as a precondition, so a Build
re-created under the same name is never the one deleted. A crash between the two
leaves a Build whose records are gone, which the next pass deletes again.

Past ``max_builds`` the sweep works on the fair share the list keeps
(``farm.k8s.paging``) rather than failing: a Build is chosen only from what was seen,
by the TTL alone or by having ``history`` newer finished Builds of its namespace among
them, which it then has in the whole list too; so a partial list deletes fewer Builds,
never one the whole list would keep.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from farm import reprocheck
from farm.errors import ConflictError, KubeNotFoundError
from farm.k8s import names
from farm.k8s.kube import Kube, Obj
from farm.k8s.resource import TERMINAL
from farm.metrics import Metrics
from farm.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    """How long, and how many, finished Builds are kept (0 turns either off)."""

    ttl_seconds: int
    history: int


def finished_at(build: Obj) -> datetime | None:
    """When a finished, torn-down Build finished (its ``completionTime``, else its
    creation); None for a Build that is still running, tearing down or being deleted."""
    status = build.get("status") or {}
    meta = build["metadata"]
    if status.get("phase") not in TERMINAL or not status.get("tornDown"):
        return None
    if meta.get("deletionTimestamp"):
        return None
    stamp = status.get("completionTime") or meta.get("creationTimestamp")
    if not stamp:
        return None
    when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def expired(builds: list[Obj], keep: Retention, now: datetime) -> list[Obj]:
    """The Builds to delete, oldest first: finished more than ``ttl_seconds`` ago, or
    beyond the newest ``history`` finished Builds of their namespace."""
    done = [(when, b) for b in builds if (when := finished_at(b)) is not None]
    done.sort(key=lambda wb: (wb[0], wb[1]["metadata"].get("creationTimestamp", ""), _key(wb[1])))
    chosen: dict[str, tuple[datetime, Obj]] = {}
    if keep.ttl_seconds:
        cutoff = now - timedelta(seconds=keep.ttl_seconds)
        chosen.update((_key(b), (w, b)) for w, b in done if w < cutoff)
    if keep.history:
        by_namespace: dict[str, list[tuple[datetime, Obj]]] = defaultdict(list)
        for when, build in done:
            by_namespace[build["metadata"]["namespace"]].append((when, build))
        for items in by_namespace.values():
            excess = items[: max(0, len(items) - keep.history)]  # oldest first
            chosen.update((_key(b), (w, b)) for w, b in excess)
    return [b for _, b in sorted(chosen.values(), key=lambda wb: (wb[0], _key(wb[1])))]


def _key(build: Obj) -> str:
    return f"{build['metadata']['namespace']}/{build['metadata']['name']}"


def record_ids(build: Obj) -> list[str]:
    """Every record the controller may have stored for ``build``: run 0's and each
    check run's (the spec may be unreadable by now, so every run a check may have)."""
    meta = build["metadata"]
    return [
        names.record_id(meta["namespace"], meta["name"], meta["uid"], run)
        for run in range(reprocheck.MAX_RUNS)
    ]


def sweep(
    kube: Kube,
    store: Store,
    keep: Retention,
    metrics: Metrics | None = None,
    now: datetime | None = None,
    *,
    max_builds: int | None = None,
) -> int:
    """Delete the expired Builds (records first); returns how many were deleted and
    counts them in ``farm_builds_expired_total{tenant}`` (tenant: the namespace).
    Raises KubernetesError if the Builds cannot be listed; past ``max_builds`` (default:
    the Kube's bound) it sweeps the fair share the list keeps."""
    if not keep.ttl_seconds and not keep.history:
        return 0
    builds = kube.list_builds(max_builds, keep=True)  # every page, bounded (farm.k8s.paging)
    deleted = 0
    for build in expired(builds, keep, now or datetime.now(UTC)):
        meta = build["metadata"]
        for record in record_ids(build):
            store.delete(record)
        with contextlib.suppress(KubeNotFoundError, ConflictError):
            kube.delete_build(meta["namespace"], meta["name"], meta["uid"])
            deleted += 1
            if metrics is not None:
                metrics.builds_expired.labels(tenant=meta["namespace"]).inc()
            log.info("expired Build %s/%s", meta["namespace"], meta["name"])
    return deleted
