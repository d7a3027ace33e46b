"""Cargo-specific defaults: the argv and outputs of a project that has a Cargo.toml.

Callers: ``farm.runner.resolve`` fills a BuildSpec's missing ``argv``/``outputs`` from here.
"""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

from farm.errors import SpecError

#: Offline and locked: the build phase has no network, and Cargo.lock is the contract.
DEFAULT_ARGV = ["cargo", "build", "--release", "--locked", "--offline"]


def is_cargo_project(source: Path) -> bool:
    return (source / "Cargo.toml").is_file()


def binary_outputs(source: Path) -> list[str]:
    """Output globs for every binary target of the package or workspace at ``source``.

    Raises SpecError when a manifest cannot be parsed.
    """
    names: list[str] = []
    for manifest in _manifests(source):
        names.extend(_binaries(manifest))
    return [f"target/release/{name}" for name in sorted(set(names))]


def _read(manifest: Path) -> dict:
    try:
        return tomllib.loads(manifest.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError([f"source: cannot read {manifest}: {exc}"]) from None


def _manifests(source: Path) -> list[Path]:
    root = source / "Cargo.toml"
    members = _read(root).get("workspace", {}).get("members", [])
    found = [root]
    for pattern in members:
        # Members are relative globs; resolve() keeps a hostile '../' from leaving source.
        for member in sorted(glob.glob(str(source / pattern))):
            manifest = Path(member).resolve() / "Cargo.toml"
            if manifest.is_file() and manifest.is_relative_to(source):
                found.append(manifest)
    return found


def _binaries(manifest: Path) -> list[str]:
    data = _read(manifest)
    package = data.get("package", {}).get("name")
    bins = [b["name"] for b in data.get("bin", []) if "name" in b]
    if package and not bins and (manifest.parent / "src" / "main.rs").is_file():
        bins.append(package)
    return bins
