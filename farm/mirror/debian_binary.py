"""The Debian-derived mirror tier: crates repacked from librust-*-dev binary packages.

Callers: ``farm mirror add DIR --debian-binary PROGRAM[/SUITE]`` (farm.mirror_cli) and the
realworld corpus (tests/realworld), which fills a loopback mirror with what one program needs.

Why it exists: the source pool of the archive reachable here is sparse, so a program's whole
lockfile cannot be filled with crates.io's own bytes (Debian orig tarballs). Every
librust-*-dev ``.deb`` is reachable, and each one ships a crate's (Debian-patched) source
under ``/usr/share/cargo/registry/<name>-<version>/``. This module repacks that directory
into a ``.crate`` deterministically, so the same ``.deb`` always gives the same checksum.
These are NOT crates.io bytes: the checksum is farm's, the Cargo.toml is Debian's patched
one, and every crate is recorded with origin ``debian-derived:<deb file name>``. A lockfile
resolved against them (farm.fetch.resolve) names these checksums, not crates.io's.

Which packages: the closure of ``Depends`` over librust-*-dev packages of one suite, started
from the program's own librust package (if Debian ships one) and its source package's
``Build-Depends`` (which also names the dev-dependencies Debian kept). An alternative is
satisfied by the packages named or providing it (``Provides`` carries feature and
semver-suffixed names); version relations are left to cargo's resolver, which sees every
candidate. Packages that are not librust-*-dev (compilers, C libraries) are not followed.
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import tarfile
import tomllib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from farm.errors import MirrorError
from farm.mirror.debarchive import DebianArchive, DebianArchiveError, DebianLookupError, Pinned
from farm.mirror.layout import crate_filename

LIBRUST = re.compile(r"librust-[a-z0-9][a-z0-9+.-]*-dev")
PROGRAM = re.compile(r"[a-z0-9][a-z0-9+.-]{0,100}")
REGISTRY = "usr/share/cargo/registry/"
#: cargo's own fixed mtime for crate members (1153704088 = 2006-07-24), as crates.io has.
CRATE_MTIME = 1153704088
#: Bounds on one .deb's data and one crate: members, single file and total bytes.
MAX_MEMBERS = 20000
MAX_FILE = 64 << 20
MAX_TOTAL = 256 << 20
#: The closure is refused beyond this many packages (ripgrep's is ~160, bat's ~400).
MAX_CLOSURE = 3000
#: Files of a Debian registry dir that are Debian's, not the crate's.
DEBIAN_ONLY = {".cargo-checksum.json"}


@dataclass(frozen=True)
class DerivedCrate:
    """One repacked crate, ready for ``Mirror.add_crate(data, origin)``."""

    name: str
    version: str
    data: bytes
    deb: str

    @property
    def origin(self) -> str:
        return f"debian-derived:{self.deb}"


class Closure:
    """The librust-*-dev packages of one suite, and the closure a set of roots needs."""

    def __init__(self, archive: DebianArchive, suite: str) -> None:
        self.archive = archive
        self.suite = suite
        self.packages: dict[str, dict[str, str]] = {}
        self.providers: dict[str, set[str]] = {}
        for stanza in archive.index(suite, "Packages"):
            name = stanza.get("Package", "")
            if not LIBRUST.fullmatch(name):
                continue
            self.packages[name] = stanza
            self.providers.setdefault(name, set()).add(name)
            for provided in _names(stanza.get("Provides", "")):
                self.providers.setdefault(provided, set()).add(name)

    def roots_for_program(self, program: str) -> list[str]:
        """Dependency alternatives that build ``program``: its librust package (if any) and
        its source package's Build-Depends. DebianLookupError if the suite has neither."""
        roots: list[str] = []
        own = f"librust-{program}-dev"
        if own in self.packages:
            roots.append(own)
        source = self.source_stanza(program)
        if source is not None:
            roots += _relations(source.get("Build-Depends", ""))
            roots += _relations(source.get("Build-Depends-Indep", ""))
        if not roots:
            raise DebianLookupError(
                f"{program}: {self.suite} has neither librust-{program}-dev nor a source package "
                f"rust-{program}; name a Rust program Debian packages in {self.suite}"
            )
        return roots

    def source_stanza(self, program: str) -> dict[str, str] | None:
        """The ``Sources`` stanza of ``rust-<program>`` in this suite (newest version), if any."""
        found = [
            s
            for s in self.archive.index(self.suite, "Sources")
            if s.get("Package") == f"rust-{program}"
        ]
        return found[-1] if found else None

    def closure(self, roots: Iterable[str]) -> list[dict[str, str]]:
        """Every librust-*-dev package the roots need, transitively, sorted by name."""
        todo = list(roots)
        seen: set[str] = set()
        while todo:
            relation = todo.pop()
            for name in self._satisfiers(relation):
                if name in seen:
                    continue
                seen.add(name)
                if len(seen) > MAX_CLOSURE:
                    raise DebianArchiveError(f"{self.suite}: closure above {MAX_CLOSURE} packages")
                todo += _relations(self.packages[name].get("Depends", ""))
        return [self.packages[n] for n in sorted(seen)]

    def _satisfiers(self, relation: str) -> set[str]:
        """Real packages satisfying the first alternative of ``relation`` that the suite has."""
        for alternative in relation.split("|"):
            name = _bare(alternative)
            if name and name in self.providers:
                return self.providers[name]
        return set()


