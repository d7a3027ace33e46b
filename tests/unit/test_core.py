import hashlib
from pathlib import Path

import pytest

from farm.ecosystems.cargo import defaults as cargo
from farm.errors import InputError, SpecError
from farm.logs import CappedLog
from farm.policy import BuildDirs, sandbox_for
from farm.runner import resolve
from farm.settings import Settings
from farm.snapshot import snapshot
from farm.spec import build_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_capped_log_truncates_and_notes(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "log", cap=10)
    for _ in range(1000):
        log.write(b"flood line\n")
    log.close()
    data = (tmp_path / "log").read_bytes()
    assert data.startswith(b"flood line")
    assert log.written == 10 and log.dropped == 11 * 1000 - 10
    assert b"log truncated at 10 bytes" in data
    assert log.tail()[-1] == "flood line"


def test_snapshot_is_deterministic_and_excludes_target(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "target").mkdir(parents=True)
    (src / "target" / "junk").write_text("ignored")
    (src / "a.rs").write_text("fn main() {}")
    (src / "run.sh").write_text("#!/bin/sh")
    (src / "run.sh").chmod(0o755)
    one = snapshot(src, tmp_path / "s1", 1_700_000_000)
    (src / "target" / "junk").write_text("still ignored")
    two = snapshot(src, tmp_path / "s2", 1_700_000_000)
    assert one == two and one.startswith("sha256:")
    assert not (tmp_path / "s1" / "target").exists()
    assert (tmp_path / "s1" / "a.rs").stat().st_mtime == 1_700_000_000
    (src / "a.rs").write_text("fn main() { evil() }")
    assert snapshot(src, tmp_path / "s3", 1_700_000_000) != one


def test_snapshot_refuses_fifos(tmp_path: Path) -> None:
    import os

    (tmp_path / "src").mkdir()
    os.mkfifo(tmp_path / "src" / "pipe")
    with pytest.raises(InputError, match="pipe is not a regular file"):
        snapshot(tmp_path / "src", tmp_path / "copy", 0)


def test_cargo_defaults_for_the_example() -> None:
    spec = resolve(build_spec({"source": str(EXAMPLES / "hello-serde")}))
    assert spec.argv == cargo.DEFAULT_ARGV
    assert spec.outputs == ["target/release/hello-serde"]


def test_non_cargo_needs_argv(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="argv: required"):
        resolve(build_spec({"source": str(tmp_path)}))


def test_policy_baseline(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    spec = resolve(build_spec({"source": str(tmp_path), "argv": ["true"], "env": {"A": "1"}}))
    dirs = BuildDirs(tmp_path / "b")
    sbx = sandbox_for(spec, "id1", dirs, settings)
    assert sbx.network == "none" and sbx.read_only_root is True
    assert sbx.user == "10001:10001"
    assert sbx.env["A"] == "1" and sbx.env["TZ"] == "UTC" and sbx.env["HOME"].startswith("/tmp")
    assert {(m.target, m.read_only) for m in sbx.mounts} == {
        ("/src", True),
        ("/build/target", False),
        ("/out", False),
    }
    assert all(str(m.source).startswith(str(dirs.root)) for m in sbx.mounts)
    assert sbx.tmpfs == {"/tmp": spec.resources.scratch}
    assert sbx.labels["io.farm.managed"] == "true"


def test_store_blobs_are_content_addressed(tmp_path: Path) -> None:
    from farm.store import Store

    store = Store(tmp_path)
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    sha, size = store.put_file(f)
    assert sha == hashlib.sha256(b"abc").hexdigest() and size == 3
    assert store.blob_path(sha).read_bytes() == b"abc"


def test_snapshot_digest_is_unambiguous_and_ignores_umask(tmp_path: Path) -> None:
    import os

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("1")
    (a / "y").write_text("2")
    # A single file whose name imitates the manifest line of a second file.
    (b / "x").write_text("1")
    old = os.umask(0o077)
    try:
        digest_a = snapshot(a, tmp_path / "sa", 0)
        (tmp_path / "sub").mkdir()
        (a / "sub").mkdir()
        snapshot(a, tmp_path / "sa2", 0)
    finally:
        os.umask(old)
    assert (tmp_path / "sa").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "sa2" / "sub").stat().st_mode & 0o777 == 0o755
    assert digest_a != snapshot(b, tmp_path / "sb", 0)
