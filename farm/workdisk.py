"""A build's writable storage: one sparse ext4 image of ``resources.disk`` bytes,
loop-mounted under the build's work dir, holding target/ and out/.

Callers: ``farm.runner`` (``create`` before the sandbox, ``usage`` after it, ``release``
on every path out, and ``release`` again in ``farm reap`` for a run that crashed) and
``farm.gc`` (stale work dirs). Why an image: gVisor writes to a bind mount go straight to
the host file (directfs), so only a filesystem of fixed size bounds them; the image is
sparse, so it costs only what the build writes (docs/sandbox.md, "Disk exhaustion").

Everything is found again by path: a mount point or a loop device's backing file below a
build's work dir belongs to that build, so a crashed run's leftovers need no state.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from farm.errors import InfrastructureError

#: No journal and no reserved blocks: the filesystem lives only as long as the build, and
#: every block is the build's. ``-T default`` keeps 4 KiB blocks even for a small cap; one
#: inode per 8 KiB (ext4's default is 16 KiB) lets many small files (cargo's fingerprints
#: and dep-info) fill the cap before the inodes run out, for 3% of it in inode tables.
#: Lazy inode tables keep mkfs from writing them out: the sparse file reads as zeros.
MKFS = [
    *("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-T", "default", "-i", "8192"),
    *("-E", "nodiscard,lazy_itable_init=1"),
]
#: ``noinit_itable``: no background thread zeroing inode tables the sparse file already
#: reads as zeros. ``loop`` sets autoclear, so the last umount frees the loop device.
MOUNT_OPTIONS = "loop,nosuid,nodev,noinit_itable"
#: Free space below which a build counts as having reached its cap: a write that fails
#: with ENOSPC leaves at most a few blocks behind.
FULL_SLACK = 1 << 20
#: How long release() waits for the kernel to clear a loop device it has let go of.
LOOP_CLEAR_SECONDS = 10.0


@dataclass(frozen=True)
class Usage:
    """What the build left on its filesystem (statvfs after the sandbox is gone)."""

    size: int
    free: int
    inodes_free: int

    def full(self) -> bool:
        slack = max(FULL_SLACK, self.size // 1000)
        return self.free < slack or self.inodes_free == 0


def create(image: Path, mountpoint: Path, size: int) -> None:
    """Make a sparse ``size``-byte ext4 image and mount it on ``mountpoint`` (created).

    Raises InfrastructureError (mkfs.ext4 or mount missing or failing, no loop device
    left) after undoing what it made."""
    try:
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        _run([*MKFS, str(image)], "make the build's filesystem")
        mountpoint.mkdir(mode=0o700)
        _run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(mountpoint)], "mount it")
    except BaseException:
        release(image.parent)
        raise


def usage(mountpoint: Path) -> Usage:
    # f_bavail, not f_bfree: ext4 holds back up to 2% (at most 16 MiB) for its own
    # metadata, and a file write fails with ENOSPC once only that reserve is left.
    st = os.statvfs(mountpoint)
    return Usage(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_favail)


def release(root: Path) -> list[str]:
    """Unmount every mount at or below ``root`` and detach every loop device whose
    backing file is below it; idempotent. Returns what it removed.

    Raises InfrastructureError if a mount or loop device is still there afterwards,
    so the caller never removes a directory that still has a filesystem on it."""
    removed = []
    for point in sorted(mounts_below(root), key=lambda p: len(p.parts), reverse=True):
        removed.append(_unmount(point))
    for device in loops_below(root):
        # Autoclear usually freed it with the umount; one attached without it (a crash
        # between losetup and mount) is detached here.
        subprocess.run(["losetup", "-d", device], capture_output=True, timeout=60)
        removed.append(f"loop device {device}")
    left = [str(p) for p in mounts_below(root)] + _loops_gone(root)
    if left:
        raise InfrastructureError(
            f"could not release {', '.join(left)}; unmount or `losetup -d` it by hand"
        )
    return removed


def _loops_gone(root: Path) -> list[str]:
    """Loop devices still below ``root`` after a bounded wait: the kernel clears an
    autoclear device after its last close, in a work queue, so right after the umount
    (most often on a busy machine) it can still name its backing file for a moment."""
    deadline = time.monotonic() + LOOP_CLEAR_SECONDS
    while (left := loops_below(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def mounts_below(root: Path) -> list[Path]:
    """Mount points at or below ``root``, from this process's mount table."""
    base = Path(os.path.realpath(root))
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            point = Path(_unescape(line.split()[4]))
            if point == base or base in point.parents:
                found.append(point)
    return found


def loops_below(root: Path) -> list[str]:
    """Loop devices (``/dev/loopN``) whose backing file is below ``root``."""
    return sorted(_loop_backing_files(root))


def holders(work: Path) -> set[str]:
    """Names of ``work``'s entries (build ids) with a mount or a loop device below them."""
    base = Path(os.path.realpath(work))
    paths = [*mounts_below(base), *_loop_backing_files(base).values()]
    return {p.relative_to(base).parts[0] for p in paths if p != base}


def _loop_backing_files(root: Path) -> dict[str, Path]:
    base = os.path.realpath(root) + os.sep
    found = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            path = backing.read_text().rstrip("\n").removesuffix(" (deleted)")
        except OSError:
            continue  # detached meanwhile
        if path.startswith(base):
            found[f"/dev/{backing.parent.parent.name}"] = Path(path)
    return found


def _unmount(point: Path) -> str:
    done = subprocess.run(["umount", str(point)], capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return f"mount {point}"
    # Busy (a process that outlived its sandbox still has a file open): detach it now;
    # the kernel frees the filesystem and its loop device when the last user goes.
    lazy = subprocess.run(["umount", "--lazy", str(point)], capture_output=True, timeout=60)
    if lazy.returncode != 0:
        raise InfrastructureError(f"could not unmount {point}: {done.stderr.strip()}")
    return f"mount {point} (lazily: {done.stderr.strip()})"


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfrastructureError(f"could not {what}: {exc}") from exc
    if done.returncode != 0:
        raise InfrastructureError(
            f"could not {what}: `{' '.join(argv)}` said {done.stderr.strip()!r}; "
            "farm needs root, mkfs.ext4 and a free loop device (see `farm doctor`)"
        )


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace(f"\\{code}", chr(int(code, 8)))
    return field
