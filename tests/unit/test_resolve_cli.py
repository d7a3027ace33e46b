"""``farm build --resolve-lock``: refused before anything is created when it cannot apply."""

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


def test_resolve_lock_is_local_only(tmp_path: Path) -> None:
    (tmp_path / "m" / "index").mkdir(parents=True)
    done = _farm(
        tmp_path,
        "build",
        str(_src(tmp_path)),
        "--resolve-lock",
        str(tmp_path / "m"),
        "--server",
        "http://127.0.0.1:9",
    )
    assert done.returncode == 2
    assert "--resolve-lock: builds on farm serve use the lock they are given" in done.stderr
