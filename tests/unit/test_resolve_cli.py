"""``farm build --resolve-lock [MIRROR_DIR]``: refused before anything is created when it
cannot apply (tests/e2e/test_serve_resolve.py has farm serve's side)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _farm(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_HOME"] = str(tmp_path / "home")
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *argv], capture_output=True, text=True, env=env
    )


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Cargo.toml").write_text('[package]\nname = "a"\nversion = "0.1.0"\n')
    return src


def test_a_directory_that_is_not_a_mirror_is_refused_before_any_build(tmp_path: Path) -> None:
    (tmp_path / "notmirror").mkdir()
    done = _farm(
        tmp_path, "build", str(_src(tmp_path)), "--resolve-lock", str(tmp_path / "notmirror")
    )
    assert done.returncode == 2
    assert "is not a farm mirror (no index/)" in done.stderr
    assert not (tmp_path / "home" / "work").exists() or not any(
        (tmp_path / "home" / "work").iterdir()
    )


def test_a_server_build_names_no_mirror_dir_and_a_local_one_must(tmp_path: Path) -> None:
    """farm serve resolves against its operator's mirror: a tenant names no directory."""
    (tmp_path / "m" / "index").mkdir(parents=True)
    src = str(_src(tmp_path))
    server = ("--server", "http://127.0.0.1:9")
    done = _farm(tmp_path, "build", src, "--resolve-lock", str(tmp_path / "m"), *server)
    assert done.returncode == 2
    assert "--resolve-lock: farm serve resolves against its operator's mirror" in done.stderr
    assert "drop MIRROR_DIR" in done.stderr
    done = _farm(tmp_path, "build", src, "--resolve-lock")
    assert done.returncode == 2
    assert "--resolve-lock: a local build needs MIRROR_DIR" in done.stderr
    assert not (tmp_path / "home" / "work").exists()
