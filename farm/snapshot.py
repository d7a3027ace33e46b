"""Deterministic source snapshot: copy the source tree and compute its digest.

Callers: ``farm.runner``; ``farm.buildflow`` computes the same digest without a copy
(``digest``) to look a build up in the cache before running it. The build sees the
copy, mounted read-only, so what was hashed is exactly what was built, and a build
script cannot touch the user's tree. The copy is sorted, its mtimes clamped to
SOURCE_DATE_EPOCH and its owner root.

farm runs as root and the tree may belong to someone who changes it while it is being
copied. So nothing is ever opened by a path that was looked at earlier: the source is
opened once (beneath the service's allowed directory when there is one, component by
component), every directory and file is opened relative to its parent's descriptor with
``O_NOFOLLOW`` and checked against what the listing said (type, device, inode), and the
copy is created the same way, relative to descriptors of directories farm made itself.
Symlinks are copied last, after every file and directory exists, so nothing is ever
written through one. An entry that changes under the walk fails the snapshot with
"changed while being copied; try again".
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from farm.confine import DIR_FLAGS, FILE_FLAGS, Outside, open_beneath, open_dir
from farm.errors import InfrastructureError, InputError
from farm.spec import DEFAULT_DISK, format_size

#: Never part of the input: cargo's default target dir and VCS metadata.
EXCLUDED_TOP = frozenset({"target", ".git"})
#: Two descriptors are open per level (source and copy); deeper trees are refused.
MAX_DEPTH = 400
#: Entries a source may hold: each costs an inode in the copy and a line of the manifest.
MAX_ENTRIES = 1_000_000
#: Errors that mean an entry is not what its listing said a moment ago.
_CHANGED = frozenset({errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EINVAL})

#: Test seam: called as ``hook(event, rel)`` with event "listed" (a directory's entries
#: were read, none opened yet) and "created" (a directory's copy exists, its source is
#: not opened yet). Tests change the tree here to make a race deterministic.
Hook = Callable[[str, str], None]


class Changed(Exception):
    """An entry was swapped, removed or replaced while the snapshot ran."""


@dataclass
class Budget:
    """What one source may cost to hash and copy: its files' bytes as read (a sparse
    file counts its apparent size, each hard link its own copy) and its entries. A
    tree over either fails before the copy or the hashing goes past it."""

    max_bytes: int
    max_entries: int = MAX_ENTRIES
    used_bytes: int = 0
    entries: int = 0

    def entry(self, rel: str) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise InputError(
                f"source: more than {self.max_entries} files and directories (at {rel}); "
                "build a smaller directory"
            )

    def take(self, size: int, rel: str) -> None:
        self.used_bytes += size
        if self.used_bytes > self.max_bytes:
            raise InputError(
                f"source: more than {format_size(self.max_bytes)} of file contents (at "
                f"{rel}), the build's disk limit (resources.disk); raise it or build a "
                "smaller directory"
            )


def snapshot(
    source: Path,
    dest: Path,
    epoch: int,
    *,
    max_bytes: int = DEFAULT_DISK,
    within: Path | None = None,
    hook: Hook | None = None,
) -> str:
    """Copy ``source`` to ``dest``; return ``sha256:<hex>`` of the canonical manifest.

    ``within``: the directory the source must lie beneath (``farm serve``'s source
    root); no symlink is followed from there down. Raises InputError when the source
    holds a FIFO, socket or device, changes while being copied, or is over ``max_bytes``
    of contents or ``MAX_ENTRIES`` entries (``Budget``).
    """
    dest.mkdir(parents=True, exist_ok=False)
    dest.chmod(0o755)  # explicit: the host's umask must not decide what uid 10001 can read
    dst_fd = os.open(dest, DIR_FLAGS)
    try:
        with _opened(source, within) as src_fd:
            copy = _Copy(dst_fd, epoch)
            sha = _run(src_fd, copy, hook, Budget(max_bytes))
        copy.finish()
    finally:
        os.close(dst_fd)
    return sha


def digest(source: Path, *, max_bytes: int = DEFAULT_DISK, within: Path | None = None) -> str:
    """The digest ``snapshot`` would return for ``source``, without copying anything.
    Raises InputError as ``snapshot`` does."""
    with _opened(source, within) as src_fd:
        return _run(src_fd, None, None, Budget(max_bytes))


@contextmanager
def _opened(source: Path, within: Path | None) -> Iterator[int]:
    """The source's descriptor, with open errors turned into InputError."""
    try:
        fd = open_dir(source, within)
    except (Outside, OSError) as exc:
        if within is None:
            raise InputError(f"source: cannot open {str(source)!r}: {exc}") from None
        raise InputError(
            f"source: cannot open {str(source)!r} beneath {str(within)!r} without following "
            "a symlink; name the project's real directory"
        ) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _run(src_fd: int, copy: _Copy | None, hook: Hook | None, budget: Budget) -> str:
    manifest = hashlib.sha256()
    try:
        for entry in _walk(src_fd, copy, hook or (lambda event, rel: None), budget):
            # JSON escapes newlines in names, so two different trees never share a manifest.
            manifest.update(json.dumps(entry).encode() + b"\n")
    except Changed as exc:
        raise InputError(f"source: {exc} changed while being copied; try again") from None
    return f"sha256:{manifest.hexdigest()}"


