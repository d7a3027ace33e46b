"""``farm gc``: keep the newest builds of each tenant, drop older records, delete
unreferenced blobs and work directories no running build owns, leaving anything younger
than an hour. ``keep`` counts per tenant, so one tenant's many builds never evict
another tenant's history.

Callers: ``farm.cli``.
"""

from __future__ import annotations

import time
from collections import Counter

from farm.records import BuildRecord, Status
from farm.settings import Settings
from farm.snapshot import remove_tree
from farm.store import Store
from farm.workdisk import release

#: Blobs younger than this are left alone: a running build may have stored them and not
#: yet saved the record that refers to them.
GRACE_SECONDS = 3600


def collect_garbage(
    store: Store, settings: Settings, keep: int, pinned: set[str] | frozenset[str] = frozenset()
) -> str:
    """Keep the newest ``keep`` records of each tenant; ``pinned`` builds (the cache's
    entries, farm.cache) keep their records and blobs too."""
    records = store.list(limit=1 << 30)  # newest first
    # Running records are never dropped: their container id is what `farm reap` needs.
    live = {r.id for r in records if r.status is Status.RUNNING}
    dropped = [r for r in _beyond_keep(records, keep) if r.id not in live | pinned]
    for record in dropped:
        store.delete(record.id)
    referenced = store.referenced_blobs()
    freed = 0
    cutoff = time.time() - GRACE_SECONDS
    for sha, path in list(store.all_blobs()):
        if sha not in referenced and path.stat().st_mtime < cutoff:
            freed += path.stat().st_size
            path.unlink()
    stale = 0
    if settings.work_dir.exists():
        for work in settings.work_dir.iterdir():
            if work.name not in live and work.stat().st_mtime < cutoff:
                release(work)  # a crashed build's filesystem first; rm stops at mounts
                remove_tree(work)
                stale += 1
    return f"removed {len(dropped)} builds, {freed} bytes of blobs, {stale} stale work dirs"


def _beyond_keep(records: list[BuildRecord], keep: int) -> list[BuildRecord]:
    """Each tenant's records after its newest ``keep`` (``records`` is newest first)."""
    seen: Counter[str] = Counter()
    beyond = []
    for record in records:
        seen[record.tenant] += 1
        if seen[record.tenant] > keep:
            beyond.append(record)
    return beyond
