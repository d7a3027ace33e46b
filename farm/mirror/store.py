"""A mirror directory: write ``.crate`` files and their index lines, list what it holds.

Callers: ``farm.mirror.fill`` (``farm mirror add``), ``farm.mirror.serve`` (reads the
same layout), the real-crate test fixtures and the corpus helper's tools.

One layout serves two readers (docs/mirror.md):

- ``DIR/index/<cargo index path>``: one JSON line per version, cargo's index format.
  Served under ``/index/`` it is a sparse registry (``farm.mirror.serve`` adds
  ``config.json`` with its own address); read from disk it is the index of a cargo
  ``local-registry`` (which needs no ``config.json``).
- ``DIR/{name}-{version}.crate``: the crate's bytes, as a local-registry names them.
- ``DIR/farm-mirror.json``: per version ``{name, version, cksum, origin}``, where the
  bytes came from and how they were checked.

A published version never changes: adding different bytes for a name and version the
mirror holds is refused, and adding the same bytes again is a no-op (except that a
``file`` origin is replaced by the origin of a source that checked the same bytes).
Writes go through a temporary file and a rename under an exclusive lock, so a reader
(a running server or cargo) sees either the old or the new file, and two
``farm mirror add`` do not interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from farm.ecosystems.cargo import cratefile
from farm.errors import FarmError, MirrorError
from farm.mirror.indexline import IndexLine, index_line
from farm.mirror.layout import (
    INDEX_DIR,
    MANIFEST_FILE,
    check_name,
    check_version,
    crate_filename,
    index_relpath,
    same_crate,
)

#: crates.io's own upload limit is 10 MiB (a few crates have more by exception).
MAX_CRATE_BYTES = 64 << 20
MAX_MANIFEST_BYTES = 64 << 20
LOCK_FILE = ".farm-mirror.lock"
_ORIGIN = re.compile(
    r"crates\.io|file|debian-source:[a-z0-9][a-z0-9.+-]*_[0-9A-Za-z.+~:-]+"
    r"|debian-derived:[A-Za-z0-9][A-Za-z0-9.+~:_-]{0,200}"
)


class CrateEntry(BaseModel):
    """One version the mirror holds, and where its bytes came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    #: sha256 of the .crate, the index line's ``cksum`` and Cargo.lock's ``checksum``.
    cksum: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: ``crates.io`` (bytes checked against a lockfile's checksum),
    #: ``debian-source:<pkg>_<ver>`` (a Debian orig tarball, checked against Sources),
    #: ``debian-derived:<deb>`` (repacked from a librust-*-dev: NOT crates.io's bytes),
    #: ``file`` (a local .crate, checked against nothing).
    origin: str

    @field_validator("origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        if not _ORIGIN.fullmatch(value):
            raise ValueError(
                "origin must be crates.io, file, debian-source:<pkg>_<ver> or debian-derived:<deb>"
            )
        return value


class MirrorManifest(BaseModel):
    """The contents of ``farm-mirror.json``."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(1, ge=1, le=1)
    crates: list[CrateEntry] = []


def check_origin(origin: str) -> str:
    """Return ``origin`` if CrateEntry accepts it; raises MirrorError otherwise."""
    if not _ORIGIN.fullmatch(origin):
        raise MirrorError(
            f"origin {origin!r}: use crates.io, file, debian-source:<pkg>_<ver> "
            "or debian-derived:<deb>"
        )
    return origin


class Mirror:
    """A mirror directory. ``Mirror(path).create()`` makes one; the other methods
    expect one and raise MirrorError if ``path`` is not a mirror."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def index_dir(self) -> Path:
        return self.path / INDEX_DIR

    def index_path(self, name: str) -> Path:
        return self.index_dir / index_relpath(name)

    def crate_path(self, name: str, version: str) -> Path:
        return self.path / crate_filename(name, version)

    def create(self) -> Mirror:
        """Make the directory a mirror (idempotent). Refuses a non-empty directory that is
        not already a mirror, so a typo does not scatter files into a project."""
        if self.path.exists() and not self.path.is_dir():
            raise MirrorError(f"{self.path} exists and is not a directory")
        manifest = self.path / MANIFEST_FILE
        if self.path.is_dir() and not manifest.exists() and any(self.path.iterdir()):
            raise MirrorError(
                f"{self.path} is not empty and not a farm mirror; pick a new or empty directory"
            )
        self.index_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not manifest.exists():
                self._write_manifest(MirrorManifest())
        return self

    def check(self) -> None:
        """Raises MirrorError unless the directory is a mirror."""
        if not (self.path / MANIFEST_FILE).is_file() or not self.index_dir.is_dir():
            raise MirrorError(
                f"{self.path} is not a farm mirror (no {MANIFEST_FILE} or {INDEX_DIR}/); "
                f"create it with `farm mirror create {self.path}`"
            )

    def entries(self) -> list[CrateEntry]:
        """Every version held, sorted by name and version."""
        self.check()
        return self._read_manifest().crates

    def get(self, name: str, version: str) -> CrateEntry | None:
        return next((e for e in self.entries() if e.name == name and e.version == version), None)

    def add_crate(self, data: bytes, origin: str) -> CrateEntry:
        """Add one ``.crate``: validate it, write it and its index line, record ``origin``.

        Returns the entry (the existing one if these exact bytes are already held).
        Raises MirrorError for a malformed or oversized crate, a bad origin, or different
        bytes for a name and version already held."""
        check_origin(origin)
        self.check()
        if len(data) > MAX_CRATE_BYTES:
            raise MirrorError(f"a .crate of {len(data)} bytes is over {MAX_CRATE_BYTES}")
        manifest = _read_crate_manifest(data)
        cksum = hashlib.sha256(data).hexdigest()
        line = index_line(manifest, cksum)
        entry = CrateEntry(name=line.name, version=line.vers, cksum=cksum, origin=origin)
        with self._locked():
            held = self._read_manifest()
            existing = _conflict(held.crates, entry)
            if existing is not None and (existing.origin != "file" or origin == "file"):
                return existing
            if existing is not None:  # the same bytes, now from a source that checked them
                held.crates.remove(existing)
                held.crates.append(entry)
                self._write_manifest(held)
                return entry
            _write_atomic(self.crate_path(entry.name, entry.version), data)
            self._write_index_line(line)
            held.crates = sorted([*held.crates, entry], key=lambda e: (e.name, e.version))
            self._write_manifest(held)
        return entry

    # internals

    def _write_index_line(self, line: IndexLine) -> None:
        path = self.index_path(line.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [t for t in lines if t and json.loads(t).get("vers") != line.vers]
        _write_atomic(path, "".join(t + "\n" for t in [*kept, line.to_json()]).encode())

    def _read_manifest(self) -> MirrorManifest:
        path = self.path / MANIFEST_FILE
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise MirrorError(f"{path} is over {MAX_MANIFEST_BYTES} bytes")
        try:
            return MirrorManifest.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise MirrorError(f"{path} is damaged: {exc}") from None

    def _write_manifest(self, manifest: MirrorManifest) -> None:
        text = json.dumps(manifest.model_dump(), indent=1, sort_keys=True) + "\n"
        _write_atomic(self.path / MANIFEST_FILE, text.encode())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _read_crate_manifest(data: bytes) -> dict:
    try:
        manifest = cratefile.read_manifest(data)
    except MirrorError:
        raise
    except FarmError as exc:
        raise MirrorError(f"not a usable .crate: {exc}") from None
    package = manifest.get("package") if isinstance(manifest, dict) else None
    if not isinstance(package, dict):
        raise MirrorError("not a usable .crate: its Cargo.toml has no [package] table")
    check_version(check_name(package.get("name")), package.get("version"))
    return manifest


def _conflict(held: list[CrateEntry], new: CrateEntry) -> CrateEntry | None:
    """The held entry equal to ``new`` (same bytes), or None if ``new`` may be added.
    Raises MirrorError for different bytes under a held version, or another spelling of
    a held crate's name (crates.io treats them as one crate)."""
    for old in held:
        if not same_crate(old.name, new.name):
            continue
        if old.name != new.name:
            raise MirrorError(
                f"{new.name}: the mirror holds this crate as {old.name!r}; "
                "crates.io treats names equal up to case and '-'/'_' as one crate"
            )
        if old.version.split("+")[0] != new.version.split("+")[0]:
            continue
        if old.cksum == new.cksum and old.version == new.version:
            return old
        raise MirrorError(
            f"{new.name} {new.version}: the mirror already holds {old.version} with cksum "
            f"{old.cksum}, this file has {new.cksum}; a published version never changes, "
            "so use a new mirror directory rather than replacing it"
        )
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
