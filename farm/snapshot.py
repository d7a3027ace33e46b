"""Deterministic source snapshot: copy the source tree and compute its digest.

Callers: ``farm.runner``. The build sees the copy, mounted read-only, so what was
hashed is exactly what was built, and a build script cannot touch the user's tree.
The copy is sorted, its mtimes clamped to SOURCE_DATE_EPOCH and its owner root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from farm.errors import InputError

#: Never part of the input: cargo's default target dir and VCS metadata.
EXCLUDED_TOP = frozenset({"target", ".git"})


def snapshot(source: Path, dest: Path, epoch: int) -> str:
    """Copy ``source`` to ``dest``; return ``sha256:<hex>`` of the canonical manifest.

    Raises InputError when the source holds a FIFO, socket or device.
    """
    manifest = hashlib.sha256()
    dest.mkdir(parents=True, exist_ok=False)
    for rel in _walk(source):
        line = _copy_entry(source / rel, dest / rel, rel)
        manifest.update(line.encode() + b"\n")
    _clamp_mtimes(dest, epoch)
    return f"sha256:{manifest.hexdigest()}"


def _walk(root: Path, rel: Path = Path()) -> list[Path]:
    out: list[Path] = []
    for name in sorted(os.listdir(root / rel)):
        if rel == Path() and name in EXCLUDED_TOP:
            continue
        child = rel / name
        out.append(child)
        if (root / child).is_dir() and not (root / child).is_symlink():
            out.extend(_walk(root, child))
    return out


def _copy_entry(src: Path, dst: Path, rel: Path) -> str:
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(src)
        os.symlink(target, dst)
        return f"l {rel.as_posix()} {target}"
    if stat.S_ISDIR(st.st_mode):
        dst.mkdir(mode=0o755)
        return f"d {rel.as_posix()}"
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"source: {rel} is not a regular file, directory or symlink; remove it")
    mode = 0o755 if st.st_mode & 0o111 else 0o644
    digest = hashlib.sha256()
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
    dst.chmod(mode)
    return f"f {rel.as_posix()} {mode:o} {digest.hexdigest()}"


def _clamp_mtimes(root: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(Path(dirpath) / name, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def remove_tree(path: Path) -> None:
    """Delete a build's directory even when the build made parts of it read-only."""

    def _retry(func, p, _exc):  # type: ignore[no-untyped-def]
        os.chmod(os.path.dirname(p), 0o700)
        func(p)

    if path.exists():
        shutil.rmtree(path, onerror=_retry)
