"""The ``farm mirror`` command line as a user runs it: ``create``, ``add FILE.crate``,
``list --json``, and ``serve`` printing cargo's index URL, answering on it and stopping
cleanly on SIGTERM; bad input exits 2 with a message that says what to change."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.crates import make_crate
from tests.realcrates import REAL_CRATES

ROOT = Path(__file__).resolve().parents[2]


def farm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "farm.cli", "mirror", *args]
    env = {"PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def test_create_add_list(tmp_path: Path, real_crates: dict[str, bytes]) -> None:
    (tmp_path / "serde.crate").write_bytes(real_crates["serde"])
    (tmp_path / "evil.crate").write_bytes(make_crate("serde", "1.0.152", {"src/lib.rs": b"x"}))
    m = str(tmp_path / "m")
    assert farm(tmp_path, "create", m).returncode == 0
    added = farm(tmp_path, "add", m, str(tmp_path / "serde.crate"))
    assert (
        added.returncode == 0 and "added    serde 1.0.152  bb7d1f0d3021d347…  file" in added.stdout
    )
    refused = farm(tmp_path, "add", m, str(tmp_path / "evil.crate"))
    assert refused.returncode == 2 and "already holds 1.0.152" in refused.stderr
    listed = json.loads(farm(tmp_path, "list", m, "--json").stdout)
    assert listed == [
        {
            "name": "serde",
            "version": "1.0.152",
            "cksum": REAL_CRATES["serde"].cksum,
            "origin": "file",
        }
    ]
    nothing = farm(tmp_path, "add", m)
    assert nothing.returncode == 2
    assert "give FILE.crate…, --lock, --debian or --debian-binary" in nothing.stderr
    not_mirror = farm(tmp_path, "add", str(tmp_path), str(tmp_path / "serde.crate"))
    assert not_mirror.returncode == 2 and "farm mirror create" in not_mirror.stderr


def test_serve_prints_the_index_url_and_stops_on_sigterm(
    tmp_path: Path, real_crates: dict[str, bytes]
) -> None:
    (tmp_path / "fnv.crate").write_bytes(real_crates["fnv"])
    m = str(tmp_path / "m")
    farm(tmp_path, "create", m)
    farm(tmp_path, "add", m, str(tmp_path / "fnv.crate"))
    bad = farm(tmp_path, "serve", m, "--listen", "127.0.0.1")
    assert bad.returncode == 2 and "use HOST:PORT" in bad.stderr
    cmd = [sys.executable, "-m", "farm.cli", "mirror", "serve", m, "--listen", "127.0.0.1:0"]
    env = {"PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("sparse+http://127.0.0.1:") and url.endswith("/index/")
        base = url.removeprefix("sparse+")
        config = json.loads(urllib.request.urlopen(base + "config.json", timeout=30).read())
        dl = config["dl"].replace("{crate}", "fnv").replace("{version}", "1.0.7")
        assert urllib.request.urlopen(dl, timeout=30).read() == real_crates["fnv"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        proc.stdout.close()
        proc.stderr.close()
