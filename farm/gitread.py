"""A read-only reader of a git repository's refs, commits and trees, in pure Python.

Callers: ``farm.epoch`` only. The repository belongs to whoever submitted the tree and
farm runs as root, so git itself is never run on it: git honours the repository's own
configuration (``.git/config`` and whatever it includes), and a dozen of its keys name
programs to run (gpg.program with log.showSignature, core.fsmonitor, hooks, pagers,
diff and filter drivers…). This module reads the files instead and runs nothing:

- refs: ``HEAD``, loose refs under ``refs/`` and ``packed-refs``;
- objects: loose (zlib) and packed (``.idx`` version 2 and ``.pack`` with OFS and REF
  deltas); ``objects/info/alternates`` is ignored, so an object stored elsewhere is
  simply missing;
- ``shallow``: the commits listed there count as having no parents, as in git.

Every file is opened beneath the ``.git`` directory's descriptor without following a
symlink, and every size is bounded (one object, all inflated bytes together, delta
chains), so a hostile repository costs bounded time and memory and ends in GitError.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from farm.confine import FILE_FLAGS, open_beneath

#: The largest object (commit, tree or delta result) farm inflates.
MAX_OBJECT = 32 << 20
#: All bytes inflated for one question, across objects and delta bases.
MAX_INFLATED = 512 << 20
#: Small text files: HEAD, a loose ref, shallow; and packed-refs.
MAX_SMALL = 64 << 10
MAX_PACKED_REFS = 64 << 20
#: ``shallow`` lists boundary commits, 41 bytes each: 100k of them, a set of that size.
MAX_SHALLOW = 4 << 20
#: A delta chain longer than git's own maximum (--depth 4095) is not a real pack.
MAX_CHAIN = 4096
MAX_SYMREFS = 5
#: Packs read (two descriptors each); git's own gc repacks at 50.
MAX_PACKS = 128
#: Delta opcodes applied per question: each is a step of Python, a hostile delta of
#: one-byte inserts must not buy minutes of CPU.
MAX_DELTA_OPS = 8_000_000
#: REF deltas whose base lives in another pack, one inside the other (Python recursion).
MAX_NESTED = 50
#: Delta bytes held while a chain is followed to its base: a chain's deltas are kept
#: until the base is found, and MAX_INFLATED alone would let one question hold 512 MiB.
MAX_PENDING = 2 * MAX_OBJECT

_HEX40 = re.compile(rb"[0-9a-f]{40}")
_REF = re.compile(r"refs/[A-Za-z0-9._/+-]{1,240}")
_TYPES = {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}
_OFS_DELTA, _REF_DELTA = 6, 7


class GitError(Exception):
    """The repository cannot be read within farm's bounds, or is not a repository."""


@dataclass(frozen=True)
class Commit:
    tree: str
    parents: tuple[str, ...]
    time: int


