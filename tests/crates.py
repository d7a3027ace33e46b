"""Build real .crate files (gzip'd tar) in tests, well formed or hostile on purpose."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable, Iterable

Extra = Callable[[tarfile.TarFile, str], None]


def manifest(name: str, version: str, body: str = "") -> bytes:
    return f'[package]\nname = "{name}"\nversion = "{version}"\nedition = "2018"\n{body}'.encode()


def make_crate(
    name: str,
    version: str,
    files: dict[str, bytes] | None = None,
    extra: Iterable[Extra] = (),
    *,
    with_manifest: bool = True,
) -> bytes:
    """A .crate of ``files`` (paths below ``{name}-{version}/``) plus ``extra`` raw members,
    each added by a callable given the tar and the top directory. Deterministic bytes."""
    top = f"{name}-{version}"
    contents = dict(files or {"src/lib.rs": b"pub fn f() {}\n"})
    if with_manifest:
        contents.setdefault("Cargo.toml", manifest(name, version))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(contents.items()):
            add_file(tar, f"{top}/{path}", data)
        for add in extra:
            add(tar, top)
    return gzip.compress(buf.getvalue(), mtime=0)


def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def add_special(name_in_top: str, kind: bytes, linkname: str = "") -> Extra:
    """A member of tar type ``kind`` (tarfile.SYMTYPE, LNKTYPE, CHRTYPE, FIFOTYPE…)."""

    def add(tar: tarfile.TarFile, top: str) -> None:
        info = tarfile.TarInfo(f"{top}/{name_in_top}")
        info.type, info.linkname, info.mode = kind, linkname, 0o644
        tar.addfile(info)

    return add


def add_raw(name: str, data: bytes = b"x") -> Extra:
    """A regular file whose name is used exactly as given (not below the top)."""
    return lambda tar, top: add_file(tar, name.replace("{top}", top), data)
