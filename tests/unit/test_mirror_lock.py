"""``farm mirror add --lock Cargo.lock --registry URL`` (farm.mirror.fill.add_lock): real
crates.io crates downloaded over real HTTP from another farm mirror on 127.0.0.1 (through
the fetch phase's RegistryClient) are added once their sha256 equals the lock's checksum;
an impostor with the lock's name and version is refused and nothing is added; path and
git packages are skipped, a package the registry lacks is reported missing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.errors import MirrorError
from farm.fetch.registry import Registry, RegistryClient
from farm.mirror.fill import add_lock
from farm.mirror.serve import MirrorServer
from farm.mirror.store import Mirror
from tests.crates import make_crate
from tests.realcrates import REAL_CRATES

ROOT = Path(__file__).resolve().parents[2]
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def lock(*names: str) -> str:
    text = 'version = 3\n\n[[package]]\nname = "app"\nversion = "0.1.0"\n'
    text += "dependencies = [\n" + "".join(f' "{n}",\n' for n in names) + "]\n"
    for name in names:
        c = REAL_CRATES[name]
        text += f'\n[[package]]\nname = "{c.name}"\nversion = "{c.version}"\n'
        text += f'source = "{CRATES_IO}"\nchecksum = "{c.cksum}"\n'
    text += '\n[[package]]\nname = "gitdep"\nversion = "0.1.0"\n'
    text += (
        'source = "git+https://example.invalid/g?rev=1#0123456789abcdef0123456789abcdef01234567"\n'
    )
    return text


@pytest.fixture
def upstream(tmp_path: Path, real_crates: dict[str, bytes]) -> Iterator[MirrorServer]:
    mirror = Mirror(tmp_path / "upstream").create()
    for name in ("serde", "fnv"):
        mirror.add_crate(real_crates[name], REAL_CRATES[name].origin)
    server = MirrorServer(mirror).start()
    yield server
    server.shutdown()
    server.server_close()


def client(server: MirrorServer) -> RegistryClient:
    return RegistryClient(Registry(name="upstream", index=server.index_url))


def test_lock_fill_adds_verified_crates(tmp_path: Path, upstream: MirrorServer) -> None:
    mirror = Mirror(tmp_path / "m").create()
    results = add_lock(mirror, lock("serde", "fnv", "hex"), client(upstream))
    status = {r.item: r.status for r in results}
    assert status == {
        "app 0.1.0": "skipped",
        "serde 1.0.152": "added",
        "fnv 1.0.7": "added",
        "hex 0.4.3": "missing",
        "gitdep 0.1.0": "skipped",
    }
    assert {(e.name, e.cksum, e.origin) for e in mirror.entries()} == {
        ("serde", REAL_CRATES["serde"].cksum, "crates.io"),
        ("fnv", REAL_CRATES["fnv"].cksum, "crates.io"),
    }
    # a second run downloads nothing new and changes nothing
    before = upstream.mirror.entries()
    again = add_lock(mirror, lock("serde", "fnv"), client(upstream))
    assert [r.note for r in again if r.status == "added"] == ["held", "held"]
    assert upstream.mirror.entries() == before


def test_an_impostor_is_refused(tmp_path: Path) -> None:
    bad = Mirror(tmp_path / "bad").create()
    bad.add_crate(make_crate("serde", "1.0.152"), "file")  # right name and version, wrong bytes
    server = MirrorServer(bad).start()
    try:
        mirror = Mirror(tmp_path / "m").create()
        with pytest.raises(
            MirrorError, match=r"serde 1\.0\.152: checksum mismatch \(lock bb7d1f0d"
        ):
            add_lock(mirror, lock("serde"), client(server))
        assert mirror.entries() == [] and not list(mirror.path.glob("*.crate"))
    finally:
        server.shutdown()
        server.server_close()


def test_cli_lock_fill(tmp_path: Path, upstream: MirrorServer) -> None:
    (tmp_path / "Cargo.lock").write_text(lock("serde"))

    def farm(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "farm.cli", "mirror", *args]
        env = {"PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)

    farm("create", str(tmp_path / "m"))
    no_registry = farm("add", str(tmp_path / "m"), "--lock", str(tmp_path / "Cargo.lock"))
    assert no_registry.returncode == 2 and "--lock and --registry go together" in no_registry.stderr
    args = ["--lock", str(tmp_path / "Cargo.lock"), "--registry", upstream.index_url]
    done = farm("add", str(tmp_path / "m"), *args)
    assert done.returncode == 0, done.stderr
    assert f"added    serde 1.0.152  {REAL_CRATES['serde'].cksum[:16]}…  crates.io" in done.stdout
    strict = farm("add", str(tmp_path / "m"), *args, "--strict")  # the root and git: skipped
    assert strict.returncode == 2