class Repo:
    """One ``.git`` directory, given as an open descriptor (not closed here)."""

    def __init__(self, git_fd: int) -> None:
        self.fd = git_fd
        self.inflated = 0
        self.ops = 0  # delta opcodes applied
        self._nested = 0  # REF deltas whose base is in another pack or loose
        self._held = 0  # bytes of deltas kept until their chains' bases are found
        self._packs: list[_Pack] | None = None
        self._shallow: set[str] | None = None

    def close(self) -> None:
        for pack in self._packs or []:
            pack.close()

    # refs

    def head(self) -> str:
        """The commit id HEAD names (directly or through a branch)."""
        text = self._small("HEAD").strip()
        for _ in range(MAX_SYMREFS):
            if _HEX40.fullmatch(text):
                return text.decode()
            if not text.startswith(b"ref: "):
                raise GitError("HEAD is neither a SHA-1 commit id nor a ref")
            text = self._ref(text[5:].decode(errors="replace").strip())
        raise GitError("HEAD: too many symbolic refs")

    def _ref(self, name: str) -> bytes:
        if not _REF.fullmatch(name) or ".." in name or "//" in name:
            raise GitError(f"HEAD names an unusual ref {name!r}")
        try:
            return self._small(name).strip()
        except FileNotFoundError:
            pass
        # One search, never a list of lines: 64 MiB of short lines would be a GiB of objects.
        line = re.compile(rb"(?m)^([0-9a-f]{40}) " + re.escape(name.encode()) + rb"\r?$")
        found = line.search(self._read("packed-refs", MAX_PACKED_REFS))
        if found is None:
            raise GitError(f"ref {name} not found")
        return found[1]

    def shallow(self) -> set[str]:
        if self._shallow is None:
            try:
                data = self._read("shallow", MAX_SHALLOW)
            except FileNotFoundError:
                data = b""
            ids = re.finditer(rb"(?<!\S)[0-9a-f]{40}(?!\S)", data)  # never split whole
            self._shallow = {m[0].decode() for m in ids}
        return self._shallow

    # objects

    def commit(self, oid: str) -> Commit:
        kind, body = self.object(oid)
        if kind != b"commit":
            raise GitError(f"{oid} is a {kind.decode()}, not a commit")
        tree, parents, when = None, [], None
        for line in body.split(b"\n\n", 1)[0].split(b"\n"):
            key, _, value = line.partition(b" ")
            if key == b"tree" and tree is None:
                tree = value
            elif key == b"parent":
                parents.append(value)
            elif key == b"committer" and when is None:
                # "Name <mail> 1700000000 +0000": the time is the second field from the end.
                fields = value.rsplit(b" ", 2)
                when = int(fields[-2]) if len(fields) == 3 and fields[-2].isdigit() else None
        ids = [tree, *parents]
        if when is None or not all(x and _HEX40.fullmatch(x) for x in ids):
            raise GitError(f"commit {oid} is malformed")
        shallow = oid in self.shallow()
        return Commit(tree.decode(), () if shallow else tuple(p.decode() for p in parents), when)

    def entry(self, tree: str, name: str) -> tuple[int, str] | None:
        """``(mode, id)`` of ``name`` in ``tree``, or None."""
        kind, body = self.object(tree)
        if kind != b"tree":
            raise GitError(f"{tree} is not a tree")
        want, i = name.encode(errors="surrogateescape"), 0
        while i < len(body):
            space = body.find(b" ", i)
            nul = body.find(b"\0", space)
            if space < 0 or nul < 0 or nul + 21 > len(body):
                raise GitError(f"tree {tree} is malformed")
            if body[space + 1 : nul] == want:
                return int(body[i:space], 8), body[nul + 1 : nul + 21].hex()
            i = nul + 21
        return None

    def object(self, oid: str) -> tuple[bytes, bytes]:
        """``(type, content)`` of an object, from a loose file or a pack."""
        if not _HEX40.fullmatch(oid.encode()):
            raise GitError(f"not an object id: {oid!r}")
        try:
            fd = _open_file(self.fd, f"objects/{oid[:2]}/{oid[2:]}")
        except FileNotFoundError:
            return self._packed(oid)
        try:
            return self._loose(oid, _Stream(lambda n: os.read(fd, n), oid))
        finally:
            os.close(fd)

    def _loose(self, oid: str, stream: _Stream) -> tuple[bytes, bytes]:
        """The header is inflated first: a declared size over the cap is refused before
        any of the body is inflated, and the body never inflates past its declared size."""
        header, nul, body = stream.take(64).partition(b"\0")
        kind, _, size = header.partition(b" ")
        if not nul or not size.isdigit() or int(size) > MAX_OBJECT:
            raise GitError(f"object {oid} is corrupt or larger than {MAX_OBJECT} bytes")
        want = int(size)
        body += stream.take(want + 1 - len(body))
        if len(body) != want:
            raise GitError(f"object {oid} is not the size it declares")
        self._count(want)
        return kind, body

    def _packed(self, oid: str) -> tuple[bytes, bytes]:
        for pack in self.packs():
            offset = pack.find(oid)
            if offset is not None:
                return self._unpack(pack, offset)
        raise GitError(f"object {oid} not found (alternates are not read)")

    def _unpack(self, pack: _Pack, offset: int) -> tuple[bytes, bytes]:
        """Resolve a delta chain iteratively: base first, then each delta in turn."""
        held = self._held
        try:
            return self._resolve(pack, offset)
        finally:
            self._held = held  # this chain's deltas are released (or applied)

    def _resolve(self, pack: _Pack, offset: int) -> tuple[bytes, bytes]:
        deltas: list[bytes] = []
        for _ in range(MAX_CHAIN):
            kind, size, base, start = pack.header(offset)
            if size > MAX_OBJECT:
                raise GitError(f"pack object at {offset} declares {size} bytes")
            if kind not in _TYPES:  # counted across nested chains, before it is inflated
                self._held += size
                if self._held > MAX_PENDING:
                    raise GitError(f"delta chains hold more than {MAX_PENDING} bytes")
            data = self._inflate_at(pack, start, size)
            if kind in _TYPES:
                out = data
                for delta in reversed(deltas):
                    out = self._patch(out, delta)
                return _TYPES[kind], out
            deltas.append(data)
            if kind == _OFS_DELTA:
                offset = base
                continue
            found = pack.find(base) if isinstance(base, str) else None
            if found is None:  # a REF delta whose base is loose or in another pack
                kind_name, out = self._nested_object(str(base))
                for delta in reversed(deltas):
                    out = self._patch(out, delta)
                return kind_name, out
            offset = found
        raise GitError(f"delta chain longer than {MAX_CHAIN}")

    def _nested_object(self, oid: str) -> tuple[bytes, bytes]:
        self._nested += 1
        try:
            if self._nested > MAX_NESTED:
                raise GitError("delta bases nested across packs too deeply")
            return self.object(oid)
        finally:
            self._nested -= 1

    def packs(self) -> list[_Pack]:
        if self._packs is None:
            self._packs = []
            try:
                pack_dir = open_beneath(self.fd, ["objects", "pack"])
            except FileNotFoundError:
                return self._packs
            try:
                for name in sorted(os.listdir(pack_dir)):
                    if name.endswith(".idx") and len(self._packs) < MAX_PACKS:
                        self._packs.append(_Pack.open(pack_dir, name[:-4]))
            finally:
                os.close(pack_dir)
        return self._packs

    # bounded reading

    def _small(self, rel: str) -> bytes:
        return self._read(rel, MAX_SMALL)

    def _read(self, rel: str, cap: int) -> bytes:
        fd = _open_file(self.fd, rel)
        try:
            if os.fstat(fd).st_size > cap:
                raise GitError(f"{rel} is larger than {cap} bytes")
            return _read_fd(fd, cap)
        finally:
            os.close(fd)

    def _inflate_at(self, pack: _Pack, start: int, size: int) -> bytes:
        position = [start]

        def read(n: int) -> bytes:
            chunk = os.pread(pack.pack_fd, n, position[0])
            position[0] += len(chunk)
            return chunk

        data = _Stream(read, f"in pack {pack.name}").take(size + 1)
        if len(data) != size:
            raise GitError(f"pack {pack.name}: an object is not the size it declares")
        self._count(size)
        return data

    def _patch(self, base: bytes, delta: bytes) -> bytes:
        out, ops = _apply(base, delta, MAX_DELTA_OPS - self.ops)
        self.ops += ops
        self._count(len(out))
        return out

    def _count(self, n: int) -> None:
        self.inflated += n
        if self.inflated > MAX_INFLATED:
            raise GitError(f"more than {MAX_INFLATED} bytes inflated")


