"""Debian's archive, read the way apt reads it: every byte traced to the archive's signature.

Callers: ``farm.mirror.debian_binary`` (librust-*-dev closures) and the realworld corpus
(tests/realworld), which takes program sources from the source pool. Signatures, pins,
xz and paragraphs are ``farm.mirror.debindex``'s (shared with ``farm.mirror.debian``);
this module adds the path-keyed cache and the index of a suite by kind.

Trust chain: ``dists/<suite>/InRelease`` is checked with ``gpgv`` against Debian's archive
keyring, and only the text gpgv reports as signed is parsed. Its SHA256 list pins
``main/binary-amd64/Packages.xz`` and ``main/source/Sources.xz``; those pin every ``.deb``,
``.dsc`` and tarball by sha256 and size. Downloads are cached by path, and every use hashes
the cached bytes again, so a changed cache file is a refusal, never an input.
``Valid-Until`` is not enforced: the archive here is a fixed snapshot (as apt's
``Acquire::Check-Valid-Until=false``); the signature still is.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from farm.errors import MirrorError, MirrorSourceError
from farm.mirror import debindex
from farm.mirror.debindex import KEYRING, Pinned, parse_stanzas

DEFAULT_ARCHIVE = "http://deb.debian.org/debian"
#: A suite, a component path and a pool path: no way out of the archive's tree.
SUITE = re.compile(r"[a-z][a-z0-9-]{1,30}")
POOL_PATH = re.compile(r"pool/[A-Za-z0-9][A-Za-z0-9+._~/-]{1,300}")
#: Upper bounds: the largest index here (sid Sources) is ~70 MB unpacked.
MAX_INDEX_XZ = 64 << 20
MAX_INDEX = 256 << 20
MAX_RELEASE = 4 << 20
MAX_POOL_FILE = 256 << 20
TIMEOUT = 60


class DebianArchiveError(MirrorSourceError):
    """The archive could not be read, or a file did not match what the signature pins."""


class DebianLookupError(MirrorError):
    """A program, package or suite the caller named is not in the archive's indexes."""


class DebianArchive:
    """One archive URL, a cache directory, and the keyring that anchors trust."""

    def __init__(self, cache: Path, url: str = DEFAULT_ARCHIVE, keyring: Path = KEYRING) -> None:
        self.cache = cache
        self.url = url.rstrip("/")
        self.keyring = keyring
        self._indexes: dict[tuple[str, str], list[dict[str, str]]] = {}

    # -- signed indexes -------------------------------------------------------------------

    def release(self, suite: str) -> dict[str, Pinned]:
        """The SHA256 list of ``dists/<suite>/InRelease``, after gpgv accepted its signature."""
        if not SUITE.fullmatch(suite):
            raise DebianLookupError(f"{suite!r} is not a Debian suite name like bookworm or trixie")
        raw = self._cached(f"dists/{suite}/InRelease", MAX_RELEASE)
        with _translated():
            signed = debindex.verify_inrelease(raw, self.keyring, suite)
            return debindex.release_pins(signed, suite, suite)

    def index(self, suite: str, kind: str) -> list[dict[str, str]]:
        """``Packages`` (binary-amd64) or ``Sources`` of main, verified against InRelease."""
        key = (suite, kind)
        if key not in self._indexes:
            rel = {
                "Packages": "main/binary-amd64/Packages.xz",
                "Sources": "main/source/Sources.xz",
            }[kind]
            pin = self.release(suite).get(rel)
            if pin is None:
                raise DebianArchiveError(f"{suite}: InRelease does not list {rel}")
            if pin.size > MAX_INDEX_XZ:
                raise DebianArchiveError(
                    f"{suite}: {rel} is {pin.size} bytes, above {MAX_INDEX_XZ}"
                )
            data = self.fetch(pin)
            text = _unxz(data, MAX_INDEX, f"{suite} {rel}").decode("utf-8", "replace")
            self._indexes[key] = parse_stanzas(text)
        return self._indexes[key]

    # -- pinned files ---------------------------------------------------------------------

    def fetch(self, pin: Pinned) -> bytes:
        """The bytes of a pinned file (cache first), refused unless size and sha256 match."""
        if not (pin.path.startswith("dists/") or POOL_PATH.fullmatch(pin.path)) or ".." in pin.path:
            raise DebianArchiveError(f"refusing archive path {pin.path!r}")
        if pin.size > MAX_POOL_FILE:
            raise DebianArchiveError(f"{pin.path}: {pin.size} bytes is above {MAX_POOL_FILE}")
        data = self._cached(pin.path, pin.size, must_exist=False)
        if debindex.matches(data, pin):
            return data
        data = self._download(pin.path, pin.size)
        with _translated():
            debindex.check(data, pin, pin.path, "the signed index")
        self._store(pin.path, data)
        return data

    def _cached(self, path: str, cap: int, must_exist: bool = True) -> bytes:
        file = self.cache / path
        if file.is_file() and not file.is_symlink() and file.stat().st_size <= cap:
            return file.read_bytes()
        if not must_exist:
            return b""
        data = self._download(path, cap)
        self._store(path, data)
        return data

    def _download(self, path: str, cap: int) -> bytes:
        url = f"{self.url}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
                data = resp.read(cap + 1)
        except urllib.error.HTTPError as exc:
            raise DebianArchiveError(
                f"{url}: HTTP {exc.code} (not in this archive snapshot?)"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise DebianArchiveError(f"{url}: cannot download: {exc}") from None
        if len(data) > cap:
            raise DebianArchiveError(f"{url}: larger than {cap} bytes; refusing it")
        return data

    def _store(self, path: str, data: bytes) -> None:
        file = self.cache / path
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, file)


@contextmanager
def _translated() -> Iterator[None]:
    """debindex's refusals as this tier's DebianArchiveError (exit 4, as before)."""
    try:
        yield
    except (debindex.SignatureError, debindex.PinError) as exc:
        raise DebianArchiveError(str(exc)) from None


def _unxz(data: bytes, cap: int, what: str) -> bytes:
    with _translated():
        return debindex.unxz(data, cap, what)
