import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from farm.gc import GRACE_SECONDS, collect_garbage
from farm.records import Artifact, BuildRecord, Status
from farm.settings import Settings
from farm.store import Store


def record(store: Store, build_id: str, age_days: int, blob: Path) -> BuildRecord:
    sha, size = store.put_file(blob)
    rec = BuildRecord(
        id=build_id,
        status=Status.SUCCEEDED,
        tenant="t",
        image="i",
        runtime="runsc",
        spec={},
        created_at=datetime.now(UTC) - timedelta(days=age_days),
        artifacts=[Artifact(path="out/x", sha256=sha, size=size)],
    )
    store.save(rec)
    return rec


def test_gc_keeps_the_newest_and_frees_their_orphans(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    store = Store(settings.home)
    old_blob, new_blob = tmp_path / "old", tmp_path / "new"
    old_blob.write_text("old artifact")
    new_blob.write_text("new artifact")
    old = record(store, "old", 10, old_blob)
    new = record(store, "new", 0, new_blob)
    (settings.work_dir / "stale-build" / "target").mkdir(parents=True)
    fresh_orphan = tmp_path / "fresh"
    fresh_orphan.write_text("stored by a build that has not saved its record yet")
    fresh_sha, _ = store.put_file(fresh_orphan)
    long_ago = time.time() - 2 * GRACE_SECONDS
    for blob in (store.blob_path(old.artifacts[0].sha256), settings.work_dir / "stale-build"):
        os.utime(blob, (long_ago, long_ago))

    said = collect_garbage(store, settings, keep=1)

    assert [r.id for r in store.list()] == ["new"]
    assert store.blob_path(new.artifacts[0].sha256).exists()
    assert not store.blob_path(old.artifacts[0].sha256).exists()
    assert not (settings.work_dir / "stale-build").exists()
    assert store.blob_path(fresh_sha).exists()
    assert said.startswith("removed 1 builds")
