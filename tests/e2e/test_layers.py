"""Dependency layers for real (docs/layers.md): hello-serde's dependencies built alone in
gVisor, kept as a layer, mounted copy-on-write under a later build's target/ so only
the project's crate compiles; and a project build script that poisons a dependency's
rlib through the mount changes nothing the host keeps or the next build sees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from farm.layers.store import LayerStore, tree_digest
from farm.store import Store

from .conftest import EXAMPLES, farm, farm_json

#: A project build script that, when /src/attack exists, overwrites every serde_json
#: rlib it can reach in target/ (which, in a layered build, is the layer's overlay).
POISON = r"""
use std::fs;
fn main() {
    if !std::path::Path::new("attack").exists() {
        return;
    }
    for entry in fs::read_dir("/build/target/release/deps").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("libserde_json-") && name.ends_with(".rlib") {
            fs::write(&path, b"poisoned by the project's build script").unwrap();
            println!("cargo:warning=poisoned {}", name);
        }
    }
}
"""


def rlibs(tree: Path) -> dict[str, bytes]:
    deps = tree / "release" / "deps"
    return {p.name: p.read_bytes() for p in deps.glob("libserde_json-*.rlib")}


def test_a_poisoned_layer_mount_never_reaches_the_layer_or_the_next_build(
    home: Path, tmp_path: Path
) -> None:
    project = tmp_path / "proj"
    shutil.copytree(EXAMPLES / "hello-serde", project)
    (project / "build.rs").write_text(POISON)
    (project / "attack").write_text("1")

    code, attacked = farm_json(home, "build", str(project), "--layer")
    [layer] = LayerStore(home).all()
    assert attacked["layer"]["id"] == layer.id and attacked["layer"]["digest"] == layer.digest
    kept = rlibs(layer.tree)
    assert kept and all(not b.startswith(b"poisoned") for b in kept.values())
    log = farm(home, "logs", attacked["id"]).stdout
    assert "poisoned libserde_json-" in log  # the attack ran and hit the overlay
    assert code == 1  # rustc then read the poisoned rlib
    # From the host: the layer's files are exactly what was kept.
    assert tree_digest(layer.tree)[0] == layer.digest
    assert rlibs(layer.tree) == kept
    deps_build = Store(home).get(layer.built_by)
    assert deps_build.layer_kept is not None and deps_build.blocked_actions == []

    (project / "attack").unlink()
    code, after = farm_json(home, "build", str(project), "--layer")
    assert code == 0, after
    assert after["layer"]["id"] == layer.id  # the same layer, not a rebuilt one
    assert [x.key for x in LayerStore(home).all()] == [layer.key]
    log = farm(home, "logs", after["id"]).stdout
    assert "Compiling hello-serde" in log
    assert "Compiling serde" not in log and "Compiling regex" not in log  # from the layer

    # The layered result is cached for --layer builds only: a plain build builds cold.
    code, again = farm_json(home, "build", str(project), "--layer")
    assert code == 0 and again["id"] == after["id"], again  # served: the same record
    code, plain = farm_json(home, "build", str(project))
    assert code == 0 and plain["id"] != after["id"] and plain["layer"] is None, plain
    assert "Compiling serde" in farm(home, "logs", plain["id"]).stdout

    # Provenance names the layer, and a consumer that requires a cold build refuses it.
    prov = tmp_path / "prov.json"
    assert farm(home, "provenance", after["id"], "--out", str(prov)).returncode == 0
    assert farm(home, "artifacts", after["id"], "--dest", str(tmp_path / "a")).returncode == 0
    binary = tmp_path / "a" / "target/release/hello-serde"
    verified = farm(home, "verify", str(binary), "--provenance", str(prov))
    assert verified.returncode == 0, verified.stderr
    cold = farm(home, "verify", str(binary), "--provenance", str(prov), "--require", "cold")
    assert cold.returncode == 1 and f"dependency layer {layer.id}" in cold.stderr

    gc = farm(home, "gc", "--layers-max-count", "0")
    assert gc.returncode == 0 and "layers: dropped 1" in gc.stdout
    assert LayerStore(home).all() == [] and not layer.tree.exists()
    assert json.dumps(after)  # the record is plain JSON
