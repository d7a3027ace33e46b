"""Mount a dependency layer under a build's target/: an overlay whose lower directory
is the layer (never written) and whose upper and work directories are the build's own,
on its capped filesystem (farm.workdisk).

Callers: ``farm.runner``, after the build's filesystem exists and before its sandbox
does. The overlay is a host mount below the build's work dir, so ``workdisk.release``
unmounts it (deepest first) on every path out, and the upper directory goes with the
build's filesystem: whatever a build writes over the layer (a tampered rlib included)
is gone when it ends. Under gVisor the overlay is an ordinary host directory bind
mounted into the sandbox; writes reach the upper directory through the host kernel.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from farm.errors import InfrastructureError
from farm.settings import SANDBOX_UID

#: Characters overlayfs's option parser treats as separators in a directory name.
UNSAFE = (",", ":", "\\", "\n")


def mount(lower: Path, disk: Path, target: Path) -> None:
    """Mount ``lower`` copy-on-write at ``target``, its writes kept below ``disk``.

    Raises InfrastructureError when the kernel refuses (no overlayfs)."""
    for path in (lower, disk):
        if any(c in str(path) for c in UNSAFE):
            raise InfrastructureError(
                f"{path}: overlayfs cannot take a directory whose name holds one of "
                f"{' '.join(UNSAFE)}; move FARM_HOME"
            )
    upper, work = disk / "layer-upper", disk / "layer-work"
    upper.mkdir(mode=0o755)
    work.mkdir(mode=0o700)
    os.chown(upper, SANDBOX_UID, SANDBOX_UID)  # the merged root takes the upper's owner
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    done = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise InfrastructureError(f"could not mount the dependency layer: {done.stderr.strip()}")
