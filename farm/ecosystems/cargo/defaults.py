"""Cargo-specific defaults: the argv and outputs of a project that has a Cargo.toml.

Callers: ``farm.ecosystems.cargo.vendor.Cargo`` (its ``default_argv``/``default_outputs``,
which ``farm.runner.resolve`` and ``farm.k8s`` reach through ``farm.ecosystems``, never
naming cargo); ``farm.ecosystems.cargo.toolchain`` reads the manifests with ``manifests``.

The tree is untrusted and farm reads it as root, before the snapshot: every manifest is
opened beneath the source's descriptor without following a symlink (``farm.confine``),
and workspace member globs are matched against directory listings, never resolved as
paths, so a manifest or member that is a link (to another tenant's tree, to a host
file) is simply not there, and nothing about the host outside leaks into the outputs.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
import tomllib
from pathlib import Path

from farm import tomlread
from farm.confine import FILE_FLAGS, Outside, open_beneath, open_dir
from farm.errors import SpecError

#: Offline and locked: the build phase has no network, and Cargo.lock is the contract.
DEFAULT_ARGV = ["cargo", "build", "--release", "--locked", "--offline"]
#: A manifest larger than this is not a manifest.
MAX_MANIFEST = 4 << 20
#: Workspace members matched, in all.
MAX_MEMBERS = 4096

_MAGIC = re.compile(r"[*?\[]")
_Parts = tuple[str, ...]


def is_cargo_project(source: Path, within: Path | None = None) -> bool:
    """Whether ``source`` holds a Cargo.toml (a regular file, not a link)."""
    try:
        fd = open_dir(source, within)
    except (Outside, OSError):
        return False
    try:
        return _is_file(fd, ("Cargo.toml",))
    finally:
        os.close(fd)


def binary_outputs(source: Path, within: Path | None = None) -> list[str]:
    """Output globs for every binary target of the package or workspace at ``source``.

    Raises SpecError when a manifest cannot be read or parsed.
    """
    try:
        fd = open_dir(source, within)
    except (Outside, OSError) as exc:
        raise SpecError([f"source: cannot open {source}: {exc}"]) from None
    try:
        names: list[str] = []
        for member in _members(fd):
            names.extend(_binaries(fd, member))
        return [f"target/release/{name}" for name in sorted(set(names))]
    finally:
        os.close(fd)


def _members(fd: int) -> list[_Parts]:
    """The root package, then each workspace member that has a manifest."""
    patterns = _read(fd, ()).get("workspace", {}).get("members", [])
    found: list[_Parts] = [()]
    for pattern in patterns if isinstance(patterns, list) else []:
        for member in _glob(fd, str(pattern)):
            if member not in found and _is_file(fd, (*member, "Cargo.toml")):
                found.append(member)
    return found


def _glob(fd: int, pattern: str) -> list[_Parts]:
    """Directories below ``fd`` matching a member glob, one component at a time. A
    pattern with ``..`` could only leave the tree; it matches nothing."""
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return []
    matches: list[_Parts] = [()]
    for component in parts:
        step: list[_Parts] = []
        for match in matches:
            if not _MAGIC.search(component):
                step.append((*match, component))
                continue
            for name in _listing(fd, match):
                if not name.startswith(".") and fnmatch.fnmatchcase(name, component):
                    step.append((*match, name))
        matches = step[:MAX_MEMBERS]
    return matches


def _listing(fd: int, parts: _Parts) -> list[str]:
    try:
        dir_fd = open_beneath(fd, parts)
    except OSError:
        return []
    try:
        return sorted(os.listdir(dir_fd))
    finally:
        os.close(dir_fd)


def _binaries(fd: int, member: _Parts) -> list[str]:
    data = _read(fd, member)
    package = data.get("package", {}).get("name")
    bins = [b["name"] for b in data.get("bin", []) if isinstance(b, dict) and "name" in b]
    if package and not bins and _is_file(fd, (*member, "src", "main.rs")):
        bins.append(package)
    return bins


def _read(fd: int, member: _Parts) -> dict:
    where = "/".join((*member, "Cargo.toml"))
    try:
        file_fd = _file_fd(fd, (*member, "Cargo.toml"))
        if file_fd is None:
            raise OSError(errno.ENOENT, "not a regular file (links are not followed)")
        with os.fdopen(file_fd, "rb") as fh:
            text = fh.read(MAX_MANIFEST + 1)
        if len(text) > MAX_MANIFEST:
            raise OSError(errno.EFBIG, f"larger than {MAX_MANIFEST} bytes")
        return tomlread.loads(text.decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError([f"source: cannot read {where}: {exc}"]) from None


def _is_file(fd: int, parts: _Parts) -> bool:
    file_fd = _file_fd(fd, parts)
    if file_fd is None:
        return False
    os.close(file_fd)
    return True


def _file_fd(fd: int, parts: _Parts) -> int | None:
    """A descriptor of the regular file at ``parts`` below ``fd``, or None."""
    try:
        file_fd = open_beneath(fd, parts, FILE_FLAGS)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        return None
    return file_fd


def manifests(fd: int) -> list[tuple[_Parts, dict]]:
    """(member path, parsed Cargo.toml) of the package or workspace open at ``fd``: the
    root first. For ``farm.ecosystems.cargo.toolchain``; raises SpecError as ``_read``."""
    return [(member, _read(fd, member)) for member in _members(fd)]
