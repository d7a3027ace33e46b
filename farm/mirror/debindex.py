"""Debian's archive indexes, read the way apt reads them: the one place that decides
which bytes of Debian's archive farm trusts.

Callers: ``farm.mirror.debian`` (Sources, for ``farm mirror add --debian``'s orig
tarballs) and ``farm.mirror.debarchive`` (Packages and Sources, for the Debian-derived
tier and the realworld corpus); each keeps its own transport and cache, and translates
the errors here into its own. Trust flows from the archive keyring only:

- ``dists/<suite>/InRelease`` is checked with ``gpgv`` (:func:`verify_inrelease`), and
  only the text gpgv reports as signed is parsed;
- its SHA256 list (:func:`release_pins`) pins the indexes, which pin every pool file;
  every file is refused unless its size and sha256 are the pinned ones (:func:`check`);
- an index unpacks within a bound (:func:`unxz`), and its deb822 paragraphs are parsed
  by :func:`parse_stanzas`, nothing else.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.errors import MirrorError, MirrorSourceError

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
GPGV_TIMEOUT = 120


class SignatureError(MirrorError):
    """An InRelease that no key of the keyring signed, or one signed for another suite."""


class PinError(MirrorError):
    """Bytes whose size or sha256 is not what the signed index pins, or an index that
    does not unpack within its bound."""


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


def paragraph(text: str) -> dict[str, str]:
    """The first (for InRelease and one Sources entry: the only) stanza of ``text``."""
    stanzas = parse_stanzas(text)
    return stanzas[0] if stanzas else {}


def verify_inrelease(data: bytes, keyring: Path, what: str) -> str:
    """The text of a clearsigned InRelease that gpgv verified against ``keyring``; what
    lies outside the signed part is never read. Raises SignatureError when no signature
    of a key in the keyring is valid, MirrorSourceError when gpgv or the keyring is
    missing."""
    if not keyring.is_file():
        raise MirrorSourceError(
            f"{keyring} is missing; install debian-archive-keyring to check Debian's signatures"
        )
    with tempfile.TemporaryDirectory(prefix="farm-gpgv-") as home:
        out = Path(home) / "signed"
        argv = ["gpgv", "--homedir", home, "--keyring", str(keyring.resolve())]
        argv += ["--status-fd", "1", "--output", str(out), "-"]
        try:
            proc = subprocess.run(
                argv,
                input=data,
                capture_output=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LC_ALL": "C"},
                timeout=GPGV_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise MirrorSourceError("gpgv is missing; install gpgv (Debian package gpgv)") from None
        except subprocess.TimeoutExpired:
            raise MirrorSourceError(f"{what}: gpgv did not finish in {GPGV_TIMEOUT} s") from None
        status = proc.stdout.decode("utf-8", "replace").splitlines()
        good = any(line.startswith("[GNUPG:] VALIDSIG ") for line in status)
        if proc.returncode != 0 or not good or not out.is_file():
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise SignatureError(
                f"{what}: InRelease is not signed by a key in {keyring} (no valid signature "
                f"by Debian's archive key: {detail[0]}); refusing it"
            )
        return out.read_text("utf-8", "replace")


def release_pins(signed: str, suite: str, what: str) -> dict[str, Pinned]:
    """The SHA256 list of a verified InRelease text, by path below ``dists/<suite>/``.
    Raises SignatureError when the text is signed for another suite (another suite's
    genuine InRelease must not stand in), PinError when it pins nothing."""
    fields = paragraph(signed)
    if suite not in (fields.get("Codename"), fields.get("Suite")):
        raise SignatureError(
            f"{what}: signed for suite {fields.get('Suite')!r} "
            f"({fields.get('Codename')!r}), not {suite!r}; refusing"
        )
    pinned: dict[str, Pinned] = {}
    for line in fields.get("SHA256", "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            pinned[parts[2]] = Pinned(f"dists/{suite}/{parts[2]}", int(parts[1]), parts[0])
    if not pinned:
        raise PinError(f"{what}: InRelease lists no SHA256 files")
    return pinned


def matches(data: bytes, pin: Pinned) -> bool:
    return len(data) == pin.size and hashlib.sha256(data).hexdigest() == pin.sha256


def check(data: bytes, pin: Pinned, what: str, against: str) -> bytes:
    """``data`` if it is exactly the pinned file; PinError naming ``against`` (the
    index that pinned it) otherwise."""
    if matches(data, pin):
        return data
    digest = hashlib.sha256(data).hexdigest()
    raise PinError(
        f"{what}: sha256 {digest} ({len(data)} bytes) does not match {against} "
        f"({pin.sha256}, {pin.size} bytes); refusing a tampered or damaged download"
    )


def unxz(data: bytes, cap: int, what: str) -> bytes:
    """An xz index, unpacked to at most ``cap`` bytes; PinError for anything else."""
    decompressor = lzma.LZMADecompressor()
    try:
        out = decompressor.decompress(data, max_length=cap + 1)
    except lzma.LZMAError as exc:
        raise PinError(f"{what}: not valid xz: {exc}") from None
    if len(out) > cap:
        raise PinError(f"{what}: unpacks to more than {cap} bytes")
    if not decompressor.eof:
        raise PinError(f"{what}: the xz stream is truncated")
    return out
