"""Adversarial-review findings on dependency layers (farm.ecosystems.cargo.skeleton,
buildflags, farm.layers.flow): what a tenant's manifest or argv controls is bounded, a
name TOML cannot carry means a cold build (never a crash), and the layer key names where
the crate bytes come from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.ecosystems import NoLayer
from farm.ecosystems.cargo import buildflags, skeleton
from farm.ecosystems.cargo.defaults import DEFAULT_ARGV
from farm.layers.flow import build_with_layer, key_for
from farm.settings import Settings
from farm.spec import build_spec
from tests.unit.test_layer_flags import ColdOnly
from tests.unit.test_layers import project


def bins_manifest(count: int) -> str:
    tables = "".join(f'[[bin]]\nname = "b{i}"\n' for i in range(count))
    return f'[package]\nname = "p"\nversion = "1.0.0"\n{tables}'


def test_declared_binaries_are_bounded(tmp_path: Path) -> None:
    lib = {"src/lib.rs": "pub fn x() {}"}  # no src/main.rs: only the declared binaries
    files = skeleton.plan(project(tmp_path / "a", bins_manifest(256), lib))
    assert len(skeleton.bin_names(files)) == 256
    with pytest.raises(NoLayer, match="more than 256 binaries"):
        skeleton.plan(project(tmp_path / "b", bins_manifest(257), lib))


def test_declared_and_discovered_binaries_count_together(tmp_path: Path) -> None:
    tree = {f"src/bin/d{i}.rs": "fn main() {}" for i in range(10)}
    with pytest.raises(NoLayer, match="more than 256 binaries"):
        skeleton.plan(project(tmp_path, bins_manifest(250), tree))


def test_a_flood_of_bin_tables_builds_cold_and_writes_no_stub(tmp_path: Path) -> None:
    root = project(tmp_path, bins_manifest(20_000))
    with pytest.raises(NoLayer, match="more than 256 binaries"):
        skeleton.plan(root)
    runner = ColdOnly(tmp_path / "home")
    spec = build_spec({"source": str(root), "argv": list(DEFAULT_ARGV)})
    record, said = build_with_layer(runner, spec)  # type: ignore[arg-type]
    assert record.layer is None and said[0].startswith("layer: not used: ")
    work = runner.settings.work_dir
    assert not work.exists() or not [p for p in work.iterdir() if p.name.startswith("skeleton-")]


def test_a_refused_flag_is_refused_before_any_skeleton_is_planned(tmp_path: Path) -> None:
    root = project(tmp_path, bins_manifest(20_000))
    (root / "Cargo.lock").unlink()  # planning would refuse for this instead
    runner = ColdOnly(tmp_path / "home")
    argv = [*DEFAULT_ARGV, "--target", "x86_64-unknown-linux-musl"]
    spec = build_spec({"source": str(root), "argv": argv})
    _, said = build_with_layer(runner, spec)  # type: ignore[arg-type]
    assert said == [
        "layer: not used: cargo flag '--target' is not one a layer can reproduce: "
        + buildflags.ACCEPTED
    ]


def test_a_bin_name_toml_cannot_carry_means_no_layer(tmp_path: Path) -> None:
    emoji = '[package]\nname = "p"\nversion = "1.0.0"\n[[bin]]\nname = "\U0001f600"\n'
    with pytest.raises(NoLayer, match="binary name"):
        skeleton.plan(project(tmp_path / "a", emoji))
    root = project(tmp_path / "b", '[package]\nname = "p"\nversion = "1.0.0"\n')
    (root / "src" / "bin").mkdir()
    (root / "src" / "bin").joinpath(os.fsdecode(b"\xff.rs")).write_text("fn main() {}")
    with pytest.raises(NoLayer, match="binary name"):
        skeleton.plan(root)
    runner = ColdOnly(tmp_path / "home")
    spec = build_spec({"source": str(root), "argv": list(DEFAULT_ARGV)})
    record, said = build_with_layer(runner, spec)  # type: ignore[arg-type]
    assert runner.built == [list(DEFAULT_ARGV)] and record.layer is None
    assert said[0].startswith("layer: not used: ") and "binary name" in said[0]


def test_a_skeleton_manifest_toml_rejects_means_no_layer() -> None:
    files = {"Cargo.toml": b'[package]\nname = "\\udcff"\n', "Cargo.lock": b"version = 3\n"}
    with pytest.raises(NoLayer, match=r"Cargo\.toml is not valid TOML"):
        skeleton.dependency_argv(files, list(DEFAULT_ARGV))


def test_the_dependency_build_script_is_bounded(tmp_path: Path) -> None:
    pairs = (buildflags.MAX_FLAGS - len(DEFAULT_ARGV) + 2) // 2
    argv = [*DEFAULT_ARGV, *["-F", "f" * 4096] * pairs]
    assert len(argv) - 2 <= buildflags.MAX_FLAGS
    with pytest.raises(NoLayer, match="longer than"):
        buildflags.parse(argv)
    files = skeleton.plan(project(tmp_path, '[package]\nname = "p"\nversion = "1.0.0"\n'))
    with pytest.raises(NoLayer, match="longer than"):
        skeleton.dependency_argv(files, argv)


def test_the_script_is_bounded_with_every_local_package_in_it() -> None:
    """Short flags, but one ``-p NAME`` per workspace package in the ``cargo clean``."""
    files = {f"m{i}/Cargo.toml": f'[package]\nname = "{i:064d}"\n'.encode() for i in range(600)}
    with pytest.raises(NoLayer, match="longer than"):
        skeleton.dependency_argv({**files, "Cargo.lock": b"version = 3\n"}, list(DEFAULT_ARGV))


class KeyRunner:
    """What ``key_for`` reads of a runner: settings, and the image id preflight finds."""

    class Backend:
        def preflight(self, sandbox: object) -> str:
            return "sha256:" + "0" * 64

    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home)
        self.backend = self.Backend()


def test_the_layer_key_names_where_the_crates_come_from(tmp_path: Path) -> None:
    root = project(tmp_path, '[package]\nname = "p"\nversion = "1.0.0"\n')
    files = skeleton.plan(root)
    runner = KeyRunner(tmp_path / "home")

    def key(registry: str | None) -> str:
        spec = build_spec({"source": str(root), "registry": registry})
        return key_for(runner, spec, files)  # type: ignore[arg-type]

    assert key(None) == key(None)
    assert key("crates-io") == key("crates-io")
    assert len({key(None), key("crates-io"), key("mirror")}) == 3
