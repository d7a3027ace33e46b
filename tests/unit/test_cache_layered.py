"""A build that did not ask for a dependency layer is never served a result built from
one (docs/layers.md); a ``--layer`` build may be served a layered or a cold result, and
a cold result takes a key's place from a layered one, never the reverse."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.cache import Cache
from farm.records import LayerUse
from farm.store import Store
from tests.unit.test_cache import make_record

KEY = "sha256:k"
LAYER = LayerUse(id="abc", key="sha256:l", digest="sha256:d", built_by="b0")


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    home = tmp_path / "home"
    return Cache(home, Store(home))


def test_a_plain_lookup_is_never_served_a_layered_result(cache: Cache) -> None:
    assert cache.offer(KEY, make_record(cache.store, "b1", layer=LAYER))
    assert cache.lookup(KEY) is None  # a plain build: a miss
    assert cache.lookup(KEY, layered_ok=True).id == "b1"  # a --layer build: a hit
    assert cache.build_ids() == {"b1"}  # the entry stays for --layer builds


def test_a_layer_build_is_served_a_cold_result(cache: Cache) -> None:
    assert cache.offer(KEY, make_record(cache.store, "b1"))
    assert cache.lookup(KEY, layered_ok=True).id == "b1"
    assert cache.lookup(KEY).id == "b1"


def test_a_cold_result_replaces_a_layered_one_never_the_reverse(cache: Cache) -> None:
    assert cache.offer(KEY, make_record(cache.store, "b1", layer=LAYER))
    assert cache.offer(KEY, make_record(cache.store, "b2"))
    assert cache.lookup(KEY).id == "b2"
    assert not cache.offer(KEY, make_record(cache.store, "b3", layer=LAYER))
    assert cache.lookup(KEY).id == "b2" and cache.lookup(KEY, layered_ok=True).id == "b2"
