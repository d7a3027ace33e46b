"""Explain why two runs of a build differ: diffoscope over copies of their artifacts.

Callers: ``farm.reprocheck`` after a mismatch. The artifacts come from an untrusted
build, so they are only ever read: diffoscope parses files (ELF sections, archives,
text) and never executes them, but a parser bug must not give a hostile artifact the
host. So diffoscope runs confined (``confined``): in a new network namespace (only a
loopback that is down: no network at all), under an address-space limit, as ``nobody``
with no supplementary groups and no new privileges, with a timeout and a report cap. It
reads copies in a private temporary directory that only root and group ``nogroup`` can
enter, so no other host user sees a tenant's artifacts either.
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
#: RLIMIT_AS of diffoscope and every tool it starts (readelf, objdump, …): a hostile
#: artifact that makes a parser balloon fails that comparison, not the host.
MEMORY_LIMIT = 2 << 30
NOBODY = 65534
NOGROUP = 65534


def available() -> bool:
    return shutil.which("diffoscope") is not None


def confined(argv: list[str], memory: int = MEMORY_LIMIT) -> list[str]:
    """``argv`` run with no network, at most ``memory`` bytes of address space, as
    nobody:nogroup with no other groups and no-new-privs (util-linux tools; farm runs as
    root). The order matters: the namespace and the limit need root, so they come before
    ``setpriv`` drops it; all three are inherited by everything ``argv`` starts."""
    return [
        "unshare",
        "--net",
        "--",
        "prlimit",
        f"--as={memory}",
        "--",
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOGROUP}",
        "--clear-groups",
        "--no-new-privs",
        "--",
        *argv,
    ]


def compare(left: tuple[str, dict[str, Path]], right: tuple[str, dict[str, Path]]) -> bytes:
    """diffoscope's text report comparing two runs, each (name, {artifact path: file}).

    Never raises for a hostile input: a crash or timeout of diffoscope is in the report.
    """
    with tempfile.TemporaryDirectory(prefix="farm-diffoscope-") as tmp:
        root = Path(tmp)
        _private(root)
        sides = [_lay_out(root / name, files) for name, files in (left, right)]
        argv = [
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
                confined(argv), capture_output=True, timeout=TIMEOUT_SECONDS, env=env, cwd=root
            )
        except subprocess.TimeoutExpired:
            return f"diffoscope did not finish within {TIMEOUT_SECONDS} s\n".encode()
    report = done.stdout[:REPORT_CAP]
    if done.returncode not in (0, 1):  # 1 means "differences found"
        report += f"\ndiffoscope failed (exit {done.returncode}):\n".encode() + done.stderr[-4000:]
    return report


def _private(path: Path, mode: int = 0o750) -> None:
    """root:nogroup: diffoscope (group nogroup) reads, cannot write or chmod it, and no
    other host user can enter."""
    os.chown(path, 0, NOGROUP, follow_symlinks=False)
    path.chmod(mode)


def _lay_out(side: Path, files: dict[str, Path]) -> Path:
    """Copy each artifact to ``side/<its path>``, readable, not executable, same mtime."""
    side.mkdir()
    _private(side)
    for rel, blob in files.items():
        dest = side / rel
        for parent in reversed(dest.relative_to(side).parents[:-1]):
            if not (side / parent).exists():
                (side / parent).mkdir()
                _private(side / parent)
        shutil.copyfile(blob, dest)
        _private(dest, 0o640)
    for path in [side, *side.rglob("*")]:
        os.utime(path, (0, 0), follow_symlinks=False)
    return side