@dataclass
class _Frame:
    """One directory being walked: its path parts, descriptors and remaining entries."""

    parts: tuple[str, ...]
    src: int
    dst: int | None
    entries: Iterator[tuple[str, os.stat_result]]
    ident: tuple[int, int]
    parent: _Frame | None = field(default=None, repr=False)


def _walk(root_fd: int, copy: _Copy | None, hook: Hook, budget: Budget) -> Iterator[list[str]]:
    """Manifest entries in sorted order (a directory before its contents), copying each
    as it goes. Iterative, holding descriptors only along the current path."""
    root = _Frame((), root_fd, copy.root if copy else None, iter(()), _ident(root_fd))
    root.entries = _listing(root, hook)
    frames = [root]
    try:
        while frames:
            frame = frames[-1]
            item = next(frame.entries, None)
            if item is None:
                _leave(frames.pop())
                continue
            name, st = item
            parts = (*frame.parts, name)
            rel = "/".join(parts)
            budget.entry(rel)
            if stat.S_ISLNK(st.st_mode):
                target = _readlink(frame, name, st, rel)
                if copy:
                    copy.links.append((parts, target))
                yield ["l", rel, target]
            elif stat.S_ISDIR(st.st_mode):
                yield ["d", rel]
                child = _enter(frame, name, st, rel, copy, hook)
                frames.append(child)  # first, so its descriptors are closed whatever happens
                child.entries = _listing(child, hook)
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                digest = _copy_file(frame, name, st, rel, mode, copy, budget)
                yield ["f", rel, f"{mode:o}", digest]
            else:
                raise InputError(
                    f"source: {rel} is not a regular file, directory or symlink; remove it"
                )
    finally:
        for frame in frames[1:]:
            _close(frame)


def _listing(frame: _Frame, hook: Hook) -> Iterator[tuple[str, os.stat_result]]:
    rel = "/".join(frame.parts) or "."
    try:
        with os.scandir(frame.src) as scan:
            found = sorted(
                (e.name, e.stat(follow_symlinks=False))
                for e in scan
                if frame.parts or e.name not in EXCLUDED_TOP
            )
    except OSError as exc:
        if exc.errno in _CHANGED:
            raise Changed(rel) from None
        raise
    hook("listed", rel)
    return iter(found)


