"""The shared, content-addressed crate cache: ``$FARM_HOME/crates/sha256/<ab>/<hex>``.

Callers: ``farm.fetch.phase``. One cache serves every tenant, which is safe only because
an entry is stored under a digest after its bytes were hashed to that digest, and hashed
again on every read: a tenant can neither plant bytes under another crate's checksum nor
profit from a corrupted file (it is dropped and fetched again). Writes go to a temporary
file in the cache and are renamed into place, so a reader never sees half an entry and two
builds fetching the same crate at once both end with the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

_HEX = re.compile(r"[0-9a-f]{64}")


class CrateCache:
    def __init__(self, root: Path, max_entry: int = 64 << 20) -> None:
        self.root = root
        self.max_entry = max_entry

    @classmethod
    def under(cls, home: Path) -> CrateCache:
        return cls(home / "crates")

    def path(self, sha256: str) -> Path:
        if not _HEX.fullmatch(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def get(self, sha256: str) -> bytes | None:
        """The bytes stored under ``sha256``, if present and still hashing to it."""
        path = self.path(sha256)
        try:
            with open(path, "rb", opener=_no_follow) as fh:
                data = fh.read(self.max_entry + 1)
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return data

    def put(self, sha256: str, data: bytes) -> bool:
        """Store ``data`` under ``sha256`` if it hashes to it; False (nothing stored) if not."""
        if hashlib.sha256(data).hexdigest() != sha256 or len(data) > self.max_entry:
            return False
        path = self.path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
