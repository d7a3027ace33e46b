"""Dependency layers without Docker: the skeleton farm writes from parsed manifests, the
layer store (tenant-scoped, digest re-checked, bounded by gc), the rule that only a
clean observed build becomes a layer, which builds may use one, and `verify --require
cold`. The end-to-end proof is tests/e2e/test_layers.py."""

from __future__ import annotations

import os
import shutil
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from farm.buildflow import layered
from farm.ecosystems import NoLayer
from farm.ecosystems.cargo import skeleton
from farm.ecosystems.cargo.defaults import DEFAULT_ARGV
from farm.ecosystems.cargo.skeleton import dependency_argv
from farm.errors import VerificationError
from farm.layers import overlay
from farm.layers.flow import keep_if_clean
from farm.layers.store import LayerStore, tree_digest
from farm.provenance import attest
from farm.records import Artifact, BuildRecord, LayerUse, ObservationSummary, Status
from farm.signing import load_or_create_key
from farm.spec import build_spec
from farm.store import Store
from farm.verify import verify
from farm.workdisk import release

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello-serde"


def project(tmp_path: Path, manifest: str, files: dict[str, str] | None = None) -> Path:
    root = tmp_path / "proj"
    root.mkdir(parents=True)
    (root / "Cargo.toml").write_text(manifest)
    (root / "Cargo.lock").write_text("version = 3\n")
    for rel, text in (files or {"src/main.rs": "fn main() { secret() }"}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_skeleton_keeps_dependencies_features_profile_and_lock_but_no_code() -> None:
    files = skeleton.plan(HELLO)
    assert sorted(files) == ["Cargo.lock", "Cargo.toml", "src/main.rs"]
    original = tomllib.loads((HELLO / "Cargo.toml").read_text())
    written = tomllib.loads(files["Cargo.toml"].decode())
    for table in ("dependencies", "profile"):
        assert written[table] == original[table]
    assert written["package"]["name"] == "hello-serde" and "description" not in written["package"]
    assert files["Cargo.lock"] == (HELLO / "Cargo.lock").read_bytes()
    assert files["src/main.rs"] == skeleton.MAIN_STUB
    clean = "cargo clean --release --locked --offline -p hello-serde"
    assert dependency_argv(files, DEFAULT_ARGV)[-1].endswith(clean)


def test_only_dependency_sections_change_the_skeleton(tmp_path: Path) -> None:
    base = '[package]\nname = "p"\nversion = "0.1.0"\n[dependencies]\nserde = "1"\n'
    one = skeleton.plan(project(tmp_path / "a", base + "", None))
    described = base.replace('version = "0.1.0"', 'version = "0.1.0"\ndescription = "x"')
    assert skeleton.plan(project(tmp_path / "b", described)) == one
    featured = base + '[features]\nfast = ["serde/std"]\n'
    assert skeleton.plan(project(tmp_path / "c", featured)) != one
    code = {"src/main.rs": "fn main() { other() }"}
    assert skeleton.plan(project(tmp_path / "d", base, code)) == one  # own code is not key


def test_a_workspace_gets_stubs_per_member_and_a_build_script_stub(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        '[workspace]\nmembers = ["crates/*"]\n',
        {
            "crates/a/Cargo.toml": '[package]\nname = "a"\nversion = "0.1.0"\n'
            '[dependencies]\nb = { path = "../b" }\n',
            "crates/a/src/main.rs": "fn main() {}",
            "crates/a/build.rs": "fn main() { evil() }",
            "crates/b/Cargo.toml": '[package]\nname = "b"\nversion = "0.1.0"\n'
            "[lib]\nproc-macro = true\n",
            "crates/b/src/lib.rs": "pub fn real() {}",
        },
    )
    files = skeleton.plan(root)
    assert files["crates/a/build.rs"] == skeleton.MAIN_STUB
    assert files["crates/b/src/lib.rs"] == skeleton.LIB_STUB
    b = tomllib.loads(files["crates/b/Cargo.toml"].decode())
    assert b["lib"] == {"proc-macro": True, "path": "src/lib.rs"}
    workspace = tomllib.loads(files["Cargo.toml"].decode())["workspace"]
    assert workspace["members"] == ["crates/a", "crates/b"]
    assert sorted(skeleton.local_packages(files)) == ["a", "b"]


def test_what_the_skeleton_cannot_hold_means_no_layer(tmp_path: Path) -> None:
    outside = '[package]\nname = "p"\nversion = "0.1.0"\n[dependencies]\nq = { path = "../q" }\n'
    with pytest.raises(NoLayer, match="not a workspace member"):
        skeleton.plan(project(tmp_path / "a", outside))
    linked = project(tmp_path / "b", '[package]\nname = "p"\nversion = "0.1.0"\n')
    (linked / "Cargo.toml").unlink()
    (linked / "Cargo.toml").symlink_to(HELLO / "Cargo.toml")
    with pytest.raises(NoLayer, match="links are not followed"):
        skeleton.plan(linked)
    unlocked = project(tmp_path / "c", '[package]\nname = "p"\nversion = "0.1.0"\n')
    (unlocked / "Cargo.lock").unlink()
    with pytest.raises(NoLayer, match="no Cargo"):
        skeleton.plan(unlocked)


def target_tree(tmp_path: Path) -> Path:
    target = tmp_path / "target"
    deps = target / "release" / "deps"
    deps.mkdir(parents=True)
    (deps / "libserde-1.rlib").write_bytes(b"rlib")
    os.link(deps / "libserde-1.rlib", target / "release" / "libserde.rlib")
    (target / "release" / "link").symlink_to("/etc/passwd")  # kept as a link, never read
    return target


def clean_record(build_id: str = "20261205-000000-aaaaaa") -> BuildRecord:
    return BuildRecord(
        id=build_id,
        status=Status.SUCCEEDED,
        exit_code=0,
        tenant="t1",
        image="farm/rust:bookworm",
        runtime="runsc-observed",
        spec={},
        created_at=datetime.now(UTC),
        observation=ObservationSummary(mode="enforce", events=10),
    )


def test_a_layer_is_kept_for_its_tenant_only_and_checked_before_use(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "home")
    layer = keep_if_clean(store, "sha256:" + "1" * 64, "t1", clean_record(), target_tree(tmp_path))
    assert layer is not None and layer.files == 3
    assert (layer.tree / "release" / "link").is_symlink()
    assert os.stat(layer.tree / "release" / "libserde.rlib").st_nlink == 2
    assert store.find(layer.key, "t1") == layer
    assert store.find(layer.key, "t2") is None  # never across tenants
    assert store.intact(layer)
    (layer.tree / "release" / "deps" / "libserde-1.rlib").write_bytes(b"poison")
    assert not store.intact(layer)  # altered on the host: removed, never mounted
    assert store.find(layer.key, "t1") is None and not layer.tree.exists()


@pytest.mark.parametrize(
    "change",
    [
        {"status": Status.FAILED, "exit_code": 101},
        {"blocked_actions": [{"kind": "network", "target": "127.0.0.1:9"}]},
        {"observation": None},
        {"observation": ObservationSummary(mode="enforce", events=10, dropped=3)},
        {"insecure_runtime": True, "runtime": "runc"},
    ],
)
def test_only_a_clean_complete_observed_build_becomes_a_layer(tmp_path: Path, change) -> None:
    store = LayerStore(tmp_path / "home")
    record = clean_record().model_copy(update=change)
    assert keep_if_clean(store, "sha256:" + "2" * 64, "t1", record, target_tree(tmp_path)) is None
    assert store.all() == [] and "dependency layer not kept" in record.notes[-1]


def test_gc_bounds_layers_by_count_and_size(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "home")
    target = target_tree(tmp_path)
    keys = ["sha256:" + str(i) * 64 for i in range(3)]
    for i, key in enumerate(keys):
        keep_if_clean(store, key, "t1", clean_record(f"20261205-00000{i}-aaaaaa"), target)
        os.utime(store.root / key.removeprefix("sha256:") / "meta.json", (i, i))
    assert store.prune(max_bytes=1 << 30, max_count=2) == (1, 4)  # a hard link counts once
    assert [x.key for x in store.all()] == [keys[2], keys[1]]  # least recently used went
    assert store.prune(max_bytes=4, max_count=10) == (1, 4)
    assert [x.key for x in store.all()] == [keys[2]]
    shutil.rmtree(target)


def test_check_runs_and_no_cache_are_always_cold() -> None:
    assert layered(check_runs=0, use_cache=True, use_layer=True)
    assert not layered(check_runs=2, use_cache=True, use_layer=True)
    assert not layered(check_runs=0, use_cache=False, use_layer=True)
    assert not layered(check_runs=0, use_cache=True, use_layer=False)


def test_provenance_names_the_layer_and_verify_require_cold_refuses_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store(home)
    artifact = tmp_path / "bin"
    artifact.write_bytes(b"\x7fELF")
    sha, size = store.put_file(artifact)
    spec = build_spec({"source": str(HELLO), "source_date_epoch": 1_700_000_000})
    public = load_or_create_key(home).public_key()
    for layer in (None, LayerUse(id="abc", key="sha256:k", digest="sha256:d", built_by="b0")):
        record = clean_record().model_copy(
            update={
                "spec": spec.model_dump(mode="json"),
                "finished_at": datetime.now(UTC),
                "artifacts": [Artifact(path="target/release/bin", sha256=sha, size=size)],
                "layer": layer,
            }
        )
        envelope = tmp_path / "prov.json"
        envelope.write_bytes(store.blob_path(attest(record, spec, store, home)).read_bytes())
        if layer is None:
            assert verify(artifact, envelope, public, ["cold"])[-1].startswith("requirement cold")
        else:
            assert verify(artifact, envelope, public, [])  # a layered build still verifies
            with pytest.raises(VerificationError, match=r"dependency layer abc \(sha256:d\)"):
                verify(artifact, envelope, public, ["cold"])


def test_the_digest_sees_modes_links_and_content(tmp_path: Path) -> None:
    target = target_tree(tmp_path)
    first = tree_digest(target)
    os.chmod(target / "release" / "deps" / "libserde-1.rlib", 0o755)
    assert tree_digest(target)[0] != first[0]


def test_a_second_dependency_build_of_the_same_key_keeps_the_first(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "home")
    key = "sha256:" + "3" * 64
    first = keep_if_clean(store, key, "t1", clean_record("b1"), target_tree(tmp_path))
    (tmp_path / "target" / "release" / "deps" / "libserde-1.rlib").write_bytes(b"other")
    second = keep_if_clean(store, key, "t1", clean_record("b2"), tmp_path / "target")
    assert first == second and store.intact(first)  # a mounted lower is never replaced
    assert [p.name for p in store.root.iterdir()] == [key.removeprefix("sha256:")]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting an overlay needs root")
def test_gc_leaves_a_layer_a_running_build_has_mounted(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "home")
    layer = keep_if_clean(store, "sha256:" + "4" * 64, "t1", clean_record(), target_tree(tmp_path))
    assert layer is not None
    disk, merged = tmp_path / "disk", tmp_path / "merged"
    disk.mkdir()
    merged.mkdir()
    overlay.mount(layer.tree, disk, merged)
    try:
        (merged / "release" / "deps" / "libserde-1.rlib").write_bytes(b"poison")
        assert store.prune(max_bytes=0, max_count=0) == (0, 0)
    finally:
        release(merged)
    assert store.intact(layer)  # the write went to the upper dir
    assert (disk / "layer-upper" / "release" / "deps" / "libserde-1.rlib").read_bytes() == b"poison"
    assert store.prune(max_bytes=0, max_count=0) == (1, 4)
