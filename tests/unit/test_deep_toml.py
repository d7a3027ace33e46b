"""TOML nested deeper than tomllib can recurse, from a tenant's tree or a crate, is a
bad file with a clear error, not farm's crash (tomllib raises RecursionError)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from farm import tomlread
from farm.ecosystems.cargo import defaults as cargo
from farm.ecosystems.cargo.lockfile import read_lock
from farm.errors import LockfileError, SpecError
from farm.spec import load_spec_file

DEEP = "a = " + "[" * 100_000 + "]" * 100_000 + "\n"


def test_tomllib_itself_recurses_so_the_wrapper_is_needed() -> None:
    with pytest.raises(RecursionError):
        tomllib.loads(DEEP)
    with pytest.raises(tomllib.TOMLDecodeError, match="nested too deeply"):
        tomlread.loads(DEEP)


def test_a_deep_cargo_lock_is_a_lockfile_error() -> None:
    with pytest.raises(LockfileError, match="not valid TOML"):
        read_lock(DEEP)


def test_a_deep_manifest_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text(DEEP)
    with pytest.raises(SpecError, match=r"Cargo\.toml"):
        cargo.binary_outputs(tmp_path)


def test_a_deep_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(DEEP)
    with pytest.raises(SpecError, match="spec file"):
        load_spec_file(spec)
