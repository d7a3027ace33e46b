"""Read and unpack a ``.crate`` (a gzip'd tar) without trusting it.

Callers: ``farm.fetch`` (vendoring each downloaded crate), ``farm.mirror`` (deriving an
index line from a crate's normalized Cargo.toml). The bytes come from a registry, or from
whoever filled a mirror: a crate's checksum says only that it is the crate the lock
named, not that the crate is well formed. So the whole archive is decompressed and
checked in memory, within caps, before one byte is written: only regular files and
directories, each under ``{name}-{version}/``, no links, devices, absolute or ``..``
paths, no duplicate names. Writing then goes through directory descriptors, creating
every entry with ``O_EXCL``/``O_NOFOLLOW``, so even a destination someone races cannot
redirect a write.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from farm.errors import CrateRejectedError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Written by the fetch phase next to the files; a crate may not bring its own.
CHECKSUM_FILE = ".cargo-checksum.json"


class CrateLimits(BaseModel):
    """Caps on one .crate. crates.io itself refuses uploads above 10 MiB compressed."""

    model_config = ConfigDict(frozen=True)

    max_compressed: int = 64 << 20
    max_unpacked: int = 512 << 20
    max_file: int = 128 << 20
    max_members: int = 65536
    #: Unpacked/compressed above this is a bomb, once past ``ratio_floor`` bytes unpacked.
    max_ratio: int = 200
    ratio_floor: int = 8 << 20


@dataclass(frozen=True)
class Member:
    """One checked entry: ``path`` is relative to the crate's top directory."""

    path: tuple[str, ...]
    is_dir: bool
    data: bytes
    executable: bool


@dataclass(frozen=True)
class Crate:
    """A checked crate: its top directory name and its members (top directory excluded)."""

    top: str
    members: list[Member]

    def file(self, name: str) -> bytes | None:
        for m in self.members:
            if not m.is_dir and m.path == (name,):
                return m.data
        return None


def open_crate(
    data: bytes,
    name: str | None = None,
    version: str | None = None,
    limits: CrateLimits | None = None,
) -> Crate:
    """Check ``data`` as a .crate; ``name``/``version``, when given, fix its top directory.

    Raises CrateRejectedError saying which member broke which rule.
    """
    limits = limits or CrateLimits()
    label = f"{name} {version}" if name else "crate"
    raw = _gunzip(data, label, limits)
    expected = f"{name}-{version}" if name else None
    members, top = _members(raw, label, expected, limits)
    return Crate(top=top, members=members)


def read_manifest(
    data: bytes,
    name: str | None = None,
    version: str | None = None,
    limits: CrateLimits | None = None,
) -> dict[str, Any]:
    """The crate's normalized Cargo.toml, parsed; its package name and version must match
    the top directory (and ``name``/``version`` when given). Raises CrateRejectedError."""
    crate = open_crate(data, name, version, limits)
    return manifest_of(crate)


def manifest_of(crate: Crate) -> dict[str, Any]:
    text = crate.file("Cargo.toml")
    if text is None:
        raise CrateRejectedError(f"{crate.top}: the crate has no Cargo.toml")
    try:
        manifest = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CrateRejectedError(f"{crate.top}: Cargo.toml does not parse ({exc})") from None
    package = manifest.get("package")
    if not isinstance(package, dict):
        raise CrateRejectedError(f"{crate.top}: Cargo.toml has no [package]")
    spelled = f"{package.get('name')}-{package.get('version')}"
    if spelled != crate.top:
        raise CrateRejectedError(
            f"{crate.top}: Cargo.toml says {spelled}; the archive is not the crate it claims"
        )
    return manifest


def unpack(
    data: bytes,
    dest_dir: Path,
    name: str | None = None,
    version: str | None = None,
    limits: CrateLimits | None = None,
) -> dict[str, str]:
    """Check ``data``, then write its files into ``dest_dir`` (created; its parent must
    exist and ``dest_dir`` must not), without the ``{name}-{version}/`` prefix.

    Returns ``{relative path: sha256 hex}`` for every file, as cargo's
    ``.cargo-checksum.json`` lists them. Raises CrateRejectedError before writing anything
    when the crate is malformed; OSError when ``dest_dir`` exists or is reached by a link.
    """
    crate = open_crate(data, name, version, limits)
    return write_crate(crate, dest_dir)


def write_crate(crate: Crate, dest_dir: Path) -> dict[str, str]:
    """Write a checked crate's members below a new ``dest_dir`` (see ``unpack``)."""
    parent_fd = os.open(dest_dir.parent, _DIR_FLAGS)
    try:
        os.mkdir(dest_dir.name, 0o755, dir_fd=parent_fd)
        root = os.open(dest_dir.name, _DIR_FLAGS, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)
    sums: dict[str, str] = {}
    try:
        for member in crate.members:
            _write_member(root, member)
            if not member.is_dir:
                sums["/".join(member.path)] = hashlib.sha256(member.data).hexdigest()
    finally:
        os.close(root)
    return dict(sorted(sums.items()))


