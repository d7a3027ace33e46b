"""The fetch phase gives every vendored file one fixed mtime (farm.ecosystems.cargo.vendor
``settle_mtimes``), so a build that starts from a dependency layer (docs/layers.md) does
not see a dependency's build script as stale: serde 1.0.152's build.rs says
``cargo:rerun-if-changed=build.rs``, and cargo reruns it when build.rs is newer than the
script's last run, which a fresh unpack always is. Real serde, over farm's own HTTP test
registry on 127.0.0.1."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.ecosystems.cargo.vendor import VENDOR_MTIME
from farm.fetch.cache import CrateCache
from farm.fetch.phase import fetch
from farm.fetch.registry import Registry
from tests.debcrates import SERDE_SHA256, serde_crate
from tests.registry import TestRegistry, serve
from tests.unit.test_fetch_phase import project


@pytest.fixture
def registry() -> Iterator[TestRegistry]:
    with serve(TestRegistry()) as reg:
        yield reg


def mtimes(root: Path) -> dict[str, int]:
    entries = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): int(os.lstat(p).st_mtime) for p in entries}


def test_every_vendored_entry_has_the_fixed_mtime_on_every_fetch(
    tmp_path: Path, registry: TestRegistry
) -> None:
    registry.crates[("serde", "1.0.152")] = serde_crate()
    src = project(tmp_path / "app", [("serde", "1.0.152", SERDE_SHA256)])
    reg = Registry(name="test", index=registry.index)
    cache = CrateCache(tmp_path / "cache")
    fetch(src, tmp_path / "one", reg, cache)
    time.sleep(1.1)  # a second fetch a second later: unpacked anew, cached crate or not
    fetch(src, tmp_path / "two", reg, cache)
    one = mtimes(tmp_path / "one" / "vendor" / "serde-1.0.152")
    two = mtimes(tmp_path / "two" / "vendor" / "serde-1.0.152")
    assert "build.rs" in one and "src" in one and ".cargo-checksum.json" in one
    assert set(one.values()) == {VENDOR_MTIME}
    assert one == two
    assert time.time() - 40 * 365 * 86400 > VENDOR_MTIME  # older than any build's output
