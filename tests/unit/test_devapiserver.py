"""``make apiserver`` rebuilds only when it must (farm/devapiserver.py): the cached
binaries count as current only if both exist, match their recorded sha256 and were
built from the pinned package versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from farm import devapiserver
from farm.digests import file_sha256
from farm.errors import InfrastructureError

pytestmark = pytest.mark.unit


def cached(dest: Path, pins: dict[str, str] | None = None) -> Path:
    dest.mkdir()
    for name in (devapiserver.SERVER, devapiserver.ETCD):
        (dest / name).write_bytes(name.encode())
    record = {
        "pins": devapiserver.PINS if pins is None else pins,
        "sha256": {n: file_sha256(dest / n) for n in (devapiserver.SERVER, devapiserver.ETCD)},
    }
    (dest / devapiserver.RECORD).write_text(json.dumps(record))
    return dest


def test_a_complete_cache_of_the_pinned_packages_is_current(tmp_path: Path) -> None:
    dest = cached(tmp_path / "a")
    assert devapiserver.current(dest)
    assert devapiserver.binaries(dest) == (dest / "apiextensions-apiserver", dest / "etcd")


def test_other_pins_a_changed_binary_or_a_missing_one_rebuild(tmp_path: Path) -> None:
    stale = cached(tmp_path / "pins", {**devapiserver.PINS, "etcd-server": "3.5.0-1"})
    changed = cached(tmp_path / "changed")
    (changed / "etcd").write_bytes(b"something else")
    missing = cached(tmp_path / "missing")
    (missing / "apiextensions-apiserver").unlink()
    garbled = cached(tmp_path / "garbled")
    (garbled / devapiserver.RECORD).write_text("{")

    for dest in (stale, changed, missing, garbled):
        assert not devapiserver.current(dest), dest.name
    assert devapiserver.binaries(missing) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting proc needs root")
def test_a_chroot_with_proc_still_mounted_is_never_removed(tmp_path: Path) -> None:
    """Removing a chroot whose /proc is mounted would walk into the host's /proc."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "usr").mkdir()
    with devapiserver.proc_mounted(root):
        with pytest.raises(InfrastructureError, match="still mounted"):
            devapiserver._drop(root)
        assert (root / "usr").exists()
    assert not (root / "proc").is_mount()
    devapiserver._drop(root)
    assert not root.exists()


def test_proc_is_unmounted_when_the_build_fails(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting proc needs root")
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    with pytest.raises(RuntimeError), devapiserver.proc_mounted(root):
        assert (root / "proc").is_mount()
        raise RuntimeError("go build failed")
    assert not (root / "proc").is_mount()


def test_a_fresh_clone_copies_the_machine_cache_instead_of_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI clones afresh on the same machine: the binaries come from the cache outside
    the clone. No PATH: a build would stop at once with "mmdebstrap is missing"."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PATH", "")
    first = cached(tmp_path / "first-clone")
    devapiserver.build(first, log=lambda _: None)  # current: fills the machine cache
    assert devapiserver.current(devapiserver.shared_cache())

    fresh = tmp_path / "fresh-clone"
    devapiserver.build(fresh, log=lambda _: None)

    assert devapiserver.current(fresh)
    assert (fresh / "etcd").read_bytes() == b"etcd"
    (devapiserver.shared_cache() / "etcd").unlink()
    with pytest.raises(InfrastructureError, match="mmdebstrap is missing"):
        devapiserver.build(tmp_path / "another-clone", log=lambda _: None)
