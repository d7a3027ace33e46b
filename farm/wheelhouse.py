"""farm and its runtime dependencies as wheels, for the offline ``farm`` image.

Callers: ``farm.images`` (``farm image build farm``). An air-gapped site copies in a
wheelhouse made elsewhere (``make wheels``, or ``pip wheel farm``) and passes it with
``--wheelhouse``; otherwise the wheels are built here from farm's source tree, which
needs PyPI (or the pip index configured on this host) for the dependencies.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from farm.errors import ImageError


def source_tree() -> Path:
    """farm's source checkout (an editable or in-tree install), or ImageError."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ImageError(
            "farm is not installed from a source tree, so it cannot build its own wheels; "
            "pass --wheelhouse DIR (made with `make wheels` or `pip wheel farm`)"
        )
    return root


#: What setuptools needs to build farm's wheel (pyproject.toml names the readme).
WHEEL_INPUTS = ("pyproject.toml", "README.md", "farm")


def build_wheels(dest: Path) -> Path:
    """``pip wheel`` farm and its dependencies into ``dest``.

    From a clean copy of the inputs: setuptools builds in-tree and packs whatever its
    ``build/lib`` holds, so a module deleted since the last build would reach the image.
    """
    root = source_tree()
    with tempfile.TemporaryDirectory(prefix="farm-src-") as tmp:
        for name in WHEEL_INPUTS:
            src, copy = root / name, Path(tmp) / name
            if src.is_dir():
                shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, copy)
        argv = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(dest), tmp]
        done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ImageError(f"pip wheel failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return dest


def digests(wheelhouse: Path) -> tuple[tuple[str, str], ...]:
    """(file name, sha256 of its RECORD) per wheel.

    RECORD lists every file's hash, so this names the wheel's content; the zip itself
    carries build timestamps, so hashing it would make each rebuild of farm's own wheel
    look new and defeat the image's up-to-date check.
    """
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not any(w.name.startswith("farm-") for w in wheels):
        raise ImageError(f"no farm wheel in {wheelhouse}; make it with `make wheels`")
    return tuple((w.name, _record_sha256(w)) for w in wheels)


def _record_sha256(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        records = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise ImageError(f"{wheel.name} is not a wheel (no single dist-info/RECORD)")
        return hashlib.sha256(z.read(records[0])).hexdigest()
