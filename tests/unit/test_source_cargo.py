"""Cargo defaults are read from the tree without following a link out of it: a tenant's
manifest, member or main.rs that is a symlink tells nothing about what it points at
(issue 11, items 2 and 13: resolve() is safe to call on an untrusted tree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.ecosystems.cargo import defaults as cargo
from farm.errors import SpecError


def _package(path: Path, name: str, main: bool = True) -> None:
    (path / "src").mkdir(parents=True)
    (path / "Cargo.toml").write_text(f'[package]\nname = "{name}"\n')
    if main:
        (path / "src" / "main.rs").write_text("fn main() {}\n")


def test_workspace_members_by_glob_and_by_name(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Cargo.toml").write_text(
        '[workspace]\nmembers = ["crates/*", "tool", "../outside", ".hidden/*", "nothing/*"]\n'
    )
    _package(ws / "crates" / "a", "a")
    _package(ws / "crates" / "b", "b", main=False)
    (ws / "crates" / "c").mkdir()  # no manifest: not a member
    _package(ws / "crates" / ".dot", "dot")  # `*` does not match hidden names, as glob
    _package(ws / "tool", "tool")
    (ws / "tool" / "Cargo.toml").write_text('[package]\nname = "tool"\n[[bin]]\nname = "t2"\n')
    _package(tmp_path / "outside", "outside")
    assert cargo.is_cargo_project(ws)
    assert cargo.binary_outputs(ws) == ["target/release/a", "target/release/t2"]


def test_links_out_of_the_tree_are_not_followed(tmp_path: Path) -> None:
    other = tmp_path / "other-tenant"
    _package(other / "proj", "their-secret-bin")
    _package(other / "lib", "their-lib")
    tree = tmp_path / "tree"
    tree.mkdir()
    # A manifest that is a link: not a cargo project, whatever it points at.
    (tree / "Cargo.toml").symlink_to(other / "proj" / "Cargo.toml")
    assert not cargo.is_cargo_project(tree)
    (tree / "Cargo.toml").unlink()
    (tree / "Cargo.toml").write_text(
        '[package]\nname = "mine"\n[workspace]\nmembers = ["linked", "crates/*"]\n'
    )
    (tree / "src").symlink_to(other / "proj" / "src")  # main.rs exists only through a link
    (tree / "linked").symlink_to(other / "proj")
    (tree / "crates").mkdir()
    (tree / "crates" / "x").symlink_to(other / "lib")
    assert cargo.binary_outputs(tree) == []
    # A spec naming the tree through a link beneath `within` is refused.
    with pytest.raises(SpecError, match="cannot open"):
        cargo.binary_outputs(tree / "linked", within=tree)
