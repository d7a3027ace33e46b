"""The small text files of a repository (packed-refs, shallow) are searched, never split
into a list: a 64 MiB packed-refs of three-byte lines made `Repo.head` build 21 million
bytes objects, 1.3 GB of peak memory in the process serving the submission. Each case
runs in a fresh interpreter, whose own peak RSS is the witness."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from farm.gitread import MAX_SHALLOW
from tests.unit.epochprobe import probe_epoch

TREE = "2" * 40  # never read: the source is the top of the repository
COMMIT = "1" * 40
#: The interpreter, farm's imports and one 64 MiB file read twice (bytes and a copy).
BOUND_KIB = 320 << 10


def _repo(root: Path) -> Path:
    git = root / ".git"
    (git / "objects" / COMMIT[:2]).mkdir(parents=True)
    (git / "refs" / "heads").mkdir(parents=True)
    body = f"tree {TREE}\ncommitter a <a@b> 1700000000 +0000\n\nm\n".encode()
    raw = b"commit %d\0" % len(body) + body
    (git / "objects" / COMMIT[:2] / COMMIT[2:]).write_bytes(zlib.compress(raw))
    return git


def _filler(size: int) -> bytes:
    return b"ab\n" * (size // 3)


def test_a_huge_packed_refs_of_short_lines_costs_no_more_than_its_bytes(tmp_path: Path) -> None:
    git = _repo(tmp_path)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_bytes(_filler(63 << 20) + f"{COMMIT} refs/heads/main\n".encode())
    seen = probe_epoch(tmp_path)
    assert seen["value"] == 1_700_000_000, seen  # the ref after the filler is found
    assert seen["peak"] < BOUND_KIB, seen


@pytest.mark.parametrize("size", [63 << 20, 3 << 20])
def test_a_huge_shallow_file_costs_no_more_than_its_bytes(tmp_path: Path, size: int) -> None:
    """Within farm's cap (4 MiB) the shallow list is read; above it, no answer."""
    git = _repo(tmp_path)
    (git / "HEAD").write_text(COMMIT + "\n")
    (git / "shallow").write_bytes(_filler(size) + COMMIT.encode() + b"\n")
    seen = probe_epoch(tmp_path)
    if size < MAX_SHALLOW:
        assert seen["value"] == 1_700_000_000, seen
    else:
        assert seen["value"] is None and "shallow" in seen["note"], seen
    assert seen["peak"] < BOUND_KIB, seen
