"""Find one cargo package in a fetched git commit and list its files for vendoring.

Callers: ``farm.ecosystems.cargo.vendor`` (``Cargo.vendor_git``). cargo finds a git
dependency by searching the repository for the Cargo.toml whose package has the locked
name; this does the same over farm's own reader of the commit (``farm.fetch.git``), and
takes the files below that directory except nested packages, as cargo packages them.

What cargo would normalize, farm refuses with a message instead of guessing: a manifest
that inherits from its workspace (``workspace = true``) or that depends on another
package by ``path``. Links and submodules inside the package are refused too.
"""

from __future__ import annotations

import tomllib
from typing import Any

from farm.ecosystems import Package
from farm.ecosystems.cargo.cratefile import CHECKSUM_FILE, Member
from farm.errors import FetchError
from farm.fetch.git import Checkout, TreeFile
from farm.gitread import GitError

_FILE, _EXEC, _LINK, _SUBMODULE = 0o100644, 0o100755, 0o120000, 0o160000
MAX_MANIFESTS = 10_000
_DEP_TABLES = ("dependencies", "build-dependencies", "dev-dependencies")
_VENDOR_IT = (
    "vendor that dependency into the source tree (`cargo vendor`) or depend on a released version"
)


def git_package_files(package: Package, checkout: Checkout) -> list[Member]:
    """The package's files (paths relative to its directory). Raises FetchError."""
    git = package.git
    assert git is not None
    where = f"{git.url} at {git.commit}"
    try:
        entries = list(checkout.files(git.commit))
        directory, manifest, nested = _find(package, checkout, entries, where)
        _refuse_normalizing(package, manifest, where)
        return _members(package, checkout, entries, directory, nested)
    except GitError as exc:
        raise FetchError(f"{package}: cannot read {where}: {exc}") from None


def _find(
    package: Package, checkout: Checkout, entries: list[TreeFile], where: str
) -> tuple[tuple[str, ...], dict[str, Any], set[tuple[str, ...]]]:
    manifests = [e for e in entries if e.path[-1] == "Cargo.toml" and e.mode in (_FILE, _EXEC)]
    if len(manifests) > MAX_MANIFESTS:
        raise FetchError(f"{package}: {where} holds more than {MAX_MANIFESTS} manifests")
    found: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for entry in manifests:
        doc = _parse(checkout.blob(entry.oid))
        pkg = doc.get("package") if doc else None
        if isinstance(pkg, dict) and pkg.get("name") == package.name:
            found.append((entry.path[:-1], doc or {}))
    matching = [f for f in found if f[1]["package"].get("version") == package.version]
    if not found:
        raise FetchError(f"{package}: no Cargo.toml of package {package.name} in {where}")
    if not matching:
        inherited = [f for f in found if isinstance(f[1]["package"].get("version"), dict)]
        if not inherited:
            raise FetchError(
                f"{package}: {where} has {package.name}, not version {package.version}"
            )
        matching = inherited  # refused just below, with the reason
    directory, manifest = matching[0]
    nested = {e.path[:-1] for e in manifests} - {directory}
    return directory, manifest, nested


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None  # cargo would skip it too, unless it is the one asked for


def _refuse_normalizing(package: Package, manifest: dict[str, Any], where: str) -> None:
    fields = manifest.get("package", {})
    if any(_inherits(v) for v in fields.values()):
        raise FetchError(
            f"{package}: its Cargo.toml in {where} inherits from its workspace "
            f"(`workspace = true`), which farm does not resolve yet; {_VENDOR_IT}"
        )
    for table, deps in _dependency_tables(manifest):
        for name, spec in deps.items():
            if _inherits(spec):
                raise FetchError(
                    f"{package}: dependency {name} in [{table}] inherits from its workspace "
                    f"in {where}, which farm does not resolve yet; {_VENDOR_IT}"
                )
            if isinstance(spec, dict) and "path" in spec and table != "dev-dependencies":
                raise FetchError(
                    f"{package}: dependency {name} in [{table}] is a path in {where}, which "
                    f"farm does not vendor yet; {_VENDOR_IT}"
                )


def _inherits(value: object) -> bool:
    return isinstance(value, dict) and value.get("workspace") is True


def _dependency_tables(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    tables = [(t, manifest.get(t)) for t in _DEP_TABLES]
    targets = manifest.get("target")
    for platform in targets.values() if isinstance(targets, dict) else []:
        if isinstance(platform, dict):
            tables += [(t, platform.get(t)) for t in _DEP_TABLES]
    return [(t, d) for t, d in tables if isinstance(d, dict)]


def _members(
    package: Package,
    checkout: Checkout,
    entries: list[TreeFile],
    directory: tuple[str, ...],
    nested: set[tuple[str, ...]],
) -> list[Member]:
    members = []
    depth = len(directory)
    for entry in entries:
        if entry.path[:depth] != directory or len(entry.path) == depth:
            continue
        if any(entry.path[:i] in nested for i in range(depth + 1, len(entry.path))):
            continue  # another package's files: cargo leaves nested packages out
        rel = entry.path[depth:]
        shown = "/".join(entry.path)
        if entry.mode == _LINK:
            raise FetchError(f"{package}: {shown} is a symlink; farm vendors no links")
        if entry.mode == _SUBMODULE:
            raise FetchError(f"{package}: {shown} is a git submodule, which farm does not fetch")
        if rel == (CHECKSUM_FILE,):
            raise FetchError(f"{package}: the repository brings its own {CHECKSUM_FILE}")
        members.append(Member(rel, False, checkout.blob(entry.oid), entry.mode == _EXEC))
    return members