def derive(archive: DebianArchive, stanza: dict[str, str]) -> list[DerivedCrate]:
    """Download one librust .deb (verified against Packages) and repack its crate dirs."""
    filename = stanza.get("Filename", "")
    size, sha = stanza.get("Size", ""), stanza.get("SHA256", "")
    if not size.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise DebianArchiveError(f"{stanza.get('Package')}: Packages has no Size/SHA256")
    deb = archive.fetch(Pinned(filename, int(size), sha))
    deb_name = PurePosixPath(filename).name
    return [
        _repack(deb_name, crate_dir, files)
        for crate_dir, files in sorted(registry_dirs(_data_tar(deb, deb_name), deb_name).items())
    ]


def registry_dirs(data_tar: bytes, deb_name: str) -> dict[str, dict[str, tuple[bytes, bool]]]:
    """``{<name>-<version>: {relpath: (bytes, executable)}}`` from a .deb's data.tar.

    Only regular files and directories under usr/share/cargo/registry/ are accepted; a
    link, device or FIFO there, an absolute or ``..`` path, or a member past the bounds is
    refused (DebianArchiveError). Nothing is written to disk: the crate is built in memory.
    """
    dirs: dict[str, dict[str, tuple[bytes, bool]]] = {}
    total = 0
    with tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:") as tar:
        for count, member in enumerate(tar):
            if count >= MAX_MEMBERS:
                raise DebianArchiveError(f"{deb_name}: more than {MAX_MEMBERS} members")
            path = PurePosixPath(member.name.removeprefix("./"))
            text = str(path)
            if not text.startswith(REGISTRY) or text == REGISTRY.rstrip("/"):
                continue
            rel = PurePosixPath(text[len(REGISTRY) :])
            if path.is_absolute() or ".." in path.parts or not rel.parts:
                raise DebianArchiveError(f"{deb_name}: refusing member {member.name!r}")
            if member.isdir():
                dirs.setdefault(rel.parts[0], {})
                continue
            if not member.isfile():
                raise DebianArchiveError(
                    f"{deb_name}: {member.name} is not a regular file; refusing it"
                )
            if member.size > MAX_FILE or total + member.size > MAX_TOTAL:
                raise DebianArchiveError(f"{deb_name}: {member.name} is past the size bounds")
            total += member.size
            stream = tar.extractfile(member)
            data = stream.read() if stream else b""
            inner = "/".join(rel.parts[1:])
            if inner and inner not in DEBIAN_ONLY:
                dirs.setdefault(rel.parts[0], {})[inner] = (data, bool(member.mode & 0o111))
    return dirs


