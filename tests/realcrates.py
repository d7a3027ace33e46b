"""Real crates for farm's tests: crates.io's own bytes, from Debian's source archive.

Debian's orig tarball of a ``rust-NAME`` source package is the ``.crate`` crates.io
serves, byte for byte (docs/research/debian-crates.md), so these crates carry crates.io's
real checksums (pinned below). :func:`ensure` downloads each one once through
``farm.mirror.debian`` (InRelease checked with gpgv, then Sources, then the tarball) into
a cache directory, and checks the pinned sha256 of every cached file each time it is
used, so a damaged or swapped cache file fails loudly rather than passing silently.

Callers: ``make test-crates`` (``python -m tests.realcrates``, a prerequisite of
``make test``) and the session fixture ``real_crates`` in tests/conftest.py. The cache is
``$FARM_TEST_CRATES`` or ``${XDG_CACHE_HOME:-~/.cache}/farm/test-crates``, so CI and
repeated runs do not download again. Only setup code reaches Debian; the tests
themselves use loopback servers.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from farm.mirror.debian import DebianArchive, SourceRequest
from farm.mirror.store import CrateEntry, Mirror


@dataclass(frozen=True)
class RealCrate:
    name: str
    version: str
    #: crates.io's checksum (= Cargo.lock's) = the sha256 of Debian's orig tarball.
    cksum: str
    package: str
    debian_version: str
    suite: str

    @property
    def origin(self) -> str:
        return f"debian-source:{self.package}_{self.debian_version}"


# Probed 2026-12-05: each of these downloads from this workplace's archive snapshot.
REAL_CRATES = {
    c.name: c
    for c in [
        RealCrate(
            "serde",
            "1.0.152",
            "bb7d1f0d3021d347a83e556fc4683dea2ea09d87bccdf88ff5c12545d89d5efb",
            "rust-serde",
            "1.0.152-2",
            "bookworm",
        ),
        RealCrate(
            "fnv",
            "1.0.7",
            "3f9eec918d3f24069decb9af1554cad7c880e2da24a9afd88aca000531ab82c1",
            "rust-fnv",
            "1.0.7-1",
            "bookworm",
        ),
        RealCrate(
            "hex",
            "0.4.3",
            "7f24254aa9a54b5c858eaee2f5bccdb46aaf0e486a595ed5fd8f86ba55232a70",
            "rust-hex",
            "0.4.3-1",
            "bookworm",
        ),
        RealCrate(
            "lazy_static",
            "1.5.0",
            "bbd2bcb4c963f2ddae06a2efc7e9f3591312473c50c6685e1f298068316e66fe",
            "rust-lazy-static",
            "1.5.0-1",
            "trixie",
        ),
        RealCrate(
            "scopeguard",
            "1.2.0",
            "94143f37725109f92c262ed2cf5e59bce7498c01bcc1502d7b9afe439a4e9f49",
            "rust-scopeguard",
            "1.2.0-1",
            "trixie",
        ),
        RealCrate(
            "shlex",
            "1.3.0",
            "0fda2ff0d084019ba4d7c6f371c95d8fd75ce3524c3cb8fb653a3023f6323e64",
            "rust-shlex",
            "1.3.0-1",
            "trixie",
        ),
        RealCrate(
            "version_check",
            "0.9.5",
            "0b928f33d975fc6ad9f86c8f283853ad26bdd5b10b7f1542aa2fa15e2289105a",
            "rust-version-check",
            "0.9.5-1",
            "trixie",
        ),
        RealCrate(
            "cfg-if",
            "1.0.4",
            "9330f8b2ff13f34540b44e946ef35111825727b38d33286ef986142615121801",
            "rust-cfg-if",
            "1.0.4-1",
            "sid",
        ),
        RealCrate(
            "percent-encoding",
            "2.3.2",
            "9b4f627cb1b25917193a259e49bdad08f671f8d9708acfd5fe0a8c1455d87220",
            "rust-percent-encoding",
            "2.3.2-2",
            "sid",
        ),
        RealCrate(
            "unicode-xid",
            "0.2.6",
            "ebc1c04c71510c7f702b52b7c350734c9ff1295c464a03335b00bb84fc54f853",
            "rust-unicode-xid",
            "0.2.6-1",
            "sid",
        ),
    ]
}


def cache_dir() -> Path:
    if os.environ.get("FARM_TEST_CRATES"):
        return Path(os.environ["FARM_TEST_CRATES"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "farm" / "test-crates"


def ensure(crates: list[RealCrate] | None = None) -> dict[str, bytes]:
    """name -> the crate's bytes, each checked against its pinned sha256; downloads
    (through Debian's signature) only what the cache lacks. Raises AssertionError on a
    checksum that does not match the pin, FarmError when Debian cannot be read."""
    wanted = list(REAL_CRATES.values()) if crates is None else crates
    out: dict[str, bytes] = {}
    archive: DebianArchive | None = None
    for crate in wanted:
        path = cache_dir() / f"{crate.name}-{crate.version}-{crate.cksum}.crate"
        data = path.read_bytes() if path.is_file() else None
        if data is None:
            archive = archive or DebianArchive(cache_dir=cache_dir() / "debian")
            data = _download(archive, crate)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".tmp").write_bytes(data)
            path.with_suffix(".tmp").replace(path)
        digest = hashlib.sha256(data).hexdigest()
        assert digest == crate.cksum, f"{path}: sha256 {digest}, pinned {crate.cksum}"
        out[crate.name] = data
    return out


def _download(archive: DebianArchive, crate: RealCrate) -> bytes:
    request = SourceRequest(package=crate.package, version=crate.debian_version)
    (package,) = archive.find(request, crate.suite)
    orig = package.orig()
    assert orig is not None, f"{crate.package} {crate.debian_version} has no orig tarball"
    data = archive.download(package, orig)
    assert data is not None, f"{orig.name}: not in this archive snapshot any more"
    return data


def fill(mirror: Mirror, names: list[str] | None = None) -> list[CrateEntry]:
    """Add real crates (all, or ``names``) to ``mirror`` with their Debian origin."""
    crates = [REAL_CRATES[n] for n in names] if names else list(REAL_CRATES.values())
    data = ensure(crates)
    return [mirror.add_crate(data[c.name], c.origin) for c in crates]


#: Suites whose signed index tests serve on loopback (tests/unit/test_mirror_debian.py).
INDEX_SUITES = ("bookworm", "trixie")


#: A Debian-derived crate (farm.mirror.debian_binary): trixie's rustix 0.38.37, whose
#: ``[target.'cfg(..)']`` keys run to 626 characters. Debian's source pool here lacks its
#: orig tarball, so the crate is repacked from librust-rustix-dev, pinned by the .deb's
#: sha256 from trixie's signed Packages (probed 2026-12-05) and by the repack's sha256.
RUSTIX_DEB = (
    "pool/main/r/rust-rustix/librust-rustix-dev_0.38.37-4_amd64.deb",
    273088,
    "4c890e52a71b4e821e418e7fed618ab883619c20dc35170b1efa1f281b90145e",
)
RUSTIX_CKSUM = "8e990369ea9140f08e25c7277522116f422d0c54a58afa13340b5906d2f4ed59"


def ensure_rustix() -> bytes:
    """rustix 0.38.37 as farm's Debian tier derives it; the .deb is downloaded once into
    the cache and checked against its pinned sha256 on every use, as is the repack."""
    from farm.mirror.debarchive import DebianArchive as BinaryArchive
    from farm.mirror.debian_binary import derive

    archive = BinaryArchive(cache_dir() / "debian-binary")
    path, size, sha = RUSTIX_DEB
    stanza = {"Package": "librust-rustix-dev", "Filename": path, "Size": str(size), "SHA256": sha}
    # derive() fetches the .deb through the pin: anything but those bytes is refused.
    (crate,) = derive(archive, stanza)
    digest = hashlib.sha256(crate.data).hexdigest()
    assert digest == RUSTIX_CKSUM, f"rustix repack: sha256 {digest}, pinned {RUSTIX_CKSUM}"
    return crate.data


def main() -> int:
    for name, data in ensure().items():
        print(f"{name} {REAL_CRATES[name].version} {hashlib.sha256(data).hexdigest()}")
    print(f"rustix 0.38.37 (Debian-derived) {hashlib.sha256(ensure_rustix()).hexdigest()}")
    for suite in INDEX_SUITES:
        inrelease, sources = debian_index(suite)
        print(f"{suite} InRelease {len(inrelease)} bytes, Sources.xz {len(sources)} bytes")
    print(f"cached in {cache_dir()}", file=sys.stderr)
    return 0


def debian_index(suite: str) -> tuple[bytes, bytes]:
    """A suite's real InRelease and main/source/Sources.xz, for tests that serve a
    copy of Debian's archive on loopback. Both are cached; the InRelease is verified with
    gpgv and the Sources.xz checked against it on every use."""
    from farm.mirror.debian import DEFAULT_ARCHIVE, KEYRING, SOURCES_PATH, verify_inrelease
    from farm.mirror.download import http_get

    cached = cache_dir() / "debian" / f"InRelease-{suite}"
    if not cached.is_file():
        data = http_get(f"{DEFAULT_ARCHIVE}/dists/{suite}/InRelease", 16 << 20)
        assert data is not None, f"{suite}: no InRelease in Debian's archive"
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(data)
    inrelease = cached.read_bytes()
    text = verify_inrelease(inrelease, KEYRING, str(cached))
    sha = next(
        line.split()[0]
        for line in text.splitlines()
        if line.endswith(" " + SOURCES_PATH) and len(line.split()[0]) == 64
    )
    sources = cache_dir() / "debian" / f"Sources-{sha}.xz"
    if not sources.is_file() or hashlib.sha256(sources.read_bytes()).hexdigest() != sha:
        DebianArchive(cache_dir=cache_dir() / "debian").sources_text(suite)
    data = sources.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha, f"{sources}: not the signed Sources"
    return inrelease, data


if __name__ == "__main__":
    sys.exit(main())
