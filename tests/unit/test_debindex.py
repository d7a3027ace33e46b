"""farm.mirror.debindex: the one reader of Debian's indexes that both Debian tiers use
(farm.mirror.debian for ``--debian``, farm.mirror.debarchive for the derived tier and the
corpus). Real InRelease files of bookworm and trixie (tests/realcrates.debian_index,
cached), no network in the tests themselves."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from farm.mirror import debarchive, debian, debindex
from farm.mirror.debarchive import DebianArchive, DebianArchiveError
from farm.mirror.debindex import PinError, Pinned, SignatureError
from tests.realcrates import debian_index


def test_both_debian_readers_share_one_index_reader() -> None:
    assert debian.verify_inrelease is debindex.verify_inrelease
    assert debarchive.parse_stanzas is debindex.parse_stanzas
    assert debarchive.Pinned is debindex.Pinned
    assert debian.KEYRING == debarchive.KEYRING == debindex.KEYRING


def _tier(tmp_path: Path, inrelease: bytes) -> DebianArchive:
    cache = tmp_path / "debian"
    (cache / "dists/bookworm").mkdir(parents=True)
    (cache / "dists/bookworm/InRelease").write_bytes(inrelease)
    return DebianArchive(cache, url="http://127.0.0.1:9/debian")


def test_the_derived_tier_refuses_another_suites_signed_inrelease(tmp_path: Path) -> None:
    """Folded in from --debian's reader: a genuine, signed trixie InRelease must not
    stand in for bookworm's (it pins another suite's indexes)."""
    pins = _tier(tmp_path / "ok", debian_index("bookworm")[0]).release("bookworm")
    assert pins["main/source/Sources.xz"].path == "dists/bookworm/main/source/Sources.xz"
    with pytest.raises(
        DebianArchiveError, match=r"signed for suite '\w+' \('trixie'\), not 'bookworm'"
    ):
        _tier(tmp_path / "other", debian_index("trixie")[0]).release("bookworm")


def test_release_pins_needs_the_suite_and_a_sha256_list() -> None:
    with pytest.raises(SignatureError, match="not 'bookworm'"):
        debindex.release_pins("Codename: sid\nSuite: unstable\n", "bookworm", "x")
    with pytest.raises(PinError, match="lists no SHA256"):
        debindex.release_pins("Codename: bookworm\nSHA256:\n junk\n", "bookworm", "x")


def test_check_names_the_index_that_pinned_the_file() -> None:
    pin = Pinned("pool/main/r/x.tar.gz", 3, "0" * 64)
    with pytest.raises(PinError, match=r"x\.tar\.gz: sha256 .* does not match Debian's Sources"):
        debindex.check(b"abc", pin, "x.tar.gz", "Debian's Sources")


def test_unxz_refuses_garbage_a_truncated_stream_and_a_bomb() -> None:
    packed = lzma.compress(b"Package: a\n" * 1000)
    assert debindex.unxz(packed, 11000, "i") == b"Package: a\n" * 1000
    with pytest.raises(PinError, match="not valid xz"):
        debindex.unxz(b"not xz", 100, "i")
    with pytest.raises(PinError, match="truncated"):
        debindex.unxz(packed[: len(packed) // 2], 11000, "i")
    with pytest.raises(PinError, match="more than 10999 bytes"):
        debindex.unxz(packed, 10999, "i")
