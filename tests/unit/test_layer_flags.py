"""Dependency layers for a cargo build with selection flags (docs/layers.md): farm's
default command plus --features, --no-default-features, --all-features, --bin, --bins,
-p/--package, --workspace; the dependency build runs the same selection on a skeleton
whose binaries keep their names; anything else gets no layer, with a note naming the
flag. The corpus's own commands (tests/realworld/programs.py) are the examples."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest

from farm.ecosystems import NoLayer
from farm.ecosystems.cargo import buildflags, skeleton
from farm.ecosystems.cargo.defaults import DEFAULT_ARGV
from farm.layers.flow import build_with_layer
from farm.records import BuildRecord
from farm.settings import Settings
from farm.spec import build_spec
from tests.unit.test_layers import clean_record, project

EXA = '[package]\nname = "exa"\nversion = "0.10.1"\n[[bin]]\nname = "exa"\n'
RIPGREP = (
    '[package]\nname = "ripgrep"\nversion = "13.0.0"\nbuild = "build.rs"\n'
    '[[bin]]\nname = "rg"\npath = "crates/core/main.rs"\nbench = false\n'
    '[[bin]]\nname = "extra"\npath = "src/extra.rs"\nrequired-features = ["x"]\n'
    "[features]\nx = []\n"
)


def script(argv: list[str]) -> str:
    assert argv[:2] == ["sh", "-c"]
    return argv[2]


@pytest.mark.parametrize(
    ("extra", "repeated"),
    [
        ([], []),
        (["--no-default-features"], ["--no-default-features"]),
        (["--bin", "exa", "--no-default-features"], ["--bin", "exa", "--no-default-features"]),
        (
            ["--bin=exa", "--features", "git,vendored-openssl", "--all-features"],
            ["--bin", "exa", "--features", "git,vendored-openssl", "--all-features"],
        ),
        (["-F", "dep/feat dep?/x"], ["-F", "dep/feat dep?/x"]),
        (["-p", "exa", "--bins", "--workspace"], ["-p", "exa", "--bins", "--workspace"]),
        (["--package=exa"], ["--package", "exa"]),
    ],
)
def test_selection_flags_are_served_and_repeated_in_the_dependency_build(
    tmp_path: Path, extra: list[str], repeated: list[str]
) -> None:
    files = skeleton.plan(project(tmp_path, EXA))
    argv = skeleton.dependency_argv(files, [*DEFAULT_ARGV, *extra])
    build = script(argv).split(" && ")[0]
    assert shlex.split(build) == [*DEFAULT_ARGV, *repeated]
    assert script(argv).endswith("cargo clean --release --locked --offline -p exa")


def test_required_flags_may_come_in_any_order_and_are_normalised(tmp_path: Path) -> None:
    files = skeleton.plan(project(tmp_path, EXA))
    argv = ["cargo", "build", "--offline", "--bin", "exa", "--locked", "--release"]
    build = script(skeleton.dependency_argv(files, argv)).split(" && ")[0]
    assert shlex.split(build) == [*DEFAULT_ARGV, "--bin", "exa"]


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["cargo", "test", "--release", "--locked", "--offline"], "this build runs 'cargo test'"),
        (["make"], "this build runs 'make'"),
        (["cargo", "build", "--release", "--locked"], "lacks --offline"),
        (["cargo", "build", "--locked", "--offline"], "lacks --release"),
        ([*DEFAULT_ARGV, "--target", "x86_64-unknown-linux-musl"], "'--target'"),
        ([*DEFAULT_ARGV, "--target-dir", "/tmp/t"], "'--target-dir'"),
        ([*DEFAULT_ARGV, "--profile", "dev"], "'--profile'"),
        ([*DEFAULT_ARGV, "--config", "build.rustflags=['-Cx']"], "'--config'"),
        ([*DEFAULT_ARGV, "-Zbuild-std"], "'-Zbuild-std'"),
        ([*DEFAULT_ARGV, "--manifest-path", "x/Cargo.toml"], "'--manifest-path'"),
        ([*DEFAULT_ARGV, "-pexa"], "'-pexa'"),
        ([*DEFAULT_ARGV, "-F=x"], "'-F=x'"),
        ([*DEFAULT_ARGV, "--bin"], "has no value"),
        ([*DEFAULT_ARGV, "--bin", "--target"], "plain bin names"),
        ([*DEFAULT_ARGV, "--features", "--target=x"], "plain features names"),
        ([*DEFAULT_ARGV, "-p", "exa@0.10.1"], "plain package names"),
        ([*DEFAULT_ARGV, "--bin", "a;b"], "plain bin names"),
        ([*DEFAULT_ARGV, "--features", "x$(id)"], "plain features names"),
        ([*DEFAULT_ARGV, *(["--bins"] * 70)], "more than 64"),
    ],
)
def test_anything_else_gets_no_layer_and_says_why(argv: list[str], why: str) -> None:
    with pytest.raises(NoLayer, match=None) as raised:
        buildflags.parse(argv)
    assert why in str(raised.value)


def test_binaries_keep_their_names_so_bin_selects_the_same_target(tmp_path: Path) -> None:
    root = project(tmp_path, RIPGREP, {"crates/core/main.rs": "fn main() {}", "build.rs": ""})
    files = skeleton.plan(root)
    manifest = tomllib.loads(files["Cargo.toml"].decode())
    assert manifest["bin"] == [
        {"name": "rg", "path": "src/main.rs"},
        {"name": "extra", "required-features": ["x"], "path": "src/bin/farm-stub-1.rs"},
    ]
    assert files["src/main.rs"] == files["src/bin/farm-stub-1.rs"] == skeleton.MAIN_STUB
    assert skeleton.bin_names(files) == {"rg", "extra"}
    argv = skeleton.dependency_argv(files, [*DEFAULT_ARGV, "--bin", "rg"])
    assert script(argv).startswith("cargo build --release --locked --offline --bin rg && ")
    with pytest.raises(NoLayer, match="--bin ripgrep: not a"):
        skeleton.dependency_argv(files, [*DEFAULT_ARGV, "--bin", "ripgrep"])
    with pytest.raises(NoLayer, match="-p grep: not a package of this project"):
        skeleton.dependency_argv(files, [*DEFAULT_ARGV, "-p", "grep"])


def test_src_main_is_the_packages_binary_unless_a_bin_claims_it(tmp_path: Path) -> None:
    plain = skeleton.plan(project(tmp_path / "a", '[package]\nname = "p"\nversion = "1.0.0"\n'))
    assert skeleton.bin_names(plain) == {"p"}
    claimed = '[package]\nname = "p"\nversion = "1.0.0"\n[[bin]]\nname = "q"\n'
    claimed += 'path = "src/main.rs"\n'
    assert skeleton.bin_names(skeleton.plan(project(tmp_path / "b", claimed))) == {"q"}
    both = '[package]\nname = "p"\nversion = "1.0.0"\n[[bin]]\nname = "q"\npath = "src/q.rs"\n'
    assert skeleton.bin_names(skeleton.plan(project(tmp_path / "c", both))) == {"q", "p"}
    off = '[package]\nname = "p"\nversion = "1.0.0"\nautobins = false\n[lib]\n'
    assert skeleton.bin_names(skeleton.plan(project(tmp_path / "d", off))) == set()


class ColdOnly:
    """A runner stand-in for the refusal path: it only records the cold build it is
    asked for (the refusal happens before any key, layer or sandbox)."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings(home=home)
        self.built: list[list[str]] = []

    def within(self, spec: object) -> None:
        return None

    def build(self, spec, build_id=None, **kw: object) -> BuildRecord:
        assert not kw, "a refused layer plan reached the runner"
        self.built.append(spec.argv)
        return clean_record()


