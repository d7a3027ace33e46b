"""A farm mirror directory as a registry (``file:///DIR/``): air-gapped sites keep a
mirror on a volume, and the cluster replay (tests/e2e/test_k8s_phases.py) runs the fetch
pod with no network. Real crates.io crates (tests/realcrates.py), checked against the
lock exactly as a download is, read beneath the directory with no link followed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from farm.errors import (
    ChecksumMismatchError,
    FetchError,
    PackageMissingError,
    RegistryUnreachableError,
)
from farm.fetch.cache import CrateCache
from farm.fetch.phase import fetch
from farm.fetch.registry import HttpCaps, Registry
from farm.mirror.store import Mirror
from tests.realcrates import REAL_CRATES
from tests.unit.test_fetch_phase import project

FNV, HEX = REAL_CRATES["fnv"], REAL_CRATES["hex"]


@pytest.fixture
def mirror(tmp_path: Path, real_crates: dict[str, bytes]) -> Path:
    store = Mirror(tmp_path / "mirror").create()
    for crate in (FNV, HEX):
        store.add_crate(real_crates[crate.name], crate.origin)
    return store.path


def registry(mirror: Path) -> Registry:
    return Registry(name="onvolume", index=f"file://{mirror}/")


def lock(*crates: object) -> list[tuple[str, str, str]]:
    return [(c.name, c.version, c.cksum) for c in crates]  # type: ignore[attr-defined]


def test_a_mirror_directory_serves_the_locked_crates(tmp_path: Path, mirror: Path) -> None:
    src = project(tmp_path / "app", lock(FNV, HEX))
    result = fetch(src, tmp_path / "deps", registry(mirror), CrateCache(tmp_path / "cache"))
    assert {(p.name, p.sha256, p.registry) for p in result.packages} == {
        ("fnv", FNV.cksum, "onvolume"),
        ("hex", HEX.cksum, "onvolume"),
    }
    assert (tmp_path / "deps" / "vendor" / "fnv-1.0.7" / ".cargo-checksum.json").is_file()


def test_bytes_that_differ_from_the_lock_are_refused(tmp_path: Path, mirror: Path) -> None:
    wrong = hashlib.sha256(b"other").hexdigest()
    src = project(tmp_path / "app", [("fnv", FNV.version, wrong)])
    with pytest.raises(ChecksumMismatchError, match=r"fnv 1.0.7: checksum mismatch"):
        fetch(src, tmp_path / "deps", registry(mirror), CrateCache(tmp_path / "cache"))


def test_a_crate_the_mirror_lacks_is_named(tmp_path: Path, mirror: Path) -> None:
    serde = REAL_CRATES["serde"]
    src = project(tmp_path / "app", lock(serde))
    with pytest.raises(PackageMissingError, match=r"serde 1.0.152: not in registry onvolume"):
        fetch(src, tmp_path / "deps", registry(mirror), CrateCache(tmp_path / "cache"))


@pytest.mark.parametrize("kind", ["symlink", "fifo", "oversize"])
def test_a_crate_file_that_is_not_a_plain_file_within_the_cap_is_refused(
    tmp_path: Path, mirror: Path, kind: str
) -> None:
    crate = mirror / "fnv-1.0.7.crate"
    caps = HttpCaps()
    if kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(crate.read_bytes())
        crate.unlink()
        crate.symlink_to(tmp_path / "elsewhere")
    elif kind == "fifo":
        crate.unlink()
        os.mkfifo(crate)
    else:
        caps = HttpCaps(max_crate=1024)
    src = project(tmp_path / "app", lock(FNV))
    with pytest.raises(FetchError, match=r"fnv 1.0.7: registry onvolume"):
        fetch(src, tmp_path / "deps", registry(mirror), CrateCache(tmp_path / "c"), caps=caps)


def test_a_directory_that_is_no_mirror_is_unreachable(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    src = project(tmp_path / "app", lock(FNV))
    with pytest.raises(RegistryUnreachableError, match="is not a farm mirror"):
        fetch(src, tmp_path / "deps", registry(tmp_path / "plain"), CrateCache(tmp_path / "c"))


@pytest.mark.parametrize(
    "index", ["file://host/m/", "file:///m/../etc/", "file:relative/", "file:///m/?q=1"]
)
def test_only_an_absolute_local_directory_is_a_directory_index(index: str) -> None:
    with pytest.raises(ValidationError, match="file:///ABSOLUTE/DIR/"):
        Registry(index=index)
    with pytest.raises(ValidationError, match="takes no token_file"):
        Registry(index="file:///m/", token_file=Path("/t"))