def _write_member(root: int, member: Member) -> None:
    fd = root
    try:
        for part in member.path[:-1]:
            child = _mkdir_open(fd, part)
            if fd != root:
                os.close(fd)
            fd = child
        last = member.path[-1]
        if member.is_dir:
            os.close(_mkdir_open(fd, last))
            return
        out = os.open(last, _NEW_FILE, 0o755 if member.executable else 0o644, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            f.write(member.data)
    finally:
        if fd != root:
            os.close(fd)


def _mkdir_open(dir_fd: int, name: str) -> int:
    # An existing entry is opened with O_NOFOLLOW|O_DIRECTORY: a file or link there fails.
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _gunzip(data: bytes, label: str, limits: CrateLimits) -> bytes:
    if len(data) > limits.max_compressed:
        raise CrateRejectedError(
            f"{label}: {len(data)} bytes compressed is above the {limits.max_compressed} cap"
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(data, limits.max_unpacked + 1)
    except zlib.error as exc:
        raise CrateRejectedError(f"{label}: not a gzip stream ({exc})") from None
    if len(raw) > limits.max_unpacked or inflater.unconsumed_tail:
        raise CrateRejectedError(f"{label}: unpacks to more than {limits.max_unpacked} bytes")
    if not inflater.eof:
        raise CrateRejectedError(f"{label}: the gzip stream is truncated")
    if inflater.unused_data:
        raise CrateRejectedError(f"{label}: data after the gzip stream (cargo would ignore it)")
    if len(raw) > limits.ratio_floor and len(raw) > limits.max_ratio * max(len(data), 1):
        raise CrateRejectedError(
            f"{label}: compression ratio {len(raw) // max(len(data), 1)} is above "
            f"{limits.max_ratio}: a decompression bomb, not a crate"
        )
    return raw


def _members(
    raw: bytes, label: str, expected: str | None, limits: CrateLimits
) -> tuple[list[Member], str]:
    try:
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")  # noqa: SIM115 (closed below)
    except tarfile.TarError as exc:
        raise CrateRejectedError(f"{label}: not a tar archive ({exc})") from None
    members: list[Member] = []
    seen = _Seen(set(), set())
    count = 0
    top = expected
    with tar:
        while True:
            try:
                info = tar.next()
            except tarfile.TarError as exc:
                raise CrateRejectedError(f"{label}: broken tar archive ({exc})") from None
            if info is None:
                break
            count += 1
            if count > limits.max_members:
                raise CrateRejectedError(f"{label}: more than {limits.max_members} members")
            parts = _parts(info, label)
            top = top or parts[0]
            if parts[0] != top:
                raise CrateRejectedError(
                    f"{label}: member {info.name!r} is outside {top}/; refusing the crate"
                )
            member = _member(tar, info, parts[1:], label, limits)
            if member is not None:
                _record(seen, member, info.name, label)
                members.append(member)
    if top is None:
        raise CrateRejectedError(f"{label}: the archive is empty")
    total = sum(len(m.data) for m in members)
    if total > limits.max_unpacked:
        raise CrateRejectedError(f"{label}: files total more than {limits.max_unpacked} bytes")
    return members, top


def _parts(info: tarfile.TarInfo, label: str) -> tuple[str, ...]:
    name = info.name
    bad = (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(0xDC80 <= ord(c) <= 0xDCFF for c in name)  # undecodable bytes
    )
    parts = tuple(name.rstrip("/").split("/")) if not bad else ()
    if bad or any(p in ("", ".", "..") for p in parts):
        raise CrateRejectedError(f"{label}: member name {name!r} is not a plain relative path")
    return parts


def _member(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    path: tuple[str, ...],
    label: str,
    limits: CrateLimits,
) -> Member | None:
    if info.isdir():
        return Member(path, True, b"", False) if path else None
    if not info.isreg() or info.issparse():
        raise CrateRejectedError(
            f"{label}: member {info.name!r} is a {_kind(info)}; only files and directories "
            "are allowed in a crate"
        )
    if not path:
        raise CrateRejectedError(f"{label}: member {info.name!r} is a file at the top")
    if path == (CHECKSUM_FILE,):
        raise CrateRejectedError(f"{label}: the crate brings its own {CHECKSUM_FILE}")
    if info.size > limits.max_file:
        raise CrateRejectedError(
            f"{label}: member {info.name!r} is {info.size} bytes, above the {limits.max_file} cap"
        )
    f = tar.extractfile(info)
    data = f.read() if f is not None else b""
    return Member(path, False, data, bool(info.mode & 0o111))


@dataclass
class _Seen:
    """Paths seen so far: files, and directories (explicit or implied by a deeper path)."""

    files: set[tuple[str, ...]]
    dirs: set[tuple[str, ...]]


def _record(seen: _Seen, member: Member, name: str, label: str) -> None:
    """Refuse a second entry of one file, a file where a directory is (or the reverse),
    and an entry below a file: each would make what is written depend on member order."""
    path = member.path
    if path in seen.files or (not member.is_dir and path in seen.dirs):
        raise CrateRejectedError(f"{label}: member {name!r} appears twice")
    if any(path[:i] in seen.files for i in range(1, len(path))):
        raise CrateRejectedError(f"{label}: member {name!r} is below a file")
    seen.dirs.update(path[:i] for i in range(1, len(path)))
    (seen.dirs if member.is_dir else seen.files).add(path)


def _kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"symlink to {info.linkname!r}"
    if info.islnk():
        return f"hard link to {info.linkname!r}"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "FIFO"
    return f"tar entry of type {info.type!r}"
