"""Deterministic source snapshot: copy the source tree and compute its digest.

Callers: ``farm.runner``; ``farm.buildflow`` computes the same digest without a copy
(``digest``) to look a build up in the cache before running it. The build sees the
copy, mounted read-only, so what was hashed is exactly what was built, and a build
script cannot touch the user's tree. The copy is sorted, its mtimes clamped to
SOURCE_DATE_EPOCH and its owner root.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

from farm.errors import InfrastructureError, InputError

#: Never part of the input: cargo's default target dir and VCS metadata.
EXCLUDED_TOP = frozenset({"target", ".git"})


def snapshot(source: Path, dest: Path, epoch: int) -> str:
    """Copy ``source`` to ``dest``; return ``sha256:<hex>`` of the canonical manifest.

    Raises InputError when the source holds a FIFO, socket or device.
    """
    manifest = hashlib.sha256()
    dest.mkdir(parents=True, exist_ok=False)
    dest.chmod(0o755)  # explicit: the host's umask must not decide what uid 10001 can read
    entries = _walk(source)
    for rel in entries:
        entry = _copy_entry(source / rel, dest / rel, rel)
        # JSON escapes newlines in names, so two different trees never share a manifest.
        manifest.update(json.dumps(entry).encode() + b"\n")
    # Children before parents, so creating nothing more cannot bump a directory's mtime.
    for rel in [*reversed(entries), Path()]:
        os.utime(dest / rel, (epoch, epoch), follow_symlinks=False)
    return f"sha256:{manifest.hexdigest()}"


def digest(source: Path) -> str:
    """The digest ``snapshot`` would return for ``source``, without copying anything."""
    manifest = hashlib.sha256()
    for rel in _walk(source):
        manifest.update(json.dumps(_copy_entry(source / rel, None, rel)).encode() + b"\n")
    return f"sha256:{manifest.hexdigest()}"


def _walk(root: Path) -> list[Path]:
    """Every entry under root in sorted order, iteratively (a deep tree is no crash)."""
    out: list[Path] = []
    stack = [Path()]
    while stack:
        rel = stack.pop()
        for name in os.listdir(root / rel):
            if rel == Path() and name in EXCLUDED_TOP:
                continue
            child = rel / name
            if _is_dir(root / child):
                stack.append(child)  # added to `out` when it is popped below
            else:
                out.append(child)
        if rel != Path():
            out.append(rel)
    # Sorting by parts puts every directory before its contents.
    return sorted(out, key=lambda p: p.parts)


def _is_dir(path: Path) -> bool:
    return stat.S_ISDIR(path.lstat().st_mode)


def _copy_entry(src: Path, dst: Path | None, rel: Path) -> list[str]:
    """The manifest entry of ``src``; copies it to ``dst`` unless that is None."""
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(src)
        if dst:
            os.symlink(target, dst)
        return ["l", rel.as_posix(), target]
    if stat.S_ISDIR(st.st_mode):
        if dst:
            dst.mkdir()
            dst.chmod(0o755)
        return ["d", rel.as_posix()]
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"source: {rel} is not a regular file, directory or symlink; remove it")
    mode = 0o755 if st.st_mode & 0o111 else 0o644
    return ["f", rel.as_posix(), f"{mode:o}", _copy_file(src, dst, st, rel, mode)]


def _copy_file(src: Path, dst: Path | None, st: os.stat_result, rel: Path, mode: int) -> str:
    # farm runs as root: never follow a link swapped in after lstat, never block on a FIFO.
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    hasher = hashlib.sha256()
    with os.fdopen(fd, "rb") as fin:
        now = os.fstat(fin.fileno())
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            raise InputError(f"source: {rel} changed while being copied; try again")
        with dst.open("wb") if dst else open(os.devnull, "wb") as fout:
            while chunk := fin.read(1 << 20):
                hasher.update(chunk)
                fout.write(chunk)
    if dst:
        dst.chmod(mode)
    return hasher.hexdigest()


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
