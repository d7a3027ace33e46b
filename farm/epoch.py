"""SOURCE_DATE_EPOCH of a source tree: the time of the last git commit that touched it.

Callers: ``farm.runner.resolve`` fills ``BuildSpec.source_date_epoch`` from here when the
spec gives none, so the build's clock comes from the source, not from when it ran.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

#: The source is untrusted: no repo config may run a program, and ownership by another
#: user (farm runs as root) must not make git refuse.
_SAFE_GIT = [
    "git",
    "-c",
    "safe.directory=*",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "--no-pager",
]


def commit_epoch(source: Path) -> int | None:
    """Commit time of the newest commit touching ``source``, or None outside a git tree."""
    try:
        done = subprocess.run(
            [*_SAFE_GIT, "-C", str(source), "log", "-1", "--format=%ct", "--", "."],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = done.stdout.strip()
    return int(out) if done.returncode == 0 and out.isdigit() else None
