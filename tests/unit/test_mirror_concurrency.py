"""Two ``farm mirror add`` at once do not lose each other's crates: six processes add six
versions each to one mirror, and every version ends up in the index and in
farm-mirror.json (the store's flock; without it lines and entries are lost)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from farm.mirror.store import Mirror
from tests.crates import make_crate

ROOT = Path(__file__).resolve().parents[2]


def test_concurrent_adds_keep_every_version(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    batches = []
    for k in range(6):
        files = []
        for i in range(6):
            path = tmp_path / f"demo-0.{k}.{i}.crate"
            path.write_bytes(make_crate("demo", f"0.{k}.{i}"))
            files.append(str(path))
        batches.append(files)
    env = {"PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "farm.cli", "mirror", "add", str(mirror.path), *files],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for files in batches
    ]
    assert [p.wait(timeout=600) for p in procs] == [0] * 6
    versions = {f"0.{k}.{i}" for k in range(6) for i in range(6)}
    assert {e.version for e in mirror.entries()} == versions
    lines = mirror.index_path("demo").read_text().splitlines()
    assert sorted(json.loads(t)["vers"] for t in lines) == sorted(versions)
