"""Explain why two runs of a build differ: diffoscope over copies of their artifacts.

Callers: ``farm.reprocheck`` after a mismatch. The artifacts come from an untrusted
build, so they are only ever read: diffoscope parses files (ELF sections, archives,
text) and never executes them. It runs on the host as ``nobody`` with no new privileges,
a timeout and a report cap, over copies in a private temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: Enough for a readable report; the rest is cut (diffoscope says so in the report).
REPORT_CAP = 4 << 20
TIMEOUT_SECONDS = 600
NOBODY = 65534


def available() -> bool:
    return shutil.which("diffoscope") is not None


def compare(left: tuple[str, dict[str, Path]], right: tuple[str, dict[str, Path]]) -> bytes:
    """diffoscope's text report comparing two runs, each (name, {artifact path: file}).

    Never raises for a hostile input: a crash or timeout of diffoscope is in the report.
    """
    with tempfile.TemporaryDirectory(prefix="farm-diffoscope-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # nobody must read the copies, and nothing else may write them
        sides = [_lay_out(root / name, files) for name, files in (left, right)]
        argv = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--no-new-privs",
            "diffoscope",
            "--no-progress",
            "--text",
            "-",
            "--text-color=never",
            f"--max-report-size={REPORT_CAP}",
            "--exclude-directory-metadata=recursive",
            *map(str, sides),
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LC_ALL": "C.UTF-8"}
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=TIMEOUT_SECONDS, env=env, cwd=root
            )
        except subprocess.TimeoutExpired:
            return f"diffoscope did not finish within {TIMEOUT_SECONDS} s\n".encode()
    report = done.stdout[:REPORT_CAP]
    if done.returncode not in (0, 1):  # 1 means "differences found"
        report += f"\ndiffoscope failed (exit {done.returncode}):\n".encode() + done.stderr[-4000:]
    return report


def _lay_out(side: Path, files: dict[str, Path]) -> Path:
    """Copy each artifact to ``side/<its path>``, readable, not executable, same mtime."""
    side.mkdir(mode=0o755)
    for rel, blob in files.items():
        dest = side / rel
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        shutil.copyfile(blob, dest)
        dest.chmod(0o644)
    for path in [side, *side.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)
    return side
