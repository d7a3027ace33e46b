"""farm.workdisk: the capped filesystem's fullness rule, and finding it again by path
(real loop mounts: needs root, as farm itself does; no docker)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm import workdisk
from farm.errors import InfrastructureError
from farm.gc import GRACE_SECONDS, collect_garbage
from farm.settings import Settings
from farm.store import Store
from farm.workdisk import Usage, create, holders, loops_below, mounts_below, release, usage

MIB = 1 << 20
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts need root")


@pytest.fixture(autouse=True)
def _nothing_left(tmp_path: Path) -> Iterator[None]:
    """A test that fails midway must not leave its mount behind (by path, its own)."""
    yield
    if os.geteuid() == 0:
        release(tmp_path)


@pytest.mark.parametrize(
    ("free", "inodes", "full"),
    [(0, 10, True), (MIB - 1, 10, True), (MIB, 10, False), (50 * MIB, 0, True)],
)
def test_full_means_under_a_mebibyte_or_no_inode_left(free: int, inodes: int, full: bool) -> None:
    assert Usage(64 * MIB, free, inodes).full() is full


def test_a_big_cap_counts_a_thousandth_as_full() -> None:
    assert Usage(10 << 30, 10 * MIB, 100).full()
    assert not Usage(10 << 30, 11 * MIB, 100).full()


@needs_root
def test_found_and_released_by_path_even_with_spaces(tmp_path: Path) -> None:
    work = tmp_path / "work dir\tx"  # mountinfo escapes both
    root = work / "b1"
    root.mkdir(parents=True)
    create(root / "disk.img", root / "disk", 64 * MIB)
    assert mounts_below(work) == [Path(os.path.realpath(root / "disk"))]
    assert len(loops_below(work)) == 1
    assert holders(work) == {"b1"}
    assert usage(root / "disk").size <= 64 * MIB
    assert release(root) == [f"mount {os.path.realpath(root / 'disk')}"]
    assert mounts_below(work) == [] and loops_below(work) == []
    assert release(root) == []  # idempotent


def _clears_late(monkeypatch: pytest.MonkeyPatch, root: Path, reads: int) -> None:
    """The kernel clears an autoclear loop device in a work queue after its last close:
    make the first ``reads`` looks after the umount still see it (the race, made
    deterministic), whatever the real device did."""
    real = workdisk._loop_backing_files
    seen = dict(real(root))  # the device as attached now
    left = [reads]

    def late(root: Path) -> dict[str, Path]:
        now = real(root)
        seen.update(now)
        if not now and left[0] > 0:
            left[0] -= 1
            return dict(seen)
        return now

    monkeypatch.setattr(workdisk, "_loop_backing_files", late)


@needs_root
def test_a_loop_device_the_kernel_clears_late_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "b1"
    root.mkdir()
    create(root / "disk.img", root / "disk", 64 * MIB)
    _clears_late(monkeypatch, root, reads=5)
    assert release(root)[0] == f"mount {os.path.realpath(root / 'disk')}"  # and no raise
    monkeypatch.undo()
    assert loops_below(root) == []


@needs_root
def test_a_loop_device_that_stays_is_still_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "b1"
    root.mkdir()
    create(root / "disk.img", root / "disk", 64 * MIB)
    _clears_late(monkeypatch, root, reads=10**9)
    monkeypatch.setattr(workdisk, "LOOP_CLEAR_SECONDS", 0.2)
    with pytest.raises(InfrastructureError, match="could not release /dev/loop"):
        release(root)
    monkeypatch.undo()
    assert release(root) == [] and loops_below(root) == []


@needs_root
def test_a_failed_create_leaves_nothing_attached(tmp_path: Path) -> None:
    root = tmp_path / "b1"
    root.mkdir()
    (root / "disk").mkdir()  # in the way: mount point creation fails after mkfs
    with pytest.raises(FileExistsError):
        create(root / "disk.img", root / "disk", 64 * MIB)
    assert mounts_below(root) == [] and loops_below(root) == []


@needs_root
def test_a_disk_too_small_for_mkfs_is_an_infrastructure_error(tmp_path: Path) -> None:
    with pytest.raises(InfrastructureError, match="make the build's filesystem"):
        create(tmp_path / "disk.img", tmp_path / "disk", 4096)
    assert loops_below(tmp_path) == []


@needs_root
def test_gc_unmounts_a_stale_work_dirs_filesystem_before_removing_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    store = Store(settings.home)
    root = settings.work_dir / "20260101-000000-abcdef"
    root.mkdir(parents=True)
    create(root / "disk.img", root / "disk", 64 * MIB)
    (root / "disk" / "out").mkdir()
    long_ago = time.time() - 2 * GRACE_SECONDS
    os.utime(root, (long_ago, long_ago))
    said = collect_garbage(store, settings, keep=10)
    assert "1 stale work dirs" in said
    assert mounts_below(settings.home) == [] and loops_below(settings.home) == []
    assert not root.exists()
