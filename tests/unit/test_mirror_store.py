"""The mirror's write API (farm.mirror.store) and the index lines it derives
(farm.mirror.indexline), with real .crate archives built here: every dependency form of
a normalized Cargo.toml, crates.io's features/features2 split, the on-disk layout that is
both a sparse index and a cargo local-registry, and the refusals (a changed checksum for a
held version, another spelling of a held name, a malformed crate, a bad origin)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from farm.errors import MirrorError
from farm.mirror.layout import crate_filename, index_relpath
from farm.mirror.store import Mirror
from tests.crates import make_crate, manifest

RICH = """
rust-version = "1.56"
links = "z"

[dependencies.serde]
version = "1.0"
features = ["derive"]
default-features = false

[dependencies.rand_core]
version = ">= 0.5,  < 0.7"
optional = true
package = "rand-core"

[dependencies.other]
version = "=2.0.0"
registry-index = "https://example.invalid/index"

[build-dependencies.cc]
version = "1.0.3"

[dev-dependencies.tempfile]
version = "3"

[dev-dependencies.local-only]
path = "../local-only"

[target."cfg(unix)".dependencies.libc]
version = "0.2"

[features]
default = ["std"]
std = []
rng = ["dep:rand_core"]
weak = ["serde?/std"]
"""


def _line(mirror: Mirror, name: str) -> list[dict]:
    return [json.loads(t) for t in mirror.index_path(name).read_text().splitlines()]


def test_index_paths_follow_cargo_layout() -> None:
    assert index_relpath("a") == "1/a"
    assert index_relpath("ab") == "2/ab"
    assert index_relpath("Abc") == "3/a/abc"
    assert index_relpath("Serde_Json") == "se/rd/serde_json"
    for bad in ("", "../x", "a/b", "x\x00", ".hidden", "-x", "1abc", "a" * 65):
        with pytest.raises(MirrorError):
            index_relpath(bad)
    for bad_version in ("1.0", "../1.0.0", "1.0.0/x", "1.0.0\x00"):
        with pytest.raises(MirrorError):
            crate_filename("x", bad_version)


def test_index_line_has_every_dependency_form(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    data = make_crate("rich", "0.3.0", {"Cargo.toml": manifest("rich", "0.3.0", RICH)})
    entry = mirror.add_crate(data, "file")
    (line,) = _line(mirror, "rich")
    assert line["name"] == "rich" and line["vers"] == "0.3.0" and line["yanked"] is False
    assert line["cksum"] == entry.cksum == hashlib.sha256(data).hexdigest()
    assert line["links"] == "z" and line["rust_version"] == "1.56"
    assert line["features"] == {"default": ["std"], "std": []}
    assert line["features2"] == {"rng": ["dep:rand_core"], "weak": ["serde?/std"]}
    assert line["v"] == 2
    deps = {(d["name"], d["kind"]): d for d in line["deps"]}
    assert set(deps) == {
        ("serde", "normal"),
        ("rand_core", "normal"),
        ("other", "normal"),
        ("cc", "build"),
        ("tempfile", "dev"),
        ("libc", "normal"),
    }  # the path-only dev-dependency is dropped, as cargo publish drops it
    assert deps["serde", "normal"] == {
        "name": "serde",
        "req": "^1.0",
        "features": ["derive"],
        "optional": False,
        "default_features": False,
        "target": None,
        "kind": "normal",
    }
    assert deps["rand_core", "normal"]["package"] == "rand-core"
    assert deps["rand_core", "normal"]["optional"] is True
    assert deps["rand_core", "normal"]["req"] == ">=0.5, <0.7"
    assert deps["other", "normal"]["registry"] == "https://example.invalid/index"
    assert deps["other", "normal"]["req"] == "=2.0.0"
    assert deps["libc", "normal"]["target"] == "cfg(unix)"
    assert deps["cc", "build"]["req"] == "^1.0.3"


def test_plain_crate_has_no_features2_and_no_v(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    mirror.add_crate(make_crate("plain", "1.0.0"), "file")
    (line,) = _line(mirror, "plain")
    assert "features2" not in line and "v" not in line and "links" not in line
    assert line["deps"] == [] and line["features"] == {}


def test_add_crate_writes_a_local_registry_layout(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    one, two = make_crate("demo", "0.1.0"), make_crate("demo", "0.2.0")
    mirror.add_crate(one, "file")
    mirror.add_crate(two, "crates.io")
    assert (tmp_path / "m" / "demo-0.1.0.crate").read_bytes() == one
    assert (tmp_path / "m" / "demo-0.2.0.crate").read_bytes() == two
    assert [x["vers"] for x in _line(mirror, "demo")] == ["0.1.0", "0.2.0"]
    assert (tmp_path / "m" / "index" / "de" / "mo" / "demo").is_file()
    assert [(e.version, e.origin) for e in mirror.entries()] == [
        ("0.1.0", "file"),
        ("0.2.0", "crates.io"),
    ]
    held = json.loads((tmp_path / "m" / "farm-mirror.json").read_text())
    assert held["crates"][0]["cksum"] == hashlib.sha256(one).hexdigest()
    assert not list((tmp_path / "m").glob(".tmp-*"))


def test_same_bytes_again_is_a_no_op(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    data = make_crate("demo", "0.1.0")
    first = mirror.add_crate(data, "crates.io")
    assert mirror.add_crate(data, "file") == first
    assert mirror.add_crate(data, "debian-source:rust-demo_0.1.0-1") == first
    assert len(_line(mirror, "demo")) == 1 and mirror.entries() == [first]


def test_same_bytes_from_a_checked_source_replace_a_file_origin(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    data = make_crate("demo", "0.1.0")
    mirror.add_crate(data, "file")
    checked = mirror.add_crate(data, "debian-source:rust-demo_0.1.0-1")
    assert mirror.entries() == [checked] and checked.origin.startswith("debian-source:")
    assert len(_line(mirror, "demo")) == 1


def test_different_cksum_for_a_held_version_is_refused(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    original = make_crate("demo", "0.1.0")
    mirror.add_crate(original, "file")
    before = mirror.index_path("demo").read_bytes()
    other = make_crate("demo", "0.1.0", {"src/lib.rs": b"pub fn evil() {}\n"})
    with pytest.raises(MirrorError, match=r"demo 0\.1\.0: the mirror already holds"):
        mirror.add_crate(other, "file")
    # build metadata does not make a new version either (crates.io refuses it too)
    meta = make_crate("demo", "0.1.0+x", {"src/lib.rs": b"pub fn evil() {}\n"})
    with pytest.raises(MirrorError, match=r"already holds 0\.1\.0 "):
        mirror.add_crate(meta, "file")
    assert (tmp_path / "m" / "demo-0.1.0.crate").read_bytes() == original
    assert mirror.index_path("demo").read_bytes() == before


def test_another_spelling_of_a_held_name_is_refused(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "m").create()
    mirror.add_crate(make_crate("foo_bar", "1.0.0"), "file")
    for spelling in ("foo-bar", "Foo_Bar"):
        with pytest.raises(MirrorError, match="holds this crate as 'foo_bar'"):
            mirror.add_crate(make_crate(spelling, "2.0.0"), "file")


@pytest.mark.parametrize(
    "data",
    [
        b"not a gzip",
        make_crate("demo", "0.1.0", with_manifest=False),
        make_crate("demo", "0.1.0", {"Cargo.toml": manifest("other", "0.1.0")}),
        make_crate(
            "demo", "0.1.0", {"Cargo.toml": manifest("demo", "0.1.0", "[dependencies]\nx = 5\n")}
        ),
        make_crate(
            "demo",
            "0.1.0",
            {"Cargo.toml": manifest("demo", "0.1.0", '[dependencies.x]\npath = "x"\n')},
        ),
        make_crate(
            "demo",
            "0.1.0",
            {"Cargo.toml": manifest("demo", "0.1.0", '[dependencies]\nx = "1; rm"\n')},
        ),
        make_crate(
            "demo",
            "0.1.0",
            {"Cargo.toml": manifest("demo", "0.1.0", '[dependencies]\n"../x" = "1"\n')},
        ),
    ],
    ids=[
        "not-gzip",
        "no-manifest",
        "wrong-top",
        "dep-int",
        "dep-path-only",
        "bad-req",
        "bad-dep-name",
    ],
)
def test_malformed_crates_are_refused_and_nothing_is_written(tmp_path: Path, data: bytes) -> None:
    mirror = Mirror(tmp_path / "m").create()
    with pytest.raises(MirrorError):
        mirror.add_crate(data, "file")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        ".farm-mirror.lock",
        "farm-mirror.json",
        "index",
    ]
    assert not any((tmp_path / "m" / "index").iterdir())


@pytest.mark.parametrize("origin", ["", "upstream", "debian-source:../x", "file\n"])
def test_bad_origin_is_refused(tmp_path: Path, origin: str) -> None:
    mirror = Mirror(tmp_path / "m").create()
    with pytest.raises(MirrorError, match="origin"):
        mirror.add_crate(make_crate("demo", "0.1.0"), origin)


def test_create_refuses_a_non_empty_directory_and_add_needs_a_mirror(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "Cargo.toml").write_text("")
    with pytest.raises(MirrorError, match="not empty and not a farm mirror"):
        Mirror(tmp_path / "project").create()
    with pytest.raises(MirrorError, match="farm mirror create"):
        Mirror(tmp_path / "project").add_crate(make_crate("demo", "0.1.0"), "file")
    mirror = Mirror(tmp_path / "m").create()
    mirror.add_crate(make_crate("demo", "0.1.0"), "file")
    assert Mirror(tmp_path / "m").create().entries() == mirror.entries()  # idempotent


def test_real_serde_line(tmp_path: Path, real_crates: dict[str, bytes]) -> None:
    """crates.io's serde 1.0.152 (Debian's orig tarball): its dependencies and features as
    crates.io lists them; tests/e2e/test_mirror_cargo.py has cargo itself read it."""
    mirror = Mirror(tmp_path / "m").create()
    mirror.add_crate(real_crates["serde"], "debian-source:rust-serde_1.0.152-2")
    (line,) = _line(mirror, "serde")
    derive = {"name": "serde_derive", "features": [], "default_features": True, "target": None}
    assert line == {
        "name": "serde",
        "vers": "1.0.152",
        "deps": [
            {**derive, "req": "=1.0.152", "optional": True, "kind": "normal"},
            {**derive, "req": "^1.0", "optional": False, "kind": "dev"},
        ],
        "cksum": "bb7d1f0d3021d347a83e556fc4683dea2ea09d87bccdf88ff5c12545d89d5efb",
        "features": {
            "alloc": [],
            "default": ["std"],
            "derive": ["serde_derive"],
            "rc": [],
            "std": [],
            "unstable": [],
        },
        "yanked": False,
        "rust_version": "1.13",
    }
    # cfg-if 1.0.4 renames a dependency (core = rustc-std-workspace-core)
    mirror.add_crate(real_crates["cfg-if"], "debian-source:rust-cfg-if_1.0.4-1")
    (cfg_if,) = _line(mirror, "cfg-if")
    assert cfg_if["deps"][0]["name"] == "core"
    assert cfg_if["deps"][0]["package"] == "rustc-std-workspace-core"
