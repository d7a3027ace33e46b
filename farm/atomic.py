"""Write a file whole or not at all: a temporary file in the same directory, fsynced, then
renamed over the target, so a reader (or a crash) never sees half a file.

Callers: ``farm.fetch.cache`` (verified crates) and ``farm.mirror.store`` (crates, index
files, the mirror's manifest).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``); the directory must exist."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
