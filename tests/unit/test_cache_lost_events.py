"""The cache refuses a record whose observation lost events: provenance already signs it
as incomplete, so its clean look proves nothing and it is never stored or served."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.cache import Cache, cacheable, uncacheable_reason
from farm.records import ObservationSummary

from .test_cache import make_record


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    home = tmp_path / "home"
    from farm.store import Store

    return Cache(home, Store(home))


@pytest.mark.parametrize(
    "observation",
    [
        ObservationSummary(mode="audit", events=10, dropped=1),
        ObservationSummary(mode="enforce", events=10, unparseable=2),
        ObservationSummary(mode="audit", events=10, overflow=3),
        ObservationSummary(mode="audit", events=10, complete=False, problem="no hang-up"),
    ],
    ids=["dropped", "unparseable", "overflow", "incomplete"],
)
def test_a_record_that_lost_events_is_never_cached_or_served(
    cache: Cache, observation: ObservationSummary
) -> None:
    record = make_record(cache.store, "lossy", observation=observation)
    assert "incomplete" in (uncacheable_reason(record) or "")
    assert not cache.offer("sha256:k", record)
    assert cache.lookup("sha256:k") is None and cache.build_ids() == set()


def test_an_entry_whose_record_later_shows_lost_events_is_not_served(cache: Cache) -> None:
    """A hit re-reads the record: an entry made before the loss was known (an older farm,
    or a record updated since) is dropped, not served."""
    record = make_record(cache.store, "b1", observation=ObservationSummary(mode="audit"))
    assert cacheable(record) and cache.offer("sha256:k", record)
    assert cache.lookup("sha256:k").id == "b1"
    record.observation = ObservationSummary(mode="audit", events=10, dropped=5)
    cache.store.save(record)
    assert cache.lookup("sha256:k") is None
    assert cache.build_ids() == set()


def test_a_hit_also_reads_completeness_from_the_signed_provenance(cache: Cache) -> None:
    """An index edited to hide the loss (the record now says complete) still misses: the
    signed statement of the build says its record was incomplete."""
    lossy = ObservationSummary(mode="audit", events=10, dropped=1)
    record = make_record(cache.store, "b1", observation=lossy)
    record.observation = ObservationSummary(mode="audit", events=10)
    cache.store.save(record)
    assert cache.offer("sha256:k", record)  # the record alone looks clean
    assert cache.lookup("sha256:k") is None
