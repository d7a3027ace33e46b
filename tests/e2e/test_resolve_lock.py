"""farm.fetch.resolve in real gVisor with the image's own cargo: a lock is resolved against a
farm mirror (as a cargo local-registry), never against anything the tree names, and the
tree is never written. The crates are made by farm's own deterministic repack."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from farm.errors import LockfileError
from farm.fetch.resolve import resolve_lock
from farm.mirror.debian_binary import repack
from farm.mirror.store import Mirror
from farm.settings import Settings
from tests.registry import TestRegistry, serve

from .conftest import farm, farm_json

IMAGE = "farm/rust:bookworm"


def _crate(name: str, version: str, deps: str = "") -> bytes:
    manifest = f'[package]\nname = "{name}"\nversion = "{version}"\nedition = "2018"\n{deps}'
    return repack(
        f"{name}-{version}", {"Cargo.toml": (manifest.encode(), False), "src/lib.rs": (b"", False)}
    )


@pytest.fixture
def mirror(tmp_path: Path) -> Mirror:
    m = Mirror(tmp_path / "mirror").create()
    m.add_crate(_crate("leaf", "1.0.0"), "file")
    m.add_crate(_crate("leaf", "1.2.0"), "file")
    m.add_crate(_crate("leaf", "2.0.0"), "file")
    m.add_crate(_crate("mid", "0.3.1", '[dependencies]\nleaf = "1.0"\n'), "file")
    return m


def _project(root: Path, deps: str) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "Cargo.toml").write_text(
        f'[package]\nname = "app"\nversion = "0.1.0"\n\n[dependencies]\n{deps}'
    )
    (root / "src/main.rs").write_text("fn main() {}\n")
    return root


def test_lock_is_resolved_against_the_mirror_in_a_sandbox(
    home: Path, tmp_path: Path, mirror: Mirror
) -> None:
    src = _project(tmp_path / "app", 'mid = "0.3"\n')
    # The tenant's own cargo config would send cargo elsewhere; it never reaches the sandbox.
    (src / ".cargo").mkdir()
    (src / ".cargo/config.toml").write_text(
        '[source.crates-io]\nreplace-with = "x"\n[source.x]\ndirectory = "/"\n'
    )
    done = resolve_lock(src, mirror.path, settings=Settings.from_env({"FARM_HOME": str(home)}))
    locked = {(p.name, p.version): p.checksum for p in done.lockfile.packages}
    cksum = hashlib.sha256((mirror.path / "leaf-1.2.0.crate").read_bytes()).hexdigest()
    assert locked[("leaf", "1.2.0")] == cksum  # newest semver-compatible, the mirror's bytes
    assert ("mid", "0.3.1") in locked and ("app", "0.1.0") in locked
    assert not (src / "Cargo.lock").exists()  # the tree is read, never written
    assert done.resolution.mirror == str(mirror.path.resolve())
    assert "lock resolved by farm against mirror" in done.resolution.describe()
    assert not list((home / "work").iterdir())


def test_a_dependency_the_mirror_lacks_fails_with_cargos_reason(
    home: Path, tmp_path: Path, mirror: Mirror
) -> None:
    src = _project(tmp_path / "app", 'absent = "1"\n')
    with pytest.raises(
        LockfileError, match=r"(?s)no matching package named `absent`.*farm mirror add"
    ):
        resolve_lock(src, mirror.path, settings=Settings.from_env({"FARM_HOME": str(home)}))


def test_farm_build_resolve_lock_builds_and_says_so_in_provenance(
    home: Path, tmp_path: Path, mirror: Mirror
) -> None:
    src = _project(tmp_path / "app", 'mid = "0.3"\n')
    held = {
        (e.name, e.version): (mirror.path / f"{e.name}-{e.version}.crate").read_bytes()
        for e in mirror.entries()
    }
    with serve(TestRegistry(crates=held)) as registry:
        code, out = farm_json(
            home,
            "build",
            str(src),
            "--resolve-lock",
            str(mirror.path),
            "--registry",
            registry.index,
        )
    assert code == 0, out
    assert not (src / "Cargo.lock").exists()  # resolved into farm's snapshot, not the tree
    envelope = tmp_path / "prov.json"
    assert farm(home, "provenance", out["id"], "--out", str(envelope)).returncode == 0
    statement = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    note = deps["Cargo.lock"]["annotations"]["note"]
    assert note == f"lock resolved by farm against mirror {mirror.path.resolve()} (image {IMAGE})"
    leaf = hashlib.sha256(held[("leaf", "1.2.0")]).hexdigest()
    assert deps["leaf"]["digest"] == {"sha256": leaf}
