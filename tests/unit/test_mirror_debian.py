"""``farm mirror add --debian`` (farm.mirror.debian, farm.mirror.fill) against a copy of
Debian's real archive served on 127.0.0.1: the real signed InRelease and Sources.xz of
bookworm and the real orig tarball of rust-serde 1.0.152. A genuine fill yields crates.io's
checksum; a tampered tarball, Sources.xz or InRelease, another suite's InRelease, and an
unsigned one are each refused before anything is added; a tarball the archive lacks is
reported as missing, and fails the command only with --strict."""

from __future__ import annotations

import hashlib
import lzma
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import MirrorError
from farm.mirror.debian import DebianArchive, SourceFile, SourcePackage, SourceRequest
from farm.mirror.fill import _not_a_crate, add_debian
from farm.mirror.store import Mirror
from tests.crates import make_crate
from tests.realcrates import REAL_CRATES, debian_index
from tests.staticserver import StaticServer

ROOT = Path(__file__).resolve().parents[2]
SERDE_ORIG = "/debian/pool/main/r/rust-serde/rust-serde_1.0.152.orig.tar.gz"
BOOKWORM = "/debian/dists/bookworm"


@pytest.fixture(scope="module")
def bookworm() -> tuple[bytes, bytes]:
    return debian_index("bookworm")


@pytest.fixture
def archive(bookworm: tuple[bytes, bytes], real_crates: dict[str, bytes]) -> Iterator[StaticServer]:
    inrelease, sources = bookworm
    files = {
        f"{BOOKWORM}/InRelease": inrelease,
        f"{BOOKWORM}/main/source/Sources.xz": sources,
        SERDE_ORIG: real_crates["serde"],
    }
    with StaticServer(files) as server:
        yield server


def _fill(
    tmp_path: Path, server: StaticServer, *specs: str, debian: DebianArchive | None = None
) -> tuple[Mirror, list]:
    mirror = Mirror(tmp_path / "m").create()
    debian = debian or DebianArchive(f"{server.url}/debian", cache_dir=None)
    return mirror, add_debian(mirror, [SourceRequest.parse(s) for s in specs], debian)


def _empty(mirror: Mirror) -> bool:
    return mirror.entries() == [] and not list(mirror.path.glob("*.crate"))


def test_genuine_fill_has_crates_io_checksum(tmp_path: Path, archive: StaticServer) -> None:
    mirror, (result,) = _fill(tmp_path, archive, "rust-serde=1.0.152/bookworm")
    assert result.status == "added"
    assert result.entry.cksum == REAL_CRATES["serde"].cksum
    assert result.entry.origin == "debian-source:rust-serde_1.0.152-2"
    assert mirror.crate_path("serde", "1.0.152").read_bytes() == archive.files[SERDE_ORIG]
    # the full Debian version names it too, and so does the bare package (one version)
    debian = DebianArchive(f"{archive.url}/debian", cache_dir=None)
    for spec in ("rust-serde=1.0.152-2", "rust-serde"):
        assert _fill(tmp_path / spec, archive, spec, debian=debian)[1][0].status == "added"


def test_tampered_orig_tarball_is_refused(tmp_path: Path, archive: StaticServer) -> None:
    genuine = archive.files[SERDE_ORIG]
    archive.files[SERDE_ORIG] = genuine[:-1] + bytes([genuine[-1] ^ 1])
    debian = DebianArchive(f"{archive.url}/debian", cache_dir=None)
    with pytest.raises(MirrorError, match="does not match Debian's Sources"):
        _fill(tmp_path, archive, "rust-serde=1.0.152", debian=debian)
    assert _empty(Mirror(tmp_path / "m"))
    archive.files[SERDE_ORIG] = make_crate("serde", "1.0.152")  # a well-formed impostor
    with pytest.raises(MirrorError, match="does not match Debian's Sources"):
        _fill(tmp_path, archive, "rust-serde=1.0.152", debian=debian)
    assert _empty(Mirror(tmp_path / "m"))


