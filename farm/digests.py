"""The sha256 of a file, read in 1 MiB chunks so large artifacts and tarballs need
little memory.

Callers: farm.cache (is a cached blob still intact), farm.verify (an artifact against its
attestation), farm.images (the builder's rootfs tarball) and farm.devtools (pinned tool
downloads). Raises OSError; each caller turns that into its own error or answer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
