"""Review fixes to the layer store (docs/layers.md): a kept layer's owners are farm's
(the sandbox uid), with no setuid/setgid bit or group/other write, ``layers/`` is
root's only, the digest sees directories and
every entry's type, mode and owner; a copy that times out is a FarmError and leaves
nothing; ``farm gc`` sweeps stale temporary copies; a keep never removes what is at the
final name."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.layers import store as layer_store
from farm.layers.store import LayerStore, tree_digest
from farm.settings import SANDBOX_UID

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layers are kept by root")

KEY = "sha256:" + "5" * 64


def hostile_target(tmp_path: Path) -> Path:
    """What a build script running as the sandbox's uid can leave in target/."""
    target = tmp_path / "target"
    deps = target / "release" / "deps"
    deps.mkdir(parents=True)
    (target / "release" / "empty").mkdir()
    suid = deps / "helper"
    suid.write_bytes(b"#!/bin/sh\n")
    for path in (target, target / "release", deps, target / "release" / "empty", suid):
        os.chown(path, 10002, 10003)  # a build could not, but the owner is farm's anyway
    os.chmod(deps, 0o777)
    os.chmod(target / "release" / "empty", 0o2777)
    os.chmod(suid, 0o6777)
    (target / "release" / "link").symlink_to("deps/helper")
    os.lchown(target / "release" / "link", 10002, 10003)
    return target


def test_a_kept_layer_has_farms_owner_and_no_setuid_or_shared_write(tmp_path: Path) -> None:
    layer = LayerStore(tmp_path / "home").keep(KEY, "t1", hostile_target(tmp_path), "b1")
    entries = [layer.tree] + [Path(d, n) for d, ds, fs in os.walk(layer.tree) for n in ds + fs]
    assert len(entries) == 6
    for path in entries:
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (SANDBOX_UID, SANDBOX_UID), path
        if not stat.S_ISLNK(st.st_mode):
            bad = st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH)
            assert bad == 0, f"{path} {st.st_mode:o}"
    assert os.stat(layer.tree / "release" / "deps" / "helper").st_mode & 0o7777 == 0o755
    assert (layer.tree / "release" / "empty").is_dir()  # empty dirs are kept
    assert stat.S_IMODE(os.stat(layer.tree.parents[1]).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(layer.tree.parent).st_mode) == 0o700
    assert LayerStore(tmp_path / "home").intact(layer)


def test_an_existing_layers_dir_is_made_roots_only(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "home")
    store.root.mkdir(parents=True, mode=0o755)
    os.chmod(store.root, 0o755)
    store.keep(KEY, "t1", hostile_target(tmp_path), "b1")
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700


def test_the_digest_sees_directories_their_modes_and_owners(tmp_path: Path) -> None:
    target = tmp_path / "t"
    (target / "d").mkdir(parents=True)
    (target / "d" / "f").write_bytes(b"x")
    first = tree_digest(target)[0]
    os.chmod(target / "d", 0o777)
    assert tree_digest(target)[0] != first  # a directory's mode
    os.chmod(target / "d", stat.S_IMODE(os.stat(target / "d").st_mode) & ~0o022)
    second = tree_digest(target)[0]
    (target / "e").mkdir()
    assert tree_digest(target)[0] != second  # an empty directory
    third = tree_digest(target)[0]
    os.chown(target / "d" / "f", 10001, 10001)
    assert tree_digest(target)[0] != third  # an owner


def test_a_copy_that_times_out_is_a_farm_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LayerStore(tmp_path / "home")
    target = hostile_target(tmp_path)
    for i in range(200):
        (target / f"f{i}").write_bytes(b"x" * 4096)
    monkeypatch.setattr(layer_store, "COPY_TIMEOUT_SECONDS", 1e-6)
    with pytest.raises(FarmError, match="timed out"):
        store.keep(KEY, "t1", target, "b1")
    assert list(store.root.iterdir()) == []


def test_gc_sweeps_stale_temporary_copies_only(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "home")
    store.keep(KEY, "t1", hostile_target(tmp_path), "b1")
    stale, fresh = store.root / ".new-old", store.root / ".new-now"
    for path in (stale, fresh):
        (path / "tree").mkdir(parents=True)
    old = time.time() - layer_store.STALE_SECONDS - 60
    os.utime(stale, (old, old))
    store.prune(max_bytes=1 << 40, max_count=10)
    assert sorted(p.name for p in store.root.iterdir()) == [".new-now", KEY[7:]]


def test_a_keep_never_removes_what_is_at_the_final_name(tmp_path: Path) -> None:
    """Another keep of the same key may have just renamed its copy there (and a build
    mounted it): this copy is dropped instead."""
    store = LayerStore(tmp_path / "home")
    final = store.root / KEY[7:]
    (final / "tree").mkdir(parents=True)
    (final / "tree" / "theirs").write_bytes(b"mounted")
    with pytest.raises(FarmError, match="already holds"):
        store.keep(KEY, "t1", hostile_target(tmp_path), "b1")
    assert (final / "tree" / "theirs").read_bytes() == b"mounted"
    assert sorted(p.name for p in store.root.iterdir()) == [KEY[7:]]