class _Pack:
    """One ``pack-X.idx`` (version 2) and its ``pack-X.pack``, both read with ``pread``
    as needed: an index of any size costs a few small reads per lookup, not memory."""

    def __init__(self, name: str, idx_fd: int, pack_fd: int) -> None:
        self.name, self.idx_fd, self.pack_fd = name, idx_fd, pack_fd
        head = os.pread(idx_fd, 8 + 1024, 0)
        if len(head) != 8 + 1024 or head[:8] != b"\377tOc\0\0\0\2":
            raise GitError(f"{name}.idx is not a version 2 index")
        self.fanout = struct.unpack(">256I", head[8:])
        self.count = self.fanout[255]
        if any(a > b for a, b in zip(self.fanout, self.fanout[1:], strict=False)):
            raise GitError(f"{name}.idx has a bad fan-out table")
        self.names_at = 8 + 1024
        self.offsets_at = self.names_at + self.count * 24
        self.large_at = self.offsets_at + self.count * 4
        self.size = os.fstat(idx_fd).st_size
        if self.size < self.large_at + 40:
            raise GitError(f"{name}.idx is truncated")

    @classmethod
    def open(cls, pack_dir: int, stem: str) -> _Pack:
        idx_fd = _open_file(pack_dir, f"{stem}.idx")
        try:
            pack_fd = _open_file(pack_dir, f"{stem}.pack")
        except BaseException:
            os.close(idx_fd)
            raise
        try:
            return cls(stem, idx_fd, pack_fd)
        except BaseException:
            os.close(idx_fd)
            os.close(pack_fd)
            raise

    def close(self) -> None:
        os.close(self.idx_fd)
        os.close(self.pack_fd)

    def _at(self, offset: int, size: int) -> bytes:
        data = os.pread(self.idx_fd, size, offset)
        if len(data) != size:
            raise GitError(f"{self.name}.idx is truncated")
        return data

    def find(self, oid: str) -> int | None:
        key = bytes.fromhex(oid)
        lo = self.fanout[key[0] - 1] if key[0] else 0
        hi = self.fanout[key[0]]
        while lo < hi:  # binary search over the sorted 20-byte names
            mid = (lo + hi) // 2
            name = self._at(self.names_at + 20 * mid, 20)
            if name == key:
                break
            lo, hi = (mid + 1, hi) if name < key else (lo, mid)
        else:
            return None
        (offset,) = struct.unpack(">I", self._at(self.offsets_at + 4 * mid, 4))
        if offset & 0x80000000:
            (offset,) = struct.unpack(">Q", self._at(self.large_at + 8 * (offset & 0x7FFFFFFF), 8))
        return offset

    def header(self, offset: int) -> tuple[int, int, int | str | None, int]:
        """``(type, inflated size, delta base, start of zlib data)`` at ``offset``."""
        head = os.pread(self.pack_fd, 64, offset)
        if not head:
            raise GitError(f"pack {self.name}: offset {offset} past the end")
        byte, i = head[0], 1
        kind, size, shift = (byte >> 4) & 7, byte & 15, 4
        while byte & 0x80:
            if i >= len(head) or shift > 60:
                raise GitError(f"pack {self.name}: bad object header at {offset}")
            byte = head[i]
            size |= (byte & 0x7F) << shift
            shift, i = shift + 7, i + 1
        base: int | str | None = None
        if kind == _OFS_DELTA:
            byte = head[i]
            back, i = byte & 0x7F, i + 1
            while byte & 0x80:
                if i >= len(head) or back > 1 << 56:
                    raise GitError(f"pack {self.name}: bad delta offset at {offset}")
                byte = head[i]
                back, i = ((back + 1) << 7) | (byte & 0x7F), i + 1
            if not 0 < back <= offset:
                raise GitError(f"pack {self.name}: delta base outside the pack at {offset}")
            base = offset - back
        elif kind == _REF_DELTA:
            if i + 20 > len(head):
                raise GitError(f"pack {self.name}: bad delta at {offset}")
            base, i = head[i : i + 20].hex(), i + 20
        elif kind not in _TYPES:
            raise GitError(f"pack {self.name}: unknown object type {kind} at {offset}")
        return kind, size, base, offset + i