def test_a_build_a_layer_cannot_serve_runs_cold_with_a_note(tmp_path: Path) -> None:
    root = project(tmp_path, EXA)
    runner = ColdOnly(tmp_path / "home")
    argv = [*DEFAULT_ARGV, "--target", "x86_64-unknown-linux-musl"]
    spec = build_spec({"source": str(root), "argv": argv})
    record, said = build_with_layer(runner, spec)  # type: ignore[arg-type]
    assert runner.built == [argv] and record.layer is None
    assert said == [
        "layer: not used: cargo flag '--target' is not one a layer can reproduce: "
        + buildflags.ACCEPTED
    ]


def test_binaries_cargo_discovers_in_src_bin_get_stubs_too(tmp_path: Path) -> None:
    hexyl = '[package]\nname = "hexyl"\nversion = "0.8.0"\n[profile.release]\nlto = true\n'
    tree = {
        "src/lib.rs": "pub fn x() {}",
        "src/bin/hexyl.rs": "fn main() {}",
        "src/bin/tool/main.rs": "fn main() {}",
        "src/bin/notes.txt": "not a target",
    }
    files = skeleton.plan(project(tmp_path / "a", hexyl, tree))
    assert skeleton.bin_names(files) == {"hexyl", "tool"}
    assert "src/bin/hexyl.rs" not in files  # stubs only, at farm's own paths
    argv = skeleton.dependency_argv(files, [*DEFAULT_ARGV, "--bin", "hexyl"])
    assert script(argv).startswith("cargo build --release --locked --offline --bin hexyl && ")
    off = hexyl.replace('version = "0.8.0"\n', 'version = "0.8.0"\nautobins = false\n')
    assert skeleton.bin_names(skeleton.plan(project(tmp_path / "b", off, tree))) == set()
