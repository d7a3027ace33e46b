"""Debian's source archive, read through its signature: find a Rust crate's orig tarball.

Callers: ``farm.mirror.fill`` (``farm mirror add --debian``) and the real-crate test
fixtures. Signatures, pins and paragraphs are ``farm.mirror.debindex``'s (shared with
``farm.mirror.debarchive``); this module fetches with ``farm.mirror.download`` and finds
one package's stanzas fast. Trust flows from Debian's archive key only:

1. ``dists/<suite>/InRelease`` is verified with ``gpgv`` against the archive keyring
   (``/usr/share/keyrings/debian-archive-keyring.gpg``), and only the text gpgv
   verified is read; its ``Codename``/``Suite`` must be the suite asked for, so another
   suite's signed file cannot stand in for it;
2. ``main/source/Sources.xz`` must have the size and sha256 that text lists;
3. an orig tarball must have the size and sha256 that Sources lists.

Anything else is refused (MirrorError). A verified Sources.xz is cached by its sha256
(``cache_dir``) and checked again every time it is used. Debian's orig tarball of a
``rust-*`` source package is the crate exactly as crates.io serves it, except for
repacks (``+ds``/``+dfsg`` versions, or an ``.orig.tar.xz``), which are skipped.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from farm.errors import MirrorError, MirrorSourceError
from farm.mirror import debindex
from farm.mirror.debindex import KEYRING, verify_inrelease
from farm.mirror.download import http_get

DEFAULT_ARCHIVE = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
MAX_INRELEASE = 16 << 20
MAX_SOURCES_XZ = 128 << 20
MAX_SOURCES = 1 << 30
MAX_ORIG = 64 << 20
SOURCES_PATH = "main/source/Sources.xz"

_PACKAGE = re.compile(r"[a-z0-9][a-z0-9.+-]{1,100}")
_SUITE = re.compile(r"[a-z][a-z0-9-]{1,40}")
_VERSION = re.compile(r"[0-9A-Za-z.+~:-]{1,100}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+~_-]{0,200}")
_DIRECTORY = re.compile(r"pool/[a-z-]+/[a-z0-9+]+/[a-z0-9][a-z0-9.+-]*")
_REQUEST = re.compile(r"(?P<pkg>[^=/]+)(?:=(?P<ver>[^/]+))?(?:/(?P<suite>.+))?")


class SourceRequest(BaseModel):
    """``rust-serde[=1.0.152][/bookworm]`` from the command line, checked."""

    model_config = ConfigDict(frozen=True)

    package: str
    #: The upstream (1.0.152) or full Debian (1.0.152-2) version; None: the only one.
    version: str | None = None
    suite: str | None = None

    @classmethod
    def parse(cls, text: str) -> SourceRequest:
        match = _REQUEST.fullmatch(text)
        pkg, ver, suite = (match.group(k) if match else None for k in ("pkg", "ver", "suite"))
        if (
            not match
            or not _PACKAGE.fullmatch(pkg or "")
            or (ver is not None and not _VERSION.fullmatch(ver))
            or (suite is not None and not _SUITE.fullmatch(suite))
        ):
            raise MirrorError(
                f"--debian {text!r}: use a source package like rust-serde, "
                "rust-serde=1.0.152 or rust-serde=1.0.152/bookworm"
            )
        return cls(package=pkg, version=ver, suite=suite)

    def __str__(self) -> str:
        return self.package + (f"={self.version}" if self.version else "")


class SourceFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    size: int
    sha256: str


class SourcePackage(BaseModel):
    """One stanza of a Sources index: a source package version and its files."""

    model_config = ConfigDict(frozen=True)

    package: str
    version: str
    directory: str
    files: list[SourceFile]

    @property
    def upstream_version(self) -> str:
        """The version without epoch and Debian revision: 1:1.0.152-2 -> 1.0.152."""
        version = self.version.split(":", 1)[-1]
        return version.rsplit("-", 1)[0] if "-" in version else version

    def orig(self) -> SourceFile | None:
        prefix = f"{self.package}_{self.upstream_version}.orig.tar."
        return next((f for f in self.files if f.name.startswith(prefix)), None)


class DebianArchive:
    """Debian's archive at ``url``, trusted through ``keyring`` only."""

    def __init__(
        self,
        url: str = DEFAULT_ARCHIVE,
        keyring: Path = KEYRING,
        cache_dir: Path | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.keyring = keyring
        self.cache_dir = cache_dir
        self._sources: dict[str, bytes] = {}

    def find(
        self, request: SourceRequest, default_suite: str = DEFAULT_SUITE
    ) -> list[SourcePackage]:
        """The stanzas of ``request``'s package in its suite, newest listed last; those of
        its version only, when it names one."""
        suite = request.suite or default_suite
        found = _stanzas(self.sources_text(suite), request.package)
        if request.version is not None:
            found = [s for s in found if request.version in (s.version, s.upstream_version)]
        return found

    def download(self, package: SourcePackage, file: SourceFile) -> bytes | None:
        """``file``'s bytes, checked against Sources; None if the archive lacks it (404).
        Raises MirrorError on a size or sha256 mismatch."""
        if file.size > MAX_ORIG:
            raise MirrorError(f"{file.name}: {file.size} bytes is over {MAX_ORIG}")
        data = http_get(f"{self.url}/{package.directory}/{file.name}", MAX_ORIG)
        if data is None:
            return None
        pin = debindex.Pinned(f"{package.directory}/{file.name}", file.size, file.sha256)
        return debindex.check(data, pin, file.name, "Debian's Sources")

    def sources_text(self, suite: str) -> bytes:
        """The suite's main/source/Sources, verified; memoized per suite."""
        if suite not in self._sources:
            if not _SUITE.fullmatch(suite):
                raise MirrorError(f"suite {suite!r}: use a Debian codename like bookworm")
            sha, size = self._signed_sources_entry(suite)
            xz = self._sources_xz(suite, sha, size)
            self._sources[suite] = debindex.unxz(xz, MAX_SOURCES, f"{suite} Sources.xz")
        return self._sources[suite]

    def _signed_sources_entry(self, suite: str) -> tuple[str, int]:
        url = f"{self.url}/dists/{suite}/InRelease"
        data = http_get(url, MAX_INRELEASE)
        if data is None:
            raise MirrorSourceError(f"{url}: not found; is {suite!r} a suite of this archive?")
        pin = debindex.release_pins(verify_inrelease(data, self.keyring, url), suite, url)
        if SOURCES_PATH not in pin:
            raise MirrorSourceError(f"{url} lists no {SOURCES_PATH}")
        return pin[SOURCES_PATH].sha256, pin[SOURCES_PATH].size

    def _sources_xz(self, suite: str, sha: str, size: int) -> bytes:
        cached = self.cache_dir / f"Sources-{sha}.xz" if self.cache_dir else None
        pin = debindex.Pinned(f"dists/{suite}/{SOURCES_PATH}", size, sha)
        if cached is not None and cached.is_file():
            data = cached.read_bytes()
            if hashlib.sha256(data).hexdigest() == sha:
                return data
        url = f"{self.url}/dists/{suite}/{SOURCES_PATH}"
        data = http_get(url, MAX_SOURCES_XZ) if size <= MAX_SOURCES_XZ else None
        if data is None:
            raise MirrorSourceError(f"{url}: missing or over {MAX_SOURCES_XZ} bytes")
        debindex.check(data, pin, url, "the signed InRelease")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(cached)
        return data


def _stanzas(text: bytes, package: str) -> list[SourcePackage]:
    """The stanzas of ``package``: found with ``bytes.find`` (tens of MB; a regex or a
    decode of the whole index would take seconds), decoded one stanza at a time."""
    out = []
    data = b"\n" + text  # so that the first stanza is found like every other
    needle = f"\nPackage: {package}\n".encode()
    pos = data.find(needle)
    while pos >= 0:
        end = data.find(b"\n\n", pos + 1)
        stanza = data[pos + 1 : end if end >= 0 else len(data)].decode("utf-8", "replace")
        out.append(_source_package(package, debindex.paragraph(stanza)))
        pos = data.find(needle, pos + 1)
    return out


def _source_package(package: str, stanza: dict[str, str]) -> SourcePackage:
    version, directory = stanza.get("Version", ""), stanza.get("Directory", "")
    if not _VERSION.fullmatch(version) or not _DIRECTORY.fullmatch(directory):
        raise MirrorError(f"Sources: {package}: a Version or Directory farm cannot use")
    files = []
    for line in stanza.get("Checksums-Sha256", "").splitlines():
        parts = line.split()
        if (
            len(parts) == 3
            and re.fullmatch(r"[0-9a-f]{64}", parts[0])
            and parts[1].isdigit()
            and _FILE.fullmatch(parts[2])
        ):
            files.append(SourceFile(name=parts[2], size=int(parts[1]), sha256=parts[0]))
    return SourcePackage(package=package, version=version, directory=directory, files=files)
