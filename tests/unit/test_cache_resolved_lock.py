"""The cache refuses a build whose Cargo.lock farm resolved (``--resolve-lock``, farm
serve's ``resolve_lock``): the key names the tree (without that lock), not the mirror, so a
later build of the same tree with its own lock, or with none, must never be served it."""

from __future__ import annotations

from pathlib import Path

from farm.cache import Cache, cacheable, uncacheable_reason
from farm.records import LockResolution
from farm.store import Store

from .test_cache import make_record


def test_a_build_with_a_resolved_lock_is_never_cached_or_served(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "home", Store(tmp_path / "home"))
    resolution = LockResolution(mirror="/m", image="i", image_id="sha256:x", lock_sha256="0" * 64)
    record = make_record(cache.store, "resolved", lock_resolution=resolution)
    assert "resolved by farm against mirror /m" in (uncacheable_reason(record) or "")
    assert not cacheable(record) and not cache.offer("sha256:k", record)
    assert cache.lookup("sha256:k") is None and cache.build_ids() == set()
