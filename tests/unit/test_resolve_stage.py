"""farm.fetch.resolve.stage_manifests: what the resolving sandbox may see of a tenant's
tree is its Cargo.toml files and empty ``.rs`` stubs; no code, no links, no config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.errors import InputError
from farm.fetch.resolve import stage_manifests


def _tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "Cargo.toml").write_text('[package]\nname = "app"\nversion = "0.1.0"\n')
    (root / "src/main.rs").write_text("fn main() { secret() }")
    (root / "build.rs").write_text('fn main() { std::fs::write("/x", "ran").ok(); }')
    (root / "README.md").write_text("docs")
    (root / ".cargo").mkdir()
    (root / ".cargo/config.toml").write_text('[source.crates-io]\nreplace-with = "evil"\n')
    (root / "target/debug").mkdir(parents=True)
    (root / "target/debug/Cargo.toml").write_text("junk")
    (root / "crates/lib").mkdir(parents=True)
    (root / "crates/lib/Cargo.toml").write_text('[package]\nname = "lib"\nversion = "0.1.0"\n')


def test_manifests_are_copied_and_code_is_stubbed(tmp_path: Path) -> None:
    _tree(tmp_path / "src")
    assert stage_manifests(tmp_path / "src", tmp_path / "out") == 2
    files = sorted(
        str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()
    )
    assert files == ["Cargo.toml", "build.rs", "crates/lib/Cargo.toml", "src/main.rs"]
    assert (tmp_path / "out/src/main.rs").read_bytes() == b""
    assert (tmp_path / "out/build.rs").read_bytes() == b""
    assert (tmp_path / "out/Cargo.toml").read_text() == (tmp_path / "src/Cargo.toml").read_text()


@pytest.mark.parametrize("link_name", ["Cargo.toml", "crates"])
def test_links_in_the_tree_are_not_followed(tmp_path: Path, link_name: str) -> None:
    _tree(tmp_path / "src")
    outside = tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (outside / "Cargo.toml").write_text("host secret")
    (outside / "x/Cargo.toml").write_text("host secret")
    os.symlink(outside / ("Cargo.toml" if link_name == "Cargo.toml" else "x"), tmp_path / "src/sub")
    if link_name == "Cargo.toml":
        (tmp_path / "src/m").mkdir()
        os.symlink(outside / "Cargo.toml", tmp_path / "src/m/Cargo.toml")
    stage_manifests(tmp_path / "src", tmp_path / "out")
    copied = [p.read_text() for p in (tmp_path / "out").rglob("Cargo.toml")]
    assert "host secret" not in copied


def test_a_tree_without_a_manifest_or_with_a_linked_root_manifest_is_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"has no Cargo\.toml"):
        stage_manifests(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "linked").mkdir()
    (tmp_path / "real.toml").write_text("[package]")
    os.symlink(tmp_path / "real.toml", tmp_path / "linked/Cargo.toml")
    with pytest.raises(InputError, match=r"has no Cargo\.toml"):
        stage_manifests(tmp_path / "linked", tmp_path / "out2")
