import os
from pathlib import Path

import pytest

from farm.collect import collect, glob_regex
from farm.policy import BuildDirs
from farm.spec import OutputLimits
from farm.store import Store


@pytest.fixture
def dirs(tmp_path: Path) -> BuildDirs:
    d = BuildDirs(tmp_path / "build")
    for p in (d.src, d.target, d.out):
        p.mkdir(parents=True)
    return d


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


def test_glob_semantics() -> None:
    assert glob_regex("out/**").match("out/a/b/c")
    assert glob_regex("target/release/*").match("target/release/app")
    assert not glob_regex("target/release/*").match("target/release/deps/app")
    assert glob_regex("out/**/*.txt").match("out/x.txt")


def test_regular_files_are_stored_by_digest(dirs: BuildDirs, store: Store) -> None:
    (dirs.out / "a.txt").write_bytes(b"hello")
    got = collect(dirs, ["out/**"], OutputLimits(), store)
    assert [(a.path, a.size) for a in got.artifacts] == [("out/a.txt", 5)]
    sha = got.artifacts[0].sha256
    assert store.blob_path(sha).read_bytes() == b"hello"
    assert not got.refused


def test_symlinks_fifos_and_foreign_hardlinks_are_refused(
    dirs: BuildDirs, store: Store, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (dirs.out / "link").symlink_to(secret)
    (dirs.out / "dirlink").symlink_to(tmp_path)
    os.mkfifo(dirs.out / "fifo")
    os.link(secret, dirs.out / "hard")
    got = collect(dirs, ["out/**"], OutputLimits(), store)
    reasons = {r.path: r.reason for r in got.refused}
    assert reasons["out/link"].startswith("symlink")
    assert reasons["out/dirlink"].startswith("symlink")
    assert reasons["out/fifo"].startswith("FIFO")
    assert reasons["out/hard"].startswith("hard link to a file outside")
    assert got.artifacts == []
    assert not any(b.read_bytes() == b"host secret" for _, b in store.all_blobs())


def test_hardlinks_inside_the_build_are_fine(dirs: BuildDirs, store: Store) -> None:
    # cargo hard-links target/release/app to target/release/deps/app-<hash>.
    (dirs.target / "release" / "deps").mkdir(parents=True)
    (dirs.target / "release" / "deps" / "app-123").write_bytes(b"\x7fELF")
    os.link(dirs.target / "release" / "deps" / "app-123", dirs.target / "release" / "app")
    got = collect(dirs, ["target/release/app"], OutputLimits(), store)
    assert [a.path for a in got.artifacts] == ["target/release/app"]


def test_size_caps(dirs: BuildDirs, store: Store) -> None:
    (dirs.out / "big").write_bytes(b"x" * 2000)
    (dirs.out / "a").write_bytes(b"x" * 600)
    (dirs.out / "b").write_bytes(b"x" * 600)
    got = collect(dirs, ["out/**"], OutputLimits(max_file=1000, max_total=1000), store)
    reasons = {r.path: r.reason for r in got.refused}
    assert "per-file cap" in reasons["out/big"]
    assert "total output cap" in reasons["out/b"]
    assert [a.path for a in got.artifacts] == ["out/a"]


def test_undecodable_names_are_refused_and_recorded_escaped(dirs: BuildDirs, store: Store) -> None:
    os.makedirs(os.fsencode(dirs.out) + b"/\xff")
    (Path(os.fsdecode(os.fsencode(dirs.out) + b"/\xff")) / "bin").write_bytes(b"x")
    got = collect(dirs, ["out/**"], OutputLimits(), store)
    assert [(r.path, r.reason) for r in got.refused] == [
        ("out/\\xff/bin", "name is not valid UTF-8")
    ]
    got.refused[0].model_dump_json()  # the record can be saved