def _enter(
    frame: _Frame, name: str, st: os.stat_result, rel: str, copy: _Copy | None, hook: Hook
) -> _Frame:
    if len(frame.parts) + 1 > MAX_DEPTH:
        raise InputError(f"source: {rel} is nested deeper than {MAX_DEPTH} directories")
    dst = None
    if copy and frame.dst is not None:
        os.mkdir(name, 0o755, dir_fd=frame.dst)
        dst = os.open(name, DIR_FLAGS, dir_fd=frame.dst)
        os.fchmod(dst, 0o755)  # the host's umask must not decide
        copy.dirs.append((*frame.parts, name))
        hook("created", rel)
    try:
        src = _open_checked(frame.src, name, DIR_FLAGS, st, rel)
    except BaseException:
        if dst is not None:
            os.close(dst)
        raise
    return _Frame((*frame.parts, name), src, dst, iter(()), (st.st_dev, st.st_ino), frame)


def _leave(frame: _Frame) -> None:
    """A directory is done: it must still be the one that sits under its name."""
    try:
        if frame.parent is not None:
            now = os.stat(frame.parts[-1], dir_fd=frame.parent.src, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != frame.ident:
                raise Changed("/".join(frame.parts))
    finally:
        if frame.parent is not None:
            _close(frame)


def _close(frame: _Frame) -> None:
    os.close(frame.src)
    if frame.dst is not None:
        os.close(frame.dst)


def _open_checked(dir_fd: int, name: str, flags: int, st: os.stat_result, rel: str) -> int:
    """Open ``name`` below ``dir_fd``; it must be the very entry the listing saw."""
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _CHANGED:
            raise Changed(rel) from None
        raise
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or stat.S_IFMT(
        now.st_mode
    ) != stat.S_IFMT(st.st_mode):
        os.close(fd)
        raise Changed(rel)
    return fd


def _readlink(frame: _Frame, name: str, st: os.stat_result, rel: str) -> str:
    try:
        target = os.readlink(name, dir_fd=frame.src)
        now = os.stat(name, dir_fd=frame.src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _CHANGED:
            raise Changed(rel) from None
        raise
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise Changed(rel)
    return target


def _copy_file(
    frame: _Frame,
    name: str,
    st: os.stat_result,
    rel: str,
    mode: int,
    copy: _Copy | None,
    budget: Budget,
) -> str:
    if st.st_size > budget.max_bytes - budget.used_bytes:
        budget.take(st.st_size, rel)  # its listed size alone is over: read nothing
    fd = _open_checked(frame.src, name, FILE_FLAGS, st, rel)
    hasher = hashlib.sha256()
    out = -1
    try:
        if copy and frame.dst is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.open(name, flags, mode, dir_fd=frame.dst)
        while chunk := os.read(fd, 1 << 20):
            budget.take(len(chunk), rel)  # as read: a file that grows is counted too
            hasher.update(chunk)
            if out >= 0:
                _write_all(out, chunk)
        if out >= 0 and copy:
            os.fchmod(out, mode)
            os.utime(out, (copy.epoch, copy.epoch))
    finally:
        os.close(fd)
        if out >= 0:
            os.close(out)
    return hasher.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


@dataclass
class _Copy:
    """The copy's side: its root descriptor, and what is left to do once every file and
    directory exists (symlinks, then directory mtimes)."""

    root: int
    epoch: int
    dirs: list[tuple[str, ...]] = field(default_factory=list)
    links: list[tuple[tuple[str, ...], str]] = field(default_factory=list)

    def finish(self) -> None:
        times = (self.epoch, self.epoch)
        for parts, target in self.links:
            parent = open_beneath(self.root, parts[:-1])
            try:
                os.symlink(target, parts[-1], dir_fd=parent)
                os.utime(parts[-1], times, dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)
        # Last, so that creating nothing more can bump a directory's mtime.
        for parts in [*self.dirs, ()]:
            fd = open_beneath(self.root, parts)
            try:
                os.utime(fd, times)
            finally:
                os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete a build's directory, however deep or read-only the build made it.

    ``rm`` walks iteratively (Python 3.11's rmtree recurses, and a hostile build can nest
    thousands of levels); as root it ignores permission bits; it never crosses mounts.
    Raises InfrastructureError if the directory is still there afterwards.
    """
    if not os.path.lexists(path):
        return
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True)
    if os.path.lexists(path):
        raise InfrastructureError(f"could not remove {path}; remove it by hand")
