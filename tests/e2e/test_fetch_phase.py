"""The fetch phase in a real local build (issue 12 item 1): a project whose Cargo.lock
names crates.io's serde 1.0.152 (its real checksum; bytes from Debian's orig tarball) and
a crate no image has, served by a registry on 127.0.0.1. ``farm build --registry`` fetches
and verifies them, the gVisor sandbox (no network) builds from the read-only /vendor, and
the signed provenance lists every crate with its checksum and registry. A fetch error
stops the build before any container exists."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.ecosystems.cargo.vendor import CRATES_IO_SOURCE
from tests.crates import make_crate, manifest
from tests.debcrates import SERDE_SHA256, serde_crate
from tests.gitrepo import bare_repo
from tests.registry import TestRegistry, serve

from .conftest import created, farm, farm_json

GREETING = make_crate(
    "greeting",
    "0.1.0",
    {
        "src/lib.rs": b'pub fn hello() -> &\'static str { "hello from /vendor" }\n',
        "Cargo.toml": manifest("greeting", "0.1.0"),
    },
)
MAIN = b"""use serde::Serialize;
#[allow(dead_code)]
fn check<T: Serialize>(_: &T) {}
fn main() {
    check(&1u32);
    println!("{}", greeting::hello());
}
"""


def _project(root: Path) -> Path:
    root.mkdir()
    (root / "src").mkdir()
    (root / "src" / "main.rs").write_bytes(MAIN)
    (root / "Cargo.toml").write_text(
        '[package]\nname = "fetched"\nversion = "0.1.0"\nedition = "2021"\n\n'
        '[dependencies]\nserde = "1.0"\ngreeting = "0.1"\n'
    )
    lock = 'version = 3\n\n[[package]]\nname = "fetched"\nversion = "0.1.0"\n'
    lock += 'dependencies = [\n "greeting",\n "serde",\n]\n'
    for name, version, checksum in (
        ("greeting", "0.1.0", hashlib.sha256(GREETING).hexdigest()),
        ("serde", "1.0.152", SERDE_SHA256),
    ):
        lock += (
            f'\n[[package]]\nname = "{name}"\nversion = "{version}"\n'
            f'source = "{CRATES_IO_SOURCE}"\nchecksum = "{checksum}"\n'
        )
    (root / "Cargo.lock").write_text(lock)
    return root


@pytest.fixture
def registry() -> Iterator[TestRegistry]:
    crates = {("serde", "1.0.152"): serde_crate(), ("greeting", "0.1.0"): GREETING}
    with serve(TestRegistry(crates=crates)) as reg:
        yield reg


def test_build_fetches_verifies_builds_and_attests(
    home: Path, tmp_path: Path, registry: TestRegistry
) -> None:
    src = _project(tmp_path / "fetched")
    code, out = farm_json(home, "build", str(src), "--registry", registry.index)
    assert code == 0, out
    assert [a["path"] for a in out["artifacts"]] == ["target/release/fetched"]
    assert "/crates/serde/serde-1.0.152.crate" in registry.requests
    envelope = tmp_path / "prov.json"
    assert farm(home, "provenance", out["id"], "--out", str(envelope)).returncode == 0
    statement = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    crates = {d["name"]: d for d in deps if d["uri"].startswith("pkg:cargo/")}
    assert set(crates) == {"serde", "greeting"}
    assert crates["serde"]["digest"] == {"sha256": SERDE_SHA256}
    assert crates["serde"]["uri"] == "pkg:cargo/serde@1.0.152"
    assert crates["serde"]["annotations"]["registryIndex"] == registry.index
    # The shared cache serves a second build without a download.
    registry.requests.clear()
    code, again = farm_json(home, "build", str(src), "--registry", registry.index, "--no-cache")
    assert code == 0, again
    assert registry.requests == []


def test_a_fetch_error_stops_the_build_before_any_container(
    home: Path, tmp_path: Path, registry: TestRegistry, client
) -> None:
    src = _project(tmp_path / "fetched")
    registry.crates[("serde", "1.0.152")] = make_crate("serde", "1.0.152")  # an impostor
    since = time.time()
    done = farm(home, "build", str(src), "--registry", registry.index)
    assert done.returncode == 1, done.stderr
    assert "serde 1.0.152: checksum mismatch (lock bb7d…" in done.stderr
    assert created(client, home, since) == []


def test_git_dependency_builds_from_the_vendor_dir(
    home: Path, tmp_path: Path, registry: TestRegistry
) -> None:
    lib = b'pub fn from_git() -> &\'static str { "hello from a git commit" }\n'
    bare, commit = bare_repo(
        tmp_path / "repo",
        {"Cargo.toml": manifest("gitdep", "0.2.0"), "src/lib.rs": lib},
    )
    registry.static["/git/gitdep.git/"] = bare
    url = f"http://127.0.0.1:{registry.port}/git/gitdep.git"
    src = _project(tmp_path / "fetched")
    (src / "src" / "main.rs").write_bytes(MAIN.replace(b"greeting::hello()", b"gitdep::from_git()"))
    with (src / "Cargo.toml").open("a") as fh:
        fh.write(f'gitdep = {{ git = "{url}", branch = "main" }}\n')
    lock = (src / "Cargo.lock").read_text().replace(' "greeting",\n', ' "gitdep",\n "greeting",\n')
    lock += (
        f'\n[[package]]\nname = "gitdep"\nversion = "0.2.0"\n'
        f'source = "git+{url}?branch=main#{commit}"\n'
    )
    (src / "Cargo.lock").write_text(lock)
    code, out = farm_json(
        home, "build", str(src), "--registry", registry.index, "--git-host", "127.0.0.1"
    )
    assert code == 0, out
    envelope = tmp_path / "prov.json"
    assert farm(home, "provenance", out["id"], "--out", str(envelope)).returncode == 0
    statement = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    [gitdep] = [d for d in deps if d["name"] == "gitdep"]
    assert gitdep["digest"] == {"gitCommit": commit}


def test_without_a_registry_a_missing_crate_says_to_use_one(home: Path, tmp_path: Path) -> None:
    """A new user's first real project, without --registry: the image has no greeting
    crate, cargo fails inside the sandbox, and farm says what to do about it."""
    src = _project(tmp_path / "fetched")
    done = farm(home, "build", str(src))
    assert done.returncode != 0
    assert "cargo found no crate greeting in the image" in done.stderr + done.stdout
    assert "--registry sparse+https://index.crates.io/" in done.stderr + done.stdout
