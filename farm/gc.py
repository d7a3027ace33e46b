"""``farm gc``: keep the newest builds, drop older records, delete unreferenced blobs
and work directories no running build owns.

Callers: ``farm.cli``.
"""

from __future__ import annotations

from farm.records import Status
from farm.runner import pid_alive
from farm.settings import Settings
from farm.snapshot import remove_tree
from farm.store import Store


def collect_garbage(store: Store, settings: Settings, keep: int) -> str:
    records = store.list(limit=1 << 30)  # newest first
    live = {r.id for r in records if r.status is Status.RUNNING and pid_alive(r.owner_pid)}
    dropped = [r for r in records[keep:] if r.id not in live]
    for record in dropped:
        store.delete(record.id)
    referenced = store.referenced_blobs()
    freed = 0
    for sha, path in list(store.all_blobs()):
        if sha not in referenced:
            freed += path.stat().st_size
            path.unlink()
    stale = 0
    if settings.work_dir.exists():
        for work in settings.work_dir.iterdir():
            if work.name not in live:
                remove_tree(work)
                stale += 1
    return f"removed {len(dropped)} builds, {freed} bytes of blobs, {stale} stale work dirs"
