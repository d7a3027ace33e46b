"""A delta chain is held whole until its base is found: a 480 KiB pack of fifteen
32 MiB deltas (zeros compress well) made the reader hold 520 MB before it failed, in
the request thread of `farm serve`, once per concurrent submission. Fresh interpreter,
its own peak RSS is the witness."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

from farm.gitread import MAX_OBJECT
from tests.unit.epochprobe import probe_epoch

TIP = "ab" * 20
#: The interpreter, farm's imports and what the reader may hold at once.
BOUND_KIB = 256 << 10


def _header(kind: int, size: int) -> bytes:
    out = [(kind << 4) | (size & 15)]
    size >>= 4
    while size:
        out[-1] |= 0x80
        out.append(size & 0x7F)
        size >>= 7
    return bytes(out)


def _ofs(back: int) -> bytes:
    out = [back & 0x7F]
    back >>= 7
    while back:
        back -= 1
        out.insert(0, 0x80 | (back & 0x7F))
        back >>= 7
    return bytes(out)


def chain_repo(root: Path, deltas: int) -> None:
    """HEAD is the tip of an OFS chain of ``deltas`` deltas of MAX_OBJECT bytes each."""
    git = root / ".git"
    (git / "objects" / "pack").mkdir(parents=True)
    pack = bytearray(b"PACK" + struct.pack(">II", 2, deltas + 1))
    offsets = [len(pack)]
    pack += _header(3, 1) + zlib.compress(b"x")
    delta = b"\x01\x01" + b"\0" * (MAX_OBJECT - 2)  # sizes 1 -> 1, then reserved opcodes
    packed = zlib.compress(delta, 9)
    for _ in range(deltas):
        offsets.append(len(pack))
        pack += _header(6, len(delta)) + _ofs(offsets[-1] - offsets[-2]) + packed
    pack += hashlib.sha1(pack).digest()
    (git / "objects" / "pack" / "pack-x.pack").write_bytes(pack)
    key = bytes.fromhex(TIP)
    fanout = [0 if i < key[0] else 1 for i in range(256)]
    idx = b"\377tOc" + struct.pack(">I", 2) + struct.pack(">256I", *fanout) + key
    idx += b"\0" * 4 + struct.pack(">I", offsets[-1]) + b"\0" * 40
    (git / "objects" / "pack" / "pack-x.idx").write_bytes(idx)
    (git / "HEAD").write_text(TIP + "\n")


def test_a_chain_of_huge_deltas_is_refused_before_it_fills_memory(tmp_path: Path) -> None:
    chain_repo(tmp_path, 15)
    seen = probe_epoch(tmp_path)
    assert seen["value"] is None and "delta" in seen["note"], seen
    assert seen["peak"] < BOUND_KIB, seen