class _Stream:
    """zlib inflation of a file read piece by piece, handing out at most what is asked."""

    def __init__(self, read: Callable[[int], bytes], what: str) -> None:
        self.read, self.what = read, what
        self.inflater = zlib.decompressobj()

    def take(self, n: int) -> bytes:
        """Up to ``n`` more bytes (fewer only at the end of the stream)."""
        out = bytearray()
        try:
            while len(out) < n and not self.inflater.eof:
                data = self.inflater.unconsumed_tail or self.read(1 << 16)
                if not data:
                    raise GitError(f"object {self.what} is truncated")
                out += self.inflater.decompress(data, n - len(out))
        except zlib.error as exc:
            raise GitError(f"object {self.what}: bad zlib data ({exc})") from None
        return bytes(out)


def _apply(base: bytes, delta: bytes, max_ops: int) -> tuple[bytes, int]:
    """git's delta format: source size, target size, then copy and insert opcodes.
    Returns the result and the number of opcodes, at most ``max_ops``."""
    src_size, i = _varint(delta, 0)
    dst_size, i = _varint(delta, i)
    if src_size != len(base) or dst_size > MAX_OBJECT:
        raise GitError("delta does not fit its base")
    out = bytearray()
    ops = 0
    try:
        while i < len(delta):
            ops += 1
            if ops > max_ops:
                raise GitError(f"more than {MAX_DELTA_OPS} delta opcodes")
            op, i = delta[i], i + 1
            if op & 0x80:
                offset = size = 0
                for bit in range(4):
                    if op & (1 << bit):
                        offset, i = offset | delta[i] << (8 * bit), i + 1
                for bit in range(3):
                    if op & (0x10 << bit):
                        size, i = size | delta[i] << (8 * bit), i + 1
                size = size or 0x10000
                if offset + size > len(base):
                    raise GitError("delta copies past its base")
                out += base[offset : offset + size]
            elif op:
                if i + op > len(delta):
                    raise GitError("delta inserts past its end")
                out += delta[i : i + op]
                i += op
            else:
                raise GitError("delta has a reserved opcode")
            if len(out) > dst_size:
                raise GitError("delta result larger than declared")
    except IndexError:
        raise GitError("delta is truncated") from None
    if len(out) != dst_size:
        raise GitError("delta result smaller than declared")
    return bytes(out), ops


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise GitError("delta header is truncated")
        byte, i = data[i], i + 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _open_file(dir_fd: int, rel: str) -> int:
    """A regular file below ``dir_fd``, never through a symlink. FileNotFoundError if absent."""
    try:
        fd = open_beneath(dir_fd, rel.split("/"), FILE_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise FileNotFoundError(rel) from None
        raise GitError(f"cannot open {rel}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GitError(f"{rel} is not a regular file")
    return fd


def _read_fd(fd: int, cap: int) -> bytes:
    out = bytearray()
    while len(out) <= cap:
        chunk = os.read(fd, min(1 << 20, cap + 1 - len(out)))
        if not chunk:
            return bytes(out)
        out += chunk
    raise GitError(f"file larger than {cap} bytes")
