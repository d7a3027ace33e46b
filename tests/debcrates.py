"""Real crates with crates.io's own checksums, from Debian's archive (issue 12 item 2).

Debian's ``rust-NAME`` source packages carry the original ``.crate`` as their orig tarball,
byte for byte: ``rust-serde_1.0.152.orig.tar.gz`` is crates.io's serde 1.0.152. Downloaded
once into a cache directory (``$FARM_TEST_CACHE``, else ``~/.cache/farm-tests``), verified
by sha256 on every use; a test that cannot get it is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import pytest

SERDE_VERSION = "1.0.152"
SERDE_SHA256 = "bb7d1f0d3021d347a83e556fc4683dea2ea09d87bccdf88ff5c12545d89d5efb"
SERDE_URL = "http://deb.debian.org/debian/pool/main/r/rust-serde/rust-serde_1.0.152.orig.tar.gz"


def cache_dir() -> Path:
    root = os.environ.get("FARM_TEST_CACHE") or Path.home() / ".cache" / "farm-tests"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def serde_crate() -> bytes:
    """crates.io's serde-1.0.152.crate, from Debian's orig tarball."""
    path = cache_dir() / f"serde-{SERDE_VERSION}.crate"
    if path.exists() and hashlib.sha256(data := path.read_bytes()).hexdigest() == SERDE_SHA256:
        return data
    try:
        with urllib.request.urlopen(SERDE_URL, timeout=60) as resp:
            data = resp.read(16 << 20)
    except OSError as exc:
        pytest.skip(f"cannot download {SERDE_URL}: {exc}")
    got = hashlib.sha256(data).hexdigest()
    assert got == SERDE_SHA256, f"{SERDE_URL}: sha256 {got}, expected {SERDE_SHA256}"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data
