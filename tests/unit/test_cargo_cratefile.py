"""Unpacking a .crate (farm.ecosystems.cargo.cratefile): real tar.gz archives built here,
well formed and hostile: links, devices, absolute and ``..`` paths, members outside the
crate's directory, duplicates, decompression bombs and oversize members. Nothing of a
refused crate reaches the disk."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from farm.ecosystems.cargo.cratefile import CrateLimits, open_crate, read_manifest, unpack
from farm.errors import CrateRejectedError
from tests.crates import add_file, add_raw, add_special, make_crate


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_unpack_writes_files_and_returns_every_sha256(tmp_path: Path) -> None:
    files = {"src/lib.rs": b"pub fn f() {}\n", "build.rs": b"fn main() {}\n", "a/b/c.txt": b"c"}
    data = make_crate("demo", "0.1.0", files)
    sums = unpack(data, tmp_path / "demo-0.1.0", "demo", "0.1.0")
    expected = {**files, "Cargo.toml": (tmp_path / "demo-0.1.0" / "Cargo.toml").read_bytes()}
    assert sums == {k: _sha(v) for k, v in sorted(expected.items())}
    assert (tmp_path / "demo-0.1.0" / "a" / "b" / "c.txt").read_bytes() == b"c"
    assert json.dumps(sums)  # ready for .cargo-checksum.json


def test_executable_bit_is_kept_and_nothing_else(tmp_path: Path) -> None:
    data = make_crate(
        "demo", "0.1.0", extra=[lambda t, top: add_file(t, f"{top}/run.sh", b"#!", 0o4777)]
    )
    unpack(data, tmp_path / "d")
    assert (tmp_path / "d" / "run.sh").stat().st_mode & 0o7777 == 0o755


def test_manifest_is_read_and_must_match_the_directory() -> None:
    data = make_crate("demo", "0.1.0")
    assert read_manifest(data)["package"]["name"] == "demo"
    assert read_manifest(data, "demo", "0.1.0")["package"]["version"] == "0.1.0"
    liar = make_crate(
        "demo", "0.1.0", {"Cargo.toml": b'[package]\nname = "x"\nversion = "9.9.9"\n'}
    )
    with pytest.raises(CrateRejectedError, match=r"says x-9.9.9"):
        read_manifest(liar)
    with pytest.raises(CrateRejectedError, match=r"no Cargo.toml"):
        read_manifest(make_crate("demo", "0.1.0", with_manifest=False))


def test_name_and_version_given_must_be_the_top_directory() -> None:
    with pytest.raises(CrateRejectedError, match=r"outside other-0.1.0/"):
        open_crate(make_crate("demo", "0.1.0"), "other", "0.1.0")


HOSTILE = {
    "symlink": [add_special("evil", tarfile.SYMTYPE, "/etc/passwd")],
    "hardlink": [add_special("evil", tarfile.LNKTYPE, "demo-0.1.0/Cargo.toml")],
    "chardev": [add_special("null", tarfile.CHRTYPE)],
    "blockdev": [add_special("sda", tarfile.BLKTYPE)],
    "fifo": [add_special("fifo", tarfile.FIFOTYPE)],
    "dotdot": [add_raw("{top}/../escape")],
    "dotdot-deep": [add_raw("{top}/src/../../escape")],
    "absolute": [add_raw("/tmp/escape")],
    "outside": [add_raw("other-0.1.0/src/lib.rs")],
    "top-file": [add_raw("README")],
    "dot": [add_raw("{top}/./src/x.rs")],
    "backslash": [add_raw("{top}/..\\..\\x")],
    "duplicate": [add_raw("{top}/src/lib.rs", b"second")],
    "file-then-dir": [add_raw("{top}/src/lib.rs/inner")],
    "own-checksums": [add_raw("{top}/.cargo-checksum.json", b"{}")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_before_anything_is_written(case: str, tmp_path: Path) -> None:
    data = make_crate("demo", "0.1.0", extra=HOSTILE[case])
    with pytest.raises(CrateRejectedError, match=r"demo 0.1.0: .*member|brings its own"):
        unpack(data, tmp_path / "out", "demo", "0.1.0")
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_dir_after_file_of_the_same_name_is_refused(tmp_path: Path) -> None:
    def add_dir(tar: tarfile.TarFile, top: str) -> None:
        info = tarfile.TarInfo(f"{top}/src/lib.rs")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)

    with pytest.raises(CrateRejectedError, match="appears twice"):
        open_crate(make_crate("demo", "0.1.0", extra=[add_dir]))


def test_gzip_bomb_is_refused_by_ratio_and_by_size() -> None:
    bomb = make_crate("demo", "0.1.0", {"zeros": bytes(40 << 20)})
    assert len(bomb) < 100_000
    with pytest.raises(CrateRejectedError, match=r"compression ratio .* decompression bomb"):
        open_crate(bomb)
    with pytest.raises(CrateRejectedError, match="unpacks to more than 1000000 bytes"):
        open_crate(bomb, limits=CrateLimits(max_unpacked=1_000_000))


def test_other_caps() -> None:
    data = make_crate("demo", "0.1.0", {f"f{i}": b"x" for i in range(10)})
    with pytest.raises(CrateRejectedError, match="more than 5 members"):
        open_crate(data, limits=CrateLimits(max_members=5))
    with pytest.raises(CrateRejectedError, match="above the 10 cap"):
        open_crate(make_crate("demo", "0.1.0", {"big": b"y" * 11}), limits=CrateLimits(max_file=10))
    with pytest.raises(CrateRejectedError, match="compressed is above"):
        open_crate(data, limits=CrateLimits(max_compressed=10))


def test_not_gzip_truncated_trailing_and_not_tar() -> None:
    data = make_crate("demo", "0.1.0")
    with pytest.raises(CrateRejectedError, match="not a gzip stream"):
        open_crate(b"PK\x03\x04 zip")
    with pytest.raises(CrateRejectedError, match="truncated"):
        open_crate(data[:-20])
    with pytest.raises(CrateRejectedError, match="data after the gzip stream"):
        open_crate(data + gzip.compress(b"more"))
    with pytest.raises(CrateRejectedError, match=r"not a tar archive|broken tar|empty"):
        open_crate(gzip.compress(b"\x01" * 1024))


def test_destination_behind_a_link_or_existing_is_not_written(tmp_path: Path) -> None:
    data = make_crate("demo", "0.1.0")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(FileExistsError):
        unpack(data, tmp_path / "link")
    with pytest.raises(FileExistsError):
        unpack(data, tmp_path / "real")
    assert os.listdir(tmp_path / "real") == []
