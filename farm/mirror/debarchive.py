"""Debian's archive, read the way apt reads it: every byte traced to the archive's signature.

Callers: ``farm.mirror.debian_binary`` (librust-*-dev closures) and the realworld corpus
(tests/realworld), which takes program sources from the source pool.

Trust chain: ``dists/<suite>/InRelease`` is checked with ``gpgv`` against Debian's archive
keyring, and only the text gpgv reports as signed is parsed. Its SHA256 list pins
``main/binary-amd64/Packages.xz`` and ``main/source/Sources.xz``; those pin every ``.deb``,
``.dsc`` and tarball by sha256 and size. Downloads are cached by path, and every use hashes
the cached bytes again, so a changed cache file is a refusal, never an input.
``Valid-Until`` is not enforced: the archive here is a fixed snapshot (as apt's
``Acquire::Check-Valid-Until=false``); the signature still is.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from farm.errors import MirrorError, MirrorSourceError

DEFAULT_ARCHIVE = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
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


@dataclass(frozen=True)
class Pinned:
    """A file the signed indexes pin: its path under the archive root, size and sha256."""

    path: str
    size: int
    sha256: str


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Debian control stanzas (deb822) as dicts; continuation lines joined with newlines."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            if key:
                current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


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
        signed = self._gpgv(raw, suite)
        fields = parse_stanzas(signed)[0] if signed.strip() else {}
        pinned: dict[str, Pinned] = {}
        for line in fields.get("SHA256", "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].isdigit():
                pinned[parts[2]] = Pinned(f"dists/{suite}/{parts[2]}", int(parts[1]), parts[0])
        if not pinned:
            raise DebianArchiveError(f"{suite}: InRelease lists no SHA256 files")
        return pinned

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
        if _matches(data, pin):
            return data
        data = self._download(pin.path, pin.size)
        if not _matches(data, pin):
            got = hashlib.sha256(data).hexdigest()
            raise DebianArchiveError(
                f"{pin.path}: sha256 {got[:12]}… size {len(data)} does not match the signed "
                f"index ({pin.sha256[:12]}… size {pin.size}); refusing it"
            )
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

    def _gpgv(self, raw: bytes, suite: str) -> str:
        """The signed text of an InRelease; DebianArchiveError unless a keyring key made it."""
        with tempfile.TemporaryDirectory(prefix="farm-gpgv-") as tmp:
            src, out = Path(tmp) / "InRelease", Path(tmp) / "signed"
            src.write_bytes(raw)
            proc = subprocess.run(
                [
                    "gpgv",
                    "--keyring",
                    str(self.keyring),
                    "--status-fd",
                    "1",
                    "--output",
                    str(out),
                    str(src),
                ],
                capture_output=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "LC_ALL": "C"},
                timeout=TIMEOUT,
                check=False,
            )
            good = any(
                line.startswith("[GNUPG:] VALIDSIG ") for line in proc.stdout.decode().splitlines()
            )
            if proc.returncode != 0 or not good or not out.is_file():
                why = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [
                    "no valid signature"
                ]
                raise DebianArchiveError(
                    f"{suite}: InRelease is not signed by a key in {self.keyring}: {why[0]}; "
                    "refusing it"
                )
            return out.read_text("utf-8", "replace")


def _matches(data: bytes, pin: Pinned) -> bool:
    return len(data) == pin.size and hashlib.sha256(data).hexdigest() == pin.sha256


def _unxz(data: bytes, cap: int, what: str) -> bytes:
    dec = lzma.LZMADecompressor()
    try:
        out = dec.decompress(data, max_length=cap + 1)
    except lzma.LZMAError as exc:
        raise DebianArchiveError(f"{what}: not valid xz: {exc}") from None
    if len(out) > cap:
        raise DebianArchiveError(f"{what}: unpacks to more than {cap} bytes")
    return out