def test_tampered_sources_is_refused(tmp_path: Path, archive: StaticServer) -> None:
    """An attacker who rewrites Sources to bless their own tarball is caught by InRelease."""
    impostor = make_crate("serde", "1.0.152")
    text = lzma.decompress(archive.files[f"{BOOKWORM}/main/source/Sources.xz"]).decode()
    genuine = REAL_CRATES["serde"].cksum
    assert genuine in text
    forged = text.replace(
        f"{genuine} 77091 rust-serde_1.0.152.orig.tar.gz",
        f"{hashlib.sha256(impostor).hexdigest()} {len(impostor)} rust-serde_1.0.152.orig.tar.gz",
    )
    archive.files[f"{BOOKWORM}/main/source/Sources.xz"] = lzma.compress(forged.encode())
    archive.files[SERDE_ORIG] = impostor
    with pytest.raises(MirrorError, match="does not match the signed InRelease"):
        _fill(tmp_path, archive, "rust-serde=1.0.152")
    assert _empty(Mirror(tmp_path / "m"))


@pytest.mark.parametrize("how", ["edited", "unsigned", "other-suite"])
def test_bad_inrelease_is_refused(tmp_path: Path, archive: StaticServer, how: str) -> None:
    inrelease = archive.files[f"{BOOKWORM}/InRelease"].decode()
    if how == "edited":  # one listed size changed inside the signed text
        forged = inrelease.replace(" main/source/Sources.xz", "1 main/source/Sources.xz", 1)
        match = "no valid signature"
    elif how == "unsigned":  # the text alone, as if the signature were never there
        body = inrelease.split("\n\n", 1)[1].split("-----BEGIN PGP SIGNATURE-----")[0]
        forged, match = body, "no valid signature"
    else:
        forged, match = debian_index("trixie")[0].decode(), "signed for suite"
    archive.files[f"{BOOKWORM}/InRelease"] = forged.encode()
    with pytest.raises(MirrorError, match=match):
        _fill(tmp_path, archive, "rust-serde=1.0.152")
    assert _empty(Mirror(tmp_path / "m"))


def test_missing_tarball_is_reported_not_fatal(tmp_path: Path, archive: StaticServer) -> None:
    mirror, results = _fill(tmp_path, archive, "rust-fnv", "rust-serde", "rust-no-such-crate")
    assert [r.status for r in results] == ["missing", "added", "missing"]
    assert "not in this archive snapshot" in results[0].note
    assert "rust-fnv_1.0.7.orig.tar.gz answered 404" in results[0].note
    assert "not in bookworm's Sources" in results[2].note
    assert [e.name for e in mirror.entries()] == ["serde"]


def test_cli_strict_fails_on_a_missing_package(tmp_path: Path, archive: StaticServer) -> None:
    def farm(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "farm.cli", "mirror", *args]
        env = {"PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)

    assert farm("create", str(tmp_path / "m")).returncode == 0
    common = [str(tmp_path / "m"), "--debian", "rust-fnv", "--debian", "rust-serde=1.0.152"]
    common += ["--debian-mirror", f"{archive.url}/debian"]
    lax = farm("add", *common)
    assert lax.returncode == 0, lax.stderr
    assert "not in this archive snapshot" in lax.stdout
    assert "added    serde 1.0.152" in lax.stdout
    strict = farm("add", *common, "--strict")
    assert strict.returncode == 2 and "1 of 2 items were not added (--strict)" in strict.stderr
    listed = farm("list", str(tmp_path / "m"))
    assert f"serde 1.0.152  {REAL_CRATES['serde'].cksum}  debian-source:" in listed.stdout


@pytest.mark.parametrize(
    ("version", "orig", "why"),
    [
        ("1.0.0+ds-1", "rust-x_1.0.0+ds.orig.tar.gz", "Debian repack"),
        ("2.1+dfsg1-3", "rust-x_2.1+dfsg1.orig.tar.gz", "Debian repack"),
        ("0.5.4-1", "rust-x_0.5.4.orig.tar.xz", "not gzip"),
        ("0.5.4-1", "rust-x_0.5.4-1.tar.gz", "no orig tarball"),
    ],
)
def test_repacks_and_native_packages_are_skipped(version: str, orig: str, why: str) -> None:
    package = SourcePackage(
        package="rust-x",
        version=version,
        directory="pool/main/r/rust-x",
        files=[SourceFile(name=orig, size=1, sha256="0" * 64)],
    )
    assert why in _not_a_crate(package)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "rust-serde=",
        "rust-serde/",
        "../rust-serde",
        "rust-serde=1.0/../../x",
        "Rust-Serde",
        "rust-serde=1 0",
    ],
)
def test_bad_request_spellings_are_refused(spec: str) -> None:
    with pytest.raises(MirrorError, match="--debian"):
        SourceRequest.parse(spec)
    assert SourceRequest.parse("rust-serde=1.0.152/bookworm") == SourceRequest(
        package="rust-serde", version="1.0.152", suite="bookworm"
    )
