"""The builder rootfs is reproducible: two mmdebstrap runs give the same tarball."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from farm.images import CARGO_CONFIG, build_rootfs, recipe


@pytest.mark.slow
def test_rust_rootfs_is_bit_for_bit_reproducible(tmp_path: Path) -> None:
    r = recipe("rust")
    first = build_rootfs(r, tmp_path / "one.tar", log=lambda _: None)
    second = build_rootfs(r, tmp_path / "two.tar", log=lambda _: None)
    assert first == second
    with tarfile.open(tmp_path / "one.tar") as tar:
        config = tar.extractfile("./.cargo/config.toml")
        assert config is not None and config.read().decode() == CARGO_CONFIG
        names = set(tar.getnames())
    assert "./usr/share/cargo/registry/serde_derive-1.0.152/Cargo.toml" in names
    assert "./usr/bin/cargo" in names