def repack(prefix: str, files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A deterministic ``.crate``: sorted members under ``prefix/``, fixed mtime/uid/gid,
    modes 0644 or 0755, ustar, gzip with mtime 0. Same files in, same bytes out."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rel in sorted(files):
            data, executable = files[rel]
            info = tarfile.TarInfo(f"{prefix}/{rel}")
            info.size, info.mtime = len(data), CRATE_MTIME
            info.mode = 0o755 if executable else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _repack(deb_name: str, crate_dir: str, files: dict[str, tuple[bytes, bool]]) -> DerivedCrate:
    manifest = files.get("Cargo.toml")
    if manifest is None:
        raise DebianArchiveError(f"{deb_name}: {crate_dir} has no Cargo.toml")
    try:
        package = tomllib.loads(manifest[0].decode()).get("package", {})
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DebianArchiveError(f"{deb_name}: {crate_dir}/Cargo.toml: {exc}") from None
    name, version = str(package.get("name", "")), str(package.get("version", ""))
    try:
        prefix = crate_filename(name, version).removesuffix(".crate")
    except MirrorError as exc:
        raise DebianArchiveError(f"{deb_name}: {crate_dir}/Cargo.toml: {exc}") from None
    # The crate's own name and version, not the directory's: Debian names some
    # directories after the package (md-0.10.1 holds md-5 0.10.1).
    return DerivedCrate(name, version, repack(prefix, files), deb_name)


def _data_tar(deb: bytes, deb_name: str) -> bytes:
    """The uncompressed data.tar of an ``ar`` .deb (xz or gzip; Debian's librust use xz)."""
    if not deb.startswith(b"!<arch>\n"):
        raise DebianArchiveError(f"{deb_name}: not a .deb (ar) file")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip() or "0")
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name == "data.tar.xz":
            return _bounded(lzma.LZMADecompressor().decompress, body, deb_name)
        if name == "data.tar.gz":
            return _bounded(zlib.decompressobj(wbits=47).decompress, body, deb_name)
        if name.startswith("data.tar"):
            raise DebianArchiveError(f"{deb_name}: {name} is not supported (xz or gzip only)")
    raise DebianArchiveError(f"{deb_name}: no data.tar member")


def _bounded(decompress: object, body: bytes, deb_name: str) -> bytes:
    try:
        out = decompress(body, max_length=MAX_TOTAL + (1 << 20))  # type: ignore[operator]
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as exc:
        raise DebianArchiveError(f"{deb_name}: data.tar does not decompress: {exc}") from None
    if len(out) > MAX_TOTAL:
        raise DebianArchiveError(f"{deb_name}: data.tar unpacks past {MAX_TOTAL} bytes")
    return out


def _relations(field: str) -> list[str]:
    """A Depends/Build-Depends field as relations (alternatives kept together by ``|``);
    versions, build profiles and arch qualifiers are dropped, only librust-* names stay."""
    out = []
    for relation in field.replace("\n", " ").split(","):
        alternatives = [b for b in map(_bare, relation.split("|")) if LIBRUST.fullmatch(b)]
        if alternatives:
            out.append("|".join(alternatives))
    return out


def _names(field: str) -> list[str]:
    return [n for n in (_bare(r) for r in field.split(",")) if n]


def _bare(relation: str) -> str:
    """``librust-foo-1+bar-dev (>= 1.2-~~) <!nocheck>`` → ``librust-foo-1+bar-dev``."""
    words = relation.strip().split()
    return words[0].split(":")[0] if words else ""


class _Mirror(Protocol):
    def add_crate(self, data: bytes, origin: str) -> object: ...


def add_program(
    mirror: _Mirror,
    archive: DebianArchive,
    suite: str,
    program: str,
    extra: Iterable[str] = (),
) -> list[DerivedCrate]:
    """Fill ``mirror`` with the derived crates ``program`` needs in ``suite``; returns them.

    One name+version may come from two .debs (e.g. librust-ahash-dev and librust-ahash-0.7-dev
    with different Debian revisions); the first in package-name order is kept, so the
    mirror never holds two checksums for one version. ``extra`` names more librust
    packages to start from: dev-dependencies Debian does not build-depend on (tests off).
    """
    if not PROGRAM.fullmatch(program):
        raise DebianLookupError(f"{program!r} is not a Debian program name like ripgrep or fd-find")
    closure = Closure(archive, suite)
    added: dict[tuple[str, str], DerivedCrate] = {}
    for stanza in closure.closure([*closure.roots_for_program(program), *extra]):
        for crate in derive(archive, stanza):
            if (crate.name, crate.version) not in added:
                mirror.add_crate(crate.data, crate.origin)
                added[(crate.name, crate.version)] = crate
    return list(added.values())
