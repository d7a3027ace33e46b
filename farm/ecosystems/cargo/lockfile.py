"""Read a Cargo.lock into validated, bounded models.

Callers: ``farm.fetch`` (which packages to download and vendor), ``farm.mirror`` (fill a
mirror from a lock), the corpus tools. The lock comes from a tenant's tree: its names and
versions end up in filesystem paths (``vendor/{name}-{version}``) and in URLs, so each one
is checked against cargo's own spelling rules here, once, and nothing else in farm has to
think about ``../``, ``/`` or NUL in a package name.

Formats: v1 has no ``version`` key and keeps checksums in ``[metadata]`` as
``"checksum NAME VERSION (SOURCE)" = "HEX"``; v2, v3 and v4 carry ``version = N`` and a
``checksum`` per package.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from pydantic import BaseModel, ConfigDict

from farm.errors import LockfileError

#: A Cargo.lock larger than this is not one (the biggest real ones are about 1 MiB).
MAX_LOCK_BYTES = 16 << 20
#: Packages in one lock.
MAX_PACKAGES = 20000
#: A source id longer than this is refused (git URLs with a query and a commit fit easily).
MAX_SOURCE = 1024

#: crates.io's rule: ASCII letters, digits, ``-`` and ``_``, starting with a letter, ≤ 64.
#: Path packages may be spelled more freely by cargo, but never with a path separator.
_REGISTRY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_PATH_NAME = re.compile(r"[^\s/\\\x00-\x1f\x7f.][^\s/\\\x00-\x1f\x7f]{0,63}")
#: Semver: MAJOR.MINOR.PATCH, optional pre-release and build metadata.
_VERSION = re.compile(
    r"(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_SOURCE = re.compile(r"[\x21-\x7e]+")
_V1_KEY = re.compile(r"checksum (\S+) (\S+) \((\S+)\)")


class LockedPackage(BaseModel):
    """One ``[[package]]`` of a lock: ``source`` None means a path (workspace) package."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    source: str | None = None
    checksum: str | None = None

    @property
    def is_registry(self) -> bool:
        return self.source is not None and self.source.startswith(("registry+", "sparse+"))

    @property
    def is_git(self) -> bool:
        return self.source is not None and self.source.startswith("git+")

    @property
    def is_path(self) -> bool:
        return self.source is None

    @property
    def dirname(self) -> str:
        """``{name}-{version}``: the vendor directory and the .crate's top directory."""
        return f"{self.name}-{self.version}"

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


class Lockfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int
    packages: list[LockedPackage]


def read_lock(text: str | bytes) -> Lockfile:
    """Parse and validate a Cargo.lock.

    Raises LockfileError naming the package (by position, name and version) or the TOML
    line that is wrong, and what to do about it.
    """
    if len(text) > MAX_LOCK_BYTES:
        raise LockfileError(f"Cargo.lock: {len(text)} bytes is above the {MAX_LOCK_BYTES} cap")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LockfileError(f"Cargo.lock: not UTF-8 ({exc})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockfileError(
            f"Cargo.lock: not valid TOML ({exc}); regenerate it with `cargo generate-lockfile`"
        ) from None
    version = _lock_version(doc.get("version"))
    raw = doc.get("package", [])
    if not isinstance(raw, list):
        raise LockfileError("Cargo.lock: `package` must be an array of tables")
    if len(raw) > MAX_PACKAGES:
        raise LockfileError(f"Cargo.lock: {len(raw)} packages is above the {MAX_PACKAGES} cap")
    v1_sums = _v1_checksums(doc.get("metadata")) if version == 1 else {}
    packages = [_package(i, entry, v1_sums) for i, entry in enumerate(raw, 1)]
    _refuse_duplicates(packages)
    return Lockfile(version=version, packages=packages)


def _lock_version(value: Any) -> int:
    if value is None:
        return 1
    if type(value) is not int or not 1 <= value <= 4:
        raise LockfileError(
            f"Cargo.lock: version = {value!r} is not one farm reads (1 to 4); "
            "regenerate the lock with a cargo that writes version 3 or 4"
        )
    return value


def _package(index: int, entry: Any, v1_sums: dict[tuple[str, str, str], str]) -> LockedPackage:
    where = f"Cargo.lock: package #{index}"
    if not isinstance(entry, dict):
        raise LockfileError(f"{where}: not a table")
    name, version = entry.get("name"), entry.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        raise LockfileError(f"{where}: `name` and `version` must be strings")
    where = f"{where} ({name!r} {version!r})"
    source = entry.get("source")
    checksum = entry.get("checksum")
    if source is not None and (
        not isinstance(source, str) or len(source) > MAX_SOURCE or not _SOURCE.fullmatch(source)
    ):
        raise LockfileError(f"{where}: `source` must be a printable URL of ≤ {MAX_SOURCE} bytes")
    pattern = _PATH_NAME if source is None else _REGISTRY_NAME
    if not pattern.fullmatch(name):
        raise LockfileError(f"{where}: {name!r} is not a valid crate name")
    if not _VERSION.fullmatch(version) or len(version) > 128:
        raise LockfileError(f"{where}: {version!r} is not a semver version")
    if checksum is None and source is not None:
        checksum = v1_sums.get((name, version, source))
    if checksum is not None and (
        not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum)
    ):
        raise LockfileError(
            f"{where}: checksum {str(checksum)[:40]!r} is not a sha256 (64 lowercase hex "
            "digits); a lock written against Debian's vendored crates says 'Could not get "
            "crate checksum': regenerate it against the registry (`cargo generate-lockfile`)"
        )
    return LockedPackage(name=name, version=version, source=source, checksum=checksum)


def _v1_checksums(metadata: Any) -> dict[tuple[str, str, str], str]:
    """v1's ``[metadata]`` table: ``"checksum NAME VERSION (SOURCE)" = HEX``."""
    if not isinstance(metadata, dict):
        return {}
    sums: dict[tuple[str, str, str], str] = {}
    for key, value in metadata.items():
        match = _V1_KEY.fullmatch(key)
        if match and isinstance(value, str) and value != "<none>":
            sums[(match[1], match[2], match[3])] = value
    return sums


def _refuse_duplicates(packages: list[LockedPackage]) -> None:
    seen: set[tuple[str, str, str | None]] = set()
    for pkg in packages:
        key = (pkg.name, pkg.version, pkg.source)
        if key in seen:
            raise LockfileError(
                f"Cargo.lock: {pkg} ({pkg.source or 'path'}) is listed twice; "
                "regenerate the lock with `cargo generate-lockfile`"
            )
        seen.add(key)
