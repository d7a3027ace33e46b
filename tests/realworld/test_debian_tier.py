"""The Debian-derived tier against Debian's real archive (network; cached in
FARM_REALWORLD_CACHE): `farm mirror add --debian-binary`, the determinism of the repack
across runs, and the signature check that anchors it all. Marked realworld_ci: CI runs it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from farm.mirror.debarchive import DebianArchive, DebianArchiveError, Pinned
from farm.mirror.debian_binary import Closure, derive
from tests.realworld.programs import archive, cache_dir

pytestmark = [pytest.mark.realworld, pytest.mark.realworld_ci]


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(cache), "HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture(scope="session")
def warm() -> Path:
    """The shared download cache with bookworm's signed indexes (downloaded once)."""
    archive().index("bookworm", "Packages")
    archive().index("bookworm", "Sources")
    return cache_dir() / "debian"


@pytest.fixture
def xdg(tmp_path: Path, warm: Path) -> Path:
    """A copy of the shared download cache as the CLI's XDG cache (farm/debian below it)."""
    shutil.copytree(warm, tmp_path / "xdg" / "farm" / "debian")
    return tmp_path / "xdg"


def test_mirror_add_debian_binary_fills_the_closure_as_debian_derived(
    tmp_path: Path, xdg: Path
) -> None:
    mirror = tmp_path / "m"
    assert _cli("mirror", "create", str(mirror), cache=xdg).returncode == 0
    done = _cli(
        "mirror", "add", str(mirror), "--debian-binary", "hexyl/bookworm", "--json", cache=xdg
    )
    assert done.returncode == 0, done.stderr
    entries = {
        (r["entry"]["name"], r["entry"]["version"]): r["entry"] for r in json.loads(done.stdout)
    }
    hexyl = entries[("hexyl", "0.8.0")]
    assert hexyl["origin"] == "debian-derived:librust-hexyl-dev_0.8.0-2+b5_amd64.deb"
    assert ("clap", "2.34.0") in entries and ("libc", "0.2.139") in entries
    assert all(e["origin"].startswith("debian-derived:") for e in entries.values())
    # The repack is deterministic: a second mirror from the same .debs has the same bytes.
    again = tmp_path / "again"
    _cli("mirror", "create", str(again), cache=xdg)
    _cli("mirror", "add", str(again), "--debian-binary", "hexyl/bookworm", cache=xdg)
    assert (again / "hexyl-0.8.0.crate").read_bytes() == (mirror / "hexyl-0.8.0.crate").read_bytes()
    assert hashlib.sha256((mirror / "hexyl-0.8.0.crate").read_bytes()).hexdigest() == hexyl["cksum"]


def test_an_unknown_program_names_the_suite(tmp_path: Path, xdg: Path) -> None:
    mirror = tmp_path / "m"
    _cli("mirror", "create", str(mirror), cache=xdg)
    done = _cli(
        "mirror", "add", str(mirror), "--debian-binary", "no-such-program/bookworm", cache=xdg
    )
    assert done.returncode == 2
    assert "bookworm has neither librust-no-such-program-dev nor a source package" in done.stderr


def test_a_changed_inrelease_or_deb_is_refused(tmp_path: Path, warm: Path) -> None:
    cache = tmp_path / "debian"
    shutil.copytree(warm / "dists", cache / "dists")
    archive = DebianArchive(cache)
    stanza = Closure(archive, "bookworm").packages["librust-hexyl-dev"]
    # A .deb whose bytes differ from the signed Packages index is refused, even from cache.
    deb = cache / stanza["Filename"]
    deb.parent.mkdir(parents=True)
    deb.write_bytes(b"!<arch>\n" + b"\0" * int(stanza["Size"]))
    (good,) = derive(archive, stanza)  # the cached bytes are wrong: downloaded again, checked
    assert good.name == "hexyl"
    assert hashlib.sha256(deb.read_bytes()).hexdigest() == stanza["SHA256"]
    # Bytes the archive serves that differ from what the index pins are never used.
    with pytest.raises(DebianArchiveError, match="does not match the signed index"):
        archive.fetch(Pinned(stanza["Filename"], int(stanza["Size"]), "0" * 64))
    # One changed byte in the signed text of InRelease: gpgv refuses it, nothing is parsed.
    release = cache / "dists/bookworm/InRelease"
    text = release.read_bytes()
    release.write_bytes(text.replace(b"Codename: bookworm", b"Codename: bookwork", 1))
    with pytest.raises(DebianArchiveError, match="InRelease is not signed by a key"):
        DebianArchive(cache).release("bookworm")
