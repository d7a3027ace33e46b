"""``farm mirror add``: fill a mirror from .crate files, a Cargo.lock, or Debian sources.

Callers: ``farm.cli`` and the real-crate test fixtures. Each function returns one
FillResult per item, so the command can say what happened to every crate; only a
refusal that means tampering (a checksum or signature mismatch) raises at once. Items
that are simply not available (a 404, a repack, a path dependency) are ``missing`` or
``skipped`` with a note, and the caller decides whether that fails the command
(``--strict``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from farm.ecosystems.cargo import cratefile
from farm.ecosystems.cargo.lockfile import read_lock
from farm.errors import FarmError, MirrorError, PackageMissingError
from farm.mirror.debian import DEFAULT_SUITE, DebianArchive, SourcePackage, SourceRequest
from farm.mirror.store import MAX_CRATE_BYTES, CrateEntry, Mirror

_REPACK = re.compile(r"[+~](ds|dfsg)", re.IGNORECASE)


class FillResult(BaseModel):
    """What ``farm mirror add`` did with one item."""

    model_config = ConfigDict(frozen=True)

    item: str
    status: Literal["added", "skipped", "missing"]
    entry: CrateEntry | None = None
    note: str = ""


class Downloader(Protocol):
    """``farm.fetch.registry.RegistryClient``: the bytes as served, PackageMissingError
    if the registry lacks them."""

    def download(self, name: str, version: str, checksum: str) -> bytes: ...


def add_files(mirror: Mirror, paths: list[Path]) -> list[FillResult]:
    """Add local ``.crate`` files (origin ``file``). Raises MirrorError for an unreadable,
    oversized or malformed file, before the next one is read."""
    results = []
    for path in paths:
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise MirrorError(f"{path}: {exc.strerror}") from None
        if size > MAX_CRATE_BYTES:
            raise MirrorError(f"{path}: {size} bytes is over {MAX_CRATE_BYTES}")
        try:
            entry = mirror.add_crate(path.read_bytes(), "file")
        except MirrorError as exc:
            raise MirrorError(f"{path}: {exc}") from None
        results.append(FillResult(item=str(path), status="added", entry=entry))
    return results


def add_lock(mirror: Mirror, lock_text: str, registry: Downloader) -> list[FillResult]:
    """Download every registry package of a Cargo.lock and add it (origin ``crates.io``)
    once its sha256 equals the lock's checksum. Raises MirrorError on a mismatch."""
    results = []
    for package in read_lock(lock_text).packages:
        item = f"{package.name} {package.version}"
        if not package.is_registry:
            results.append(FillResult(item=item, status="skipped", note="not a registry package"))
            continue
        if package.checksum is None:
            note = "Cargo.lock has no checksum for it, so its bytes could not be verified"
            results.append(FillResult(item=item, status="skipped", note=note))
            continue
        held = mirror.get(package.name, package.version)
        if held is not None and held.cksum == package.checksum:
            results.append(FillResult(item=item, status="added", entry=held, note="held"))
            continue
        try:
            data = registry.download(package.name, package.version, package.checksum)
        except PackageMissingError as exc:
            results.append(FillResult(item=item, status="missing", note=str(exc)))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != package.checksum:
            raise MirrorError(
                f"{item}: checksum mismatch (lock {package.checksum[:12]}…, registry "
                f"{digest[:12]}…); refusing to add it"
            )
        entry = mirror.add_crate(data, "crates.io")
        results.append(FillResult(item=item, status="added", entry=entry))
    return results


def add_debian(
    mirror: Mirror,
    requests: list[SourceRequest],
    archive: DebianArchive,
    default_suite: str = DEFAULT_SUITE,
) -> list[FillResult]:
    """Add the orig tarballs of Debian ``rust-*`` source packages (origin
    ``debian-source:<pkg>_<ver>``). Raises MirrorError when the archive's signature,
    Sources or a tarball's sha256 does not verify."""
    return [_add_debian_one(mirror, r, archive, default_suite) for r in requests]


def _add_debian_one(
    mirror: Mirror, request: SourceRequest, archive: DebianArchive, default_suite: str
) -> FillResult:
    suite = request.suite or default_suite
    item = f"{request}/{suite}"
    found = archive.find(request, default_suite)
    if not found:
        return FillResult(item=item, status="missing", note=f"not in {suite}'s Sources")
    versions = sorted({s.version for s in found})
    if len(versions) > 1:
        note = f"{suite} has {', '.join(versions)}; name one: {request.package}=VERSION"
        return FillResult(item=item, status="skipped", note=note)
    package = found[-1]
    skip = _not_a_crate(package)
    if skip:
        return FillResult(item=item, status="skipped", note=skip)
    orig = package.orig()
    assert orig is not None  # _not_a_crate checked it
    data = archive.download(package, orig)
    if data is None:
        note = f"not in this archive snapshot ({orig.name} answered 404)"
        return FillResult(item=item, status="missing", note=note)
    problem = _crate_problem(package, data)
    if problem:
        return FillResult(item=item, status="skipped", note=problem)
    origin = f"debian-source:{package.package}_{package.version}"
    try:
        entry = mirror.add_crate(data, origin)
    except MirrorError as exc:
        return FillResult(item=item, status="skipped", note=str(exc))
    return FillResult(item=item, status="added", entry=entry)


def _not_a_crate(package: SourcePackage) -> str:
    """Why this source package's orig tarball cannot be the crate, or ''."""
    orig = package.orig()
    if orig is None:
        return f"{package.package} {package.version} has no orig tarball"
    if _REPACK.search(package.upstream_version):
        return (
            f"{package.upstream_version} is a Debian repack (+ds/+dfsg): files were "
            "removed, so it is not the crate's bytes"
        )
    if not orig.name.endswith(".orig.tar.gz"):
        return f"{orig.name} is not gzip: a repack, not a .crate"
    return ""


def _crate_problem(package: SourcePackage, data: bytes) -> str:
    """Why the downloaded orig tarball is not the crate this package packages, or ''."""
    try:
        manifest = cratefile.read_manifest(data)
    except FarmError as exc:
        return f"the orig tarball is not a .crate: {exc}"
    name, version = manifest["package"]["name"], manifest["package"]["version"]
    expected = f"rust-{name.lower().replace('_', '-')}"
    debianized = version.replace("-", "~")  # Debian spells 1.0.0-beta as 1.0.0~beta
    if package.package != expected and not package.package.startswith(expected + "-"):
        return f"the orig tarball is crate {name}, not what {package.package} packages"
    if debianized != package.upstream_version:
        return f"the orig tarball is {name} {version}, not {package.upstream_version}"
    return ""
