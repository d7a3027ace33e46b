"""A source costs at most its build's disk cap to hash and copy (farm.snapshot.Budget).

Real files on the host: a sparse file whose apparent size is over the cap, and one
file hard-linked many times, each cost next to nothing on disk but were read and
copied whole by an unbounded snapshot, filling the host disk from a tiny submission."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.errors import InputError
from farm.snapshot import Budget, digest, snapshot

CAP = 64 << 20


def allocated(path: Path) -> int:
    """Bytes the host really allocated below ``path``."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def test_a_sparse_file_over_the_cap_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("ok\n")
    with (src / "zz-sparse.bin").open("wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB apparent, 0 bytes allocated
    assert allocated(src) < 1 << 20
    with pytest.raises(InputError, match=r"more than 64m of file contents .*resources\.disk"):
        digest(src, max_bytes=CAP)
    with pytest.raises(InputError, match=r"zz-sparse\.bin"):
        snapshot(src, tmp_path / "copy", 0, max_bytes=CAP)
    assert allocated(tmp_path / "copy") < 1 << 20


def test_hard_links_count_once_per_name(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(8 << 20))
    for n in range(20):  # 21 names, 168 MiB to copy, 8 MiB on the host
        os.link(src / "a.bin", src / f"link-{n:02}.bin")
    with pytest.raises(InputError, match="more than 64m"):
        snapshot(src, tmp_path / "copy", 0, max_bytes=CAP)
    assert allocated(tmp_path / "copy") <= CAP + (8 << 20)


def test_a_source_within_the_cap_is_copied_and_hashed_alike(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"x" * (CAP - 10))
    (src / "b.txt").write_bytes(b"0123456789")  # exactly at the cap
    assert snapshot(src, tmp_path / "copy", 0, max_bytes=CAP) == digest(src, max_bytes=CAP)
    (src / "c.txt").write_bytes(b"!")
    with pytest.raises(InputError, match="more than 64m"):
        digest(src, max_bytes=CAP)


def test_the_entry_budget_counts_files_and_directories() -> None:
    budget = Budget(max_bytes=CAP, max_entries=2)
    budget.entry("a")
    budget.entry("a/b")
    with pytest.raises(InputError, match=r"more than 2 files and directories \(at a/b/c\)"):
        budget.entry("a/b/c")
